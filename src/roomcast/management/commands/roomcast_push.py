"""``manage.py roomcast_push ROOM TEXT``: post a system message from the shell."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from roomcast.exceptions import PushError
from roomcast.protocol import ProtocolError
from roomcast.push import send_to_room


class Command(BaseCommand):
    help = "Store a system message in ROOM's stream and publish it to the room's members."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("room")
        parser.add_argument("text")

    def handle(self, *args: Any, room: str, text: str, **options: Any) -> None:
        try:
            stored = send_to_room(room, text)
        except (ProtocolError, ValueError, PushError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"pushed to {stored.room!r} as seq {stored.seq}")
