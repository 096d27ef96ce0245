"""``roomcast rooms``: a user's rooms with their unread counts (the sidebar of a chat).

``GET /api/users/<name>/rooms``: the rooms the user is a member of or has read, that
the user may join now. It is always one user's list: with a user's token (``--token``)
that user's (the name is learnt from the server's ``/ws/`` endpoint unless ``--user``
gives it); with the API key, the user ``--user`` names, since a key is no user and the
server keeps no list of every room over HTTP (``roomcast room show NAME`` shows one room).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from ._api import server_url
from ._common import EXIT_FAILED, EXIT_USAGE, CommandError, Parser, describe, require_server_extra
from ._reading import add_reader_flags, get, note, print_line, quote, safe, user_token

#: Longest wait for the server's ``connected`` frame when the name behind a token is
#: asked of ``/ws/``, in seconds.
WHOAMI_TIMEOUT_SECS = 15.0


def add_parser(commands: argparse._SubParsersAction[Parser]) -> None:
    """Add ``rooms`` to the ``roomcast`` command."""
    rooms = commands.add_parser(
        "rooms",
        help="list a user's rooms with unread counts",
        description=describe(
            "List a user's rooms (those they are a member of, or have read) with each "
            "room's visibility, last seq, the user's read position and unread count. "
            "With --token (or ROOMCAST_TOKEN): that user's rooms. With the API key: the "
            "rooms of the user --user names.",
        ),
        epilog="examples:\n"
        "  roomcast rooms --token $(roomcast token alice)\n"
        "  roomcast rooms --user alice --server https://chat.example.com --api-key $KEY\n"
        "  roomcast rooms --user alice --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rooms.add_argument(
        "--user",
        metavar="NAME",
        help="whose rooms: needed with the API key; with a token, that token's user",
    )
    rooms.add_argument(
        "--json",
        action="store_true",
        help="print the server's answer as JSON: {user, rooms: [...], truncated}",
    )
    add_reader_flags(rooms)
    rooms.set_defaults(run=run, prog=rooms.prog)


def _whoami(args: argparse.Namespace, token: str) -> str:
    """The username behind ``token``, from the ``connected`` frame of ``/ws/``."""
    require_server_extra(f"{args.prog} with a token and no --user", ["websockets"])
    from roomcast.client import ClientError, connect

    url = server_url(args) + "/ws/"

    async def ask() -> str:
        async with asyncio.timeout(WHOAMI_TIMEOUT_SECS), connect(url, token=token) as conn:
            return str(conn.user)

    try:
        return asyncio.run(ask())
    except TimeoutError:
        raise CommandError(
            f"{url} sent no connected frame within {WHOAMI_TIMEOUT_SECS:g} s; pass --user NAME",
            EXIT_FAILED,
        ) from None
    except ClientError as exc:
        code = getattr(exc, "code", None)
        status = getattr(exc, "status", None)
        refused = code in (4400, 4401, 4403) or (status is not None and 400 <= status < 500)
        raise CommandError(
            f"cannot learn the token's user: {exc}", EXIT_USAGE if refused else EXIT_FAILED
        ) from None


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Print the rooms of ``--user`` or of the token's user."""
    token = user_token(args)
    name: str | None = args.user
    if name is None and token is None:
        raise CommandError(
            "whose rooms? Pass a user's --token (or set ROOMCAST_TOKEN), or --user NAME "
            "with the API key"
        )
    if name is None and token is not None:
        name = _whoami(args, token)
    reply = get(args, f"/api/users/{quote(str(name))}/rooms", token)
    listed = reply.get("rooms") if isinstance(reply, dict) else None
    if not isinstance(listed, list) or not all(isinstance(r, dict) for r in listed):
        raise CommandError(f"unexpected answer {reply!r:.100}", EXIT_FAILED)
    if args.json:
        print_line(json.dumps(reply, ensure_ascii=False))
        return 0
    if not listed:
        note(args.prog, f"{name!r} has no rooms yet (rooms they are a member of or have read)")
        return 0
    _table(listed)
    if reply.get("truncated"):
        note(args.prog, f"only the first {len(listed)} rooms are listed")
    return 0


def _table(listed: list[dict[str, Any]]) -> None:
    rows = [("ROOM", "VISIBILITY", "LAST", "READ", "UNREAD")]
    for room in listed:
        unread = room.get("unread")
        rows.append(
            (
                safe(str(room.get("name", "?"))),
                str(room.get("visibility", "?")),
                str(room.get("last_seq", "?")),
                str(room.get("read_seq") if room.get("read_seq") is not None else "-"),
                "999+" if isinstance(unread, int) and unread >= 1000 else str(unread),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        print_line("  ".join(cells).rstrip())
