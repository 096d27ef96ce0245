"""What ``roomcast listen``, ``history`` and ``rooms`` share: who reads (a user's token,
or the API key), reading the HTTP API as that one, and printing messages.

Layer: command line; the standard library only (``urllib``), so ``history`` and
``rooms`` need no extra. ``listen`` adds :mod:`roomcast.client` (websockets).

A user's token comes from ``--token`` or ``ROOMCAST_TOKEN``; without one the commands
use the API key as ``roomcast push`` does (``--api-key``, ``ROOMCAST_API_KEY``, the
data dir's ``api_key``), which reads any room.
"""

from __future__ import annotations

import argparse
import os
import sys
import unicodedata
from datetime import datetime
from typing import Any, TextIO

from roomcast.protocol import ProtocolError, codec

from ._api import DEFAULT_SERVER, request
from ._api import quote as quote  # history and rooms take it from here
from ._common import CommandError

#: Room names are checked here for everything but their length: the limit is the
#: server's ROOM_NAME_MAX_CHARS setting, which it answers with its own detail.
_ANY_LENGTH = sys.maxsize


def add_reader_flags(parser: argparse.ArgumentParser, *, key: bool = True) -> None:
    """``--server``, ``--token`` and (with ``key``) ``--api-key``."""
    parser.add_argument(
        "--server",
        metavar="URL",
        help=f"the server's URL (default {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--token",
        metavar="TOKEN",
        help="read as this user: a connection token from `roomcast token NAME` (env "
        "ROOMCAST_TOKEN)",
    )
    if key:
        parser.add_argument(
            "--api-key",
            metavar="KEY",
            help="without a token: the HTTP API key (env ROOMCAST_API_KEY; default: the "
            "api_key file in ROOMCAST_DATA_DIR, ./.roomcast)",
        )


def user_token(args: argparse.Namespace) -> str | None:
    """The user's token from ``--token`` or ``ROOMCAST_TOKEN``, checked to fit in a
    header; None when neither is given."""
    token = args.token if args.token is not None else os.environ.get("ROOMCAST_TOKEN")
    if token is None:
        return None
    source = "--token" if args.token is not None else "ROOMCAST_TOKEN"
    token = token.strip()
    if not token or not token.isprintable() or " " in token:
        raise CommandError(f"{source} is not a token: get one with `roomcast token NAME`")
    return str(token)


def room_name(value: str, what: str = "ROOM") -> str:
    """``value`` in the canonical form of room names, or a CommandError saying why not."""
    try:
        return codec.validate_room_name(value, max_chars=_ANY_LENGTH)
    except ProtocolError as exc:
        raise CommandError(f"{what} {value[:40]!r}: {exc.detail}") from None


def get(args: argparse.Namespace, path: str, token: str | None) -> Any:
    """GET ``path`` of ``--server`` as the user of ``token``, or with the API key when
    it is None; the JSON answer, or a CommandError."""
    return request(args, "GET", path, bearer=token)


# -- printing -----------------------------------------------------------------------------

#: Characters shown escaped in human-readable output: control characters (an escape
#: sequence in a message must not drive the terminal) and bidirectional controls (a
#: right-to-left override would make the text show in another order).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def safe(text: str) -> str:
    """``text`` for a terminal: control and bidirectional characters escaped (``\\x1b``),
    each line after the first indented under the message."""
    out = []
    for char in text:
        if char == "\n":
            out.append("\n    ")
        elif char in _BIDI or (char != "\t" and unicodedata.category(char) == "Cc"):
            out.append(char.encode("unicode_escape").decode("ascii"))
        else:
            out.append(char)
    return "".join(out)


def _when(ts: object) -> str:
    """A frame's ``ts`` in local time, ``2026-11-29 09:30:00``; ``?`` if it has none."""
    if not isinstance(ts, str):
        return "?"
    try:
        return datetime.fromisoformat(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return "?"


def _who(frame: dict[str, Any]) -> str:
    user = frame.get("user")
    if isinstance(user, str) and user:
        return safe(user)
    return "system" if frame.get("kind") == "system" else "anonymous"


def format_frame(frame: dict[str, Any]) -> str | None:
    """One line (or more, for a text of several lines) for a message, edit or delete
    frame, as ``listen`` and ``history`` print them; None for other frames::

        [12] 2026-11-29 09:30:00 alice: hello (edited)
        [13] 2026-11-29 09:30:05 system: Deploy finished
        [14] 2026-11-29 09:31:00 alice edited [12]: hello
        [15] 2026-11-29 09:31:05 mod deleted [12]
    """
    kind = frame.get("type", "message")
    seq = frame.get("seq")
    head = f"[{seq}] " if type(seq) is int else ""
    head += f"{_when(frame.get('ts'))} {_who(frame)}"
    text = frame.get("message")
    text = safe(text) if isinstance(text, str) else ""
    if kind == "message":
        if frame.get("deleted") is True:
            return f"{head}: (deleted)"
        return f"{head}: {text}" + (" (edited)" if frame.get("edited") else "")
    target = frame.get("target")
    if kind == "edit":
        if frame.get("deleted") is True:
            return f"{head} edited [{target}] (text deleted since)"
        return f"{head} edited [{target}]: {text}"
    if kind == "delete":
        return f"{head} deleted [{target}]"
    return None


def print_line(line: str, out: TextIO | None = None) -> None:
    """Print ``line`` and flush (the reader may be a pipe, waiting for each line)."""
    stream = out or sys.stdout
    stream.write(line + "\n")
    stream.flush()


def note(prog: str, text: str) -> None:
    """A status line on standard error (``roomcast listen: ...``)."""
    print_line(f"{prog}: {text}", sys.stderr)
