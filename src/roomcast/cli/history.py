"""``roomcast history ROOM``: print a room's latest messages, through the HTTP API.

``GET /api/rooms/<room>/messages`` as a user (``--token``: the rooms that user may
read) or with the API key (any room), page after page backwards until ``--limit``
messages or the room's beginning, printed oldest first.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._common import EXIT_FAILED, CommandError, Parser, describe
from ._reading import (
    add_reader_flags,
    format_frame,
    get,
    note,
    print_line,
    quote,
    room_name,
    user_token,
)

#: Messages the server gives per request (its clamp); larger --limit values page.
PAGE_MAX = 100
#: Most messages one command prints: 100 requests of a page each.
LIMIT_MAX = 10_000
#: Most digits a seq or a count takes on the command line (the server's bound on the
#: query, 18 ASCII digits).
_DIGITS_MAX = 18


def add_parser(commands: argparse._SubParsersAction[Parser]) -> None:
    """Add ``history`` to the ``roomcast`` command."""
    history = commands.add_parser(
        "history",
        help="print a room's latest messages",
        description=describe(
            "Print the latest messages of ROOM, oldest first, each in its final state "
            "(an edited message with its last text, a deleted one as '(deleted)'), with "
            "the edit and delete events among them. As the user of --token (or "
            "ROOMCAST_TOKEN): the rooms that user may read; a private room they may not "
            "read answers 404, like a room that does not exist. Without a token, with "
            "the server's API key: any room.",
        ),
        epilog="examples:\n"
        "  roomcast history lobby\n"
        "  roomcast history lobby --limit 500 --json > lobby.jsonl\n"
        "  roomcast history board --token $(roomcast token alice) --before 120",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    history.add_argument("room", metavar="ROOM", help="the room's name (any text without '/')")
    history.add_argument(
        "--limit",
        type=_count,
        default=50,
        metavar="N",
        help=f"how many messages, 1 to {LIMIT_MAX} (default 50; over {PAGE_MAX}, several requests)",
    )
    history.add_argument(
        "--before",
        type=_seq,
        metavar="SEQ",
        help="only messages older than this seq (default: up to the latest)",
    )
    history.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line, each message frame as the server sends it",
    )
    add_reader_flags(history)
    history.set_defaults(run=run, prog=history.prog)


def _count(value: str) -> int:
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= LIMIT_MAX:
        raise argparse.ArgumentTypeError(f"{value[:20]!r} is not a number from 1 to {LIMIT_MAX}")
    return int(value)


def _seq(value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > _DIGITS_MAX or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value[:20]!r} is not a seq (a positive number)")
    return int(value)


def fetch(
    args: argparse.Namespace, room: str, token: str | None, limit: int, before: int | None
) -> list[dict[str, Any]]:
    """Up to ``limit`` frames of ``room`` before ``before``, oldest first."""
    frames: list[dict[str, Any]] = []
    while len(frames) < limit:
        query = {"limit": str(min(PAGE_MAX, limit - len(frames)))}
        if before is not None:
            query["before"] = str(before)
        path = f"/api/rooms/{quote(room)}/messages?" + "&".join(
            f"{k}={v}" for k, v in query.items()
        )
        reply = get(args, path, token)
        page = reply.get("messages") if isinstance(reply, dict) else None
        if not isinstance(page, list) or not all(isinstance(f, dict) for f in page):
            raise CommandError(f"unexpected answer {reply!r:.100}", EXIT_FAILED)
        frames[:0] = page
        seqs = [f["seq"] for f in page if type(f.get("seq")) is int]
        if not reply.get("has_more") or not seqs:
            break
        before = min(seqs)
    return frames[-limit:]


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Print the history of ``args.room``."""
    room = room_name(args.room)
    token = user_token(args)
    frames = fetch(args, room, token, args.limit, args.before)
    for frame in frames:
        if args.json:
            print_line(json.dumps(frame, ensure_ascii=False))
        elif (line := format_frame(frame)) is not None:
            print_line(line)
    if not frames:
        note(
            args.prog,
            f"no messages in {room!r}" + (f" before {args.before}" if args.before else ""),
        )
    return 0
