"""Frames sent without a ``client_id`` (history, presence, unsubscribe, typing, read),
matched with their answers.

The server handles a socket's frames in order and answers them in order, but its
``error`` frames name only the room: an error is the answer of the oldest request still
waiting. Frames answered only when refused (typing, read: ``silent``) are followed by a
``ping`` before the next request that expects an answer, so that its ``pong`` tells that
they went through.

Layer: client. Standard library only.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Request", "RequestKind", "Requests"]

RequestKind = Literal["history", "presence", "unsubscribe", "silent", "ping"]


@dataclass(eq=False, slots=True)
class Request:
    """A frame sent without a client_id, waiting for its answer (or its error)."""

    kind: RequestKind
    room: str
    future: asyncio.Future[Any] | None


class Requests:
    """The requests of the open socket, oldest first."""

    def __init__(self, write: Callable[[dict[str, Any]], None]) -> None:
        self._write = write
        self._waiting: deque[Request] = deque()
        #: Whether a socket is open (requests are sent only then; after a reconnect the
        #: rooms ask again what was not answered).
        self.open = False

    def socket_lost(self) -> None:
        """The socket closed: its answers will not come."""
        self.open = False
        self._waiting.clear()

    def send(
        self,
        kind: RequestKind,
        room: str,
        frame: dict[str, Any],
        future: asyncio.Future[Any] | None = None,
    ) -> None:
        """Send ``frame`` (about ``room``) and wait for its answer, if a socket is open."""
        if not self.open:
            return
        waiting = self._waiting
        if kind != "silent" and waiting and waiting[-1].kind == "silent":
            waiting.append(Request("ping", "", None))
            self._write({"type": "ping"})
        waiting.append(Request(kind, room, future))
        self._write(frame)

    def pong(self) -> None:
        """A ``pong``: the frames before its ping went through."""
        while self._waiting and self._waiting.popleft().kind != "ping":
            pass

    def answer(self, kinds: tuple[RequestKind, ...], room: str) -> Request | None:
        """The oldest waiting request, removed, if it is one of ``kinds`` for ``room``."""
        waiting = self._waiting
        if waiting and waiting[0].kind in kinds and waiting[0].room == room:
            return waiting.popleft()
        return None
