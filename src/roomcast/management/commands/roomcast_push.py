"""``manage.py roomcast_push ROOM TEXT``: post a system message from the shell.

The project's own settings decide the database and the channel layer, so the message
reaches the members of every process that shares the layer (all of them with Redis;
only this process's, which has none, with the in-memory layer: use the HTTP push API,
``roomcast push --server URL``, then). docs/cli.md documents it beside ``roomcast push``.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from roomcast.exceptions import PushError
from roomcast.protocol import ProtocolError
from roomcast.push import send_to_room

#: Most bytes of a message read from standard input (far above any MAX_FRAME_BYTES).
STDIN_MAX_BYTES = 1024 * 1024


class Command(BaseCommand):
    help = (
        "Store a system message in ROOM's stream (it gets the room's next sequence number, "
        "and replays on reconnect) and publish it to the room's members in every process "
        "on the project's channel layer. With the in-memory layer only this process would "
        "see it: push through the HTTP API instead (roomcast push --server URL)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("room", metavar="ROOM", help="the room's name (any text without '/')")
        parser.add_argument(
            "text",
            metavar="TEXT",
            help="the message; - reads it from standard input (trailing newlines dropped)",
        )
        parser.epilog = (
            'Example: python manage.py roomcast_push lobby "Deploy finished". Exit status 1 '
            "with one line on stderr when the room name or text is refused, the database "
            "fails, or the channel layer does not take the message in time (it is stored "
            "then, and members fill the gap from the database)."
        )

    def handle(self, *args: Any, room: str, text: str, **options: Any) -> None:
        if text == "-":
            text = self._read_stdin()
        try:
            stored = send_to_room(room, text)
        except (ProtocolError, ValueError) as exc:
            raise CommandError(getattr(exc, "detail", str(exc))) from exc
        except PushError as exc:
            raise CommandError(f"{exc} (the message is stored)") from exc
        except DatabaseError as exc:
            first_line = " ".join(str(exc).strip().split("\n")[0].split())
            raise CommandError(f"the database refused the message: {first_line}") from exc
        self.stdout.write(f"pushed to {stored.room!r} as seq {stored.seq}")

    def _read_stdin(self) -> str:
        data = sys.stdin.buffer.read(STDIN_MAX_BYTES + 1)
        if len(data) > STDIN_MAX_BYTES:
            raise CommandError(f"standard input holds more than {STDIN_MAX_BYTES // 1024} KiB")
        try:
            return data.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise CommandError(f"standard input is not UTF-8 text (byte {exc.start})") from exc
