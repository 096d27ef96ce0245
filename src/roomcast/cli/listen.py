"""``roomcast listen ROOM``: print a room's messages as they come, until stopped.

Built on :mod:`roomcast.client`: one ``/ws/`` connection subscribed to ROOM, which
reconnects after a server restart (or a network drop) with backoff and recovers what
it missed with ``since``, so every message is printed once. Messages go to standard
output, one line each (or JSON with ``--json``); what happens to the connection goes to
standard error. Ctrl-C (or SIGTERM) stops it: exit code 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from typing import Any

from ._api import request, server_url
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    Parser,
    describe,
    require_server_extra,
)
from ._reading import add_reader_flags, format_frame, note, print_line, room_name, user_token

#: Close codes after which running the command again, unchanged, fails the same way:
#: a bad request or room name, a refused token, a room not allowed, too many sockets,
#: no /ws/ endpoint, a client the server thinks broken. Exit code 2; other ends, 1.
USAGE_CODES = frozenset({1002, 1007, 1009, 4400, 4401, 4403, 4404, 4429})


def add_parser(commands: argparse._SubParsersAction[Parser]) -> None:
    """Add ``listen`` to the ``roomcast`` command."""
    listen = commands.add_parser(
        "listen",
        help="print a room's messages as they come",
        description=describe(
            "Subscribe to ROOM on the server's /ws/ endpoint and print its messages as "
            "they come, edits and deletes as such, until Ctrl-C. It starts with the latest "
            "messages (or those after --since N). When the connection is lost (a server "
            "restart, a network drop) it reconnects with backoff and prints what it "
            "missed, each message once; if the server can no longer replay the gap it "
            "says so and prints the latest messages.",
            "Who it is: the user of --token (or ROOMCAST_TOKEN); or --user NAME, with "
            "tokens from the server's API (POST /api/tokens, with the API key), renewed "
            "when they expire; or else a guest. Messages go to standard output, the "
            "connection's news to standard error.",
        ),
        epilog="examples:\n"
        "  roomcast listen lobby\n"
        "  roomcast listen board --token $(roomcast token alice --ttl 86400)\n"
        "  roomcast listen board --user alice --server https://chat.example.com --api-key $KEY\n"
        "  roomcast listen lobby --since 120 --json | jq .message",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listen.add_argument("room", metavar="ROOM", help="the room's name (any text without '/')")
    listen.add_argument(
        "--since",
        type=_since,
        metavar="N",
        help="start after seq N (default: the room's latest messages)",
    )
    listen.add_argument(
        "--user",
        metavar="NAME",
        help="listen as this user, with tokens from the server's API (needs the API key); "
        "instead of --token",
    )
    listen.add_argument(
        "--json",
        action="store_true",
        help="print every frame of the room as one JSON object per line (messages, edits, "
        'deletes, presence, typing, joined), and {"type": "lagged", ...} when events '
        "were dropped",
    )
    add_reader_flags(listen)
    listen.set_defaults(run=run, prog=listen.prog)


def _since(value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise argparse.ArgumentTypeError(f"{value[:20]!r} is not a seq (a number, 0 or more)")
    return int(value)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Listen to ``args.room`` until stopped."""
    room = room_name(args.room)
    token = user_token(args)
    if token is not None and args.user is not None:
        raise CommandError("give --token or --user, not both")
    url = server_url(args) + "/ws/"
    require_server_extra(args.prog, ["websockets"])
    if args.user is not None:
        token = _issue(args)
    try:
        return asyncio.run(_listen(args, room, url, token))
    except BrokenPipeError:
        # Standard output was closed (`roomcast listen lobby | head`): stop quietly.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _issue(args: argparse.Namespace) -> str:
    """A token for ``--user`` from the server's API (``POST /api/tokens``)."""
    reply = request(args, "POST", "/api/tokens", {"user": args.user})
    if not isinstance(reply, dict) or not isinstance(reply.get("token"), str):
        raise CommandError(f"unexpected answer {reply!r:.100}", EXIT_FAILED)
    return str(reply["token"])


async def _listen(args: argparse.Namespace, name: str, url: str, token: str | None) -> int:
    from roomcast.client import (
        ClientError,
        ClosedError,
        ConnectError,
        Joined,
        Lagged,
        Status,
        UnsubscribedError,
        connect,
        describe_close,
    )

    prog = args.prog

    def on_status(status: Status) -> None:
        if status.state == "reconnecting":
            what = describe_close(status.code or 1006, status.reason)
            note(prog, f"connection lost ({what}); reconnecting in {status.delay or 0:.1f} s")

    async def get_token() -> str:
        return await asyncio.to_thread(_issue, args)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on this platform
            loop.add_signal_handler(signum, stop.set)

    try:
        conn = await connect(
            url,
            token=token,
            get_token=get_token if args.user is not None else None,
            on_status=on_status,
        )
    except ConnectError as exc:
        code = EXIT_USAGE if exc.status is not None and 400 <= exc.status < 500 else EXIT_FAILED
        hint = (
            "" if code == EXIT_USAGE else ": start one with `roomcast serve`, or pass --server URL"
        )
        raise CommandError(f"{exc}{hint}", code) from None
    except ClosedError as exc:
        raise _ended(exc, url) from None

    async def show() -> None:
        room = await conn.subscribe(name, since=args.since)
        note(prog, f"listening to {name!r} on {url} as {conn.user} (Ctrl-C stops)")
        first = True
        async for event in room:
            if args.json:
                frame: dict[str, Any] = dict(event.raw)
                if isinstance(event, Lagged):
                    frame = {"type": "lagged", "room": name, "dropped": event.dropped}
                print_line(json.dumps(frame, ensure_ascii=False))
            elif isinstance(event, Lagged):
                note(prog, f"{event.dropped} events were dropped: the output is too slow")
            elif (line := format_frame(dict(event.raw))) is not None:
                print_line(line)
            if isinstance(event, Joined):
                if not first:
                    note(prog, _rejoined(name, event.recovered))
                elif event.recovered is False:
                    note(
                        prog,
                        f"the messages after seq {args.since} cannot be replayed (too far "
                        "back, or past the room's last seq): the latest follow",
                    )
                first = False

    shown = asyncio.create_task(show())
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({shown, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if stopped.done():
            return EXIT_OK
        try:
            shown.result()
        except UnsubscribedError as exc:
            code = EXIT_USAGE if exc.code in USAGE_CODES else EXIT_FAILED
            raise CommandError(
                f"{exc.room!r}: {describe_close(exc.code, exc.reason)}", code
            ) from None
        except ClosedError as exc:
            raise _ended(exc, url) from None
        except (ClientError, ValueError) as exc:
            raise CommandError(str(exc), EXIT_FAILED) from None
        return EXIT_OK
    finally:
        for task in (shown, stopped):
            task.cancel()
        await asyncio.gather(shown, stopped, return_exceptions=True)
        await conn.close()


def _ended(exc: Any, url: str) -> CommandError:
    """The line for a connection the server ended (a ClosedError)."""
    code = EXIT_USAGE if exc.code in USAGE_CODES else EXIT_FAILED
    return CommandError(f"{url}: {exc}", code)


def _rejoined(room: str, recovered: bool | None) -> str:
    if recovered is False:
        return (
            f"back in {room!r}; the messages missed meanwhile could not all be replayed: "
            "the latest follow"
        )
    return f"back in {room!r}" + ("; the messages missed meanwhile follow" if recovered else "")
