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

#: Silent frames sent in a row before a ping is added anyway: without a request that
#: expects an answer (a program that only types and reads), their entries would pile up.
SILENT_RUN_MAX = 16


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
            self._ping()
        waiting.append(Request(kind, room, future))
        self._write(frame)
        if kind == "silent" and len(waiting) >= SILENT_RUN_MAX:
            run = 0
            for request in reversed(waiting):
                if request.kind != "silent":
                    break
                run += 1
            if run >= SILENT_RUN_MAX:
                self._ping()

    def _ping(self) -> None:
        self._waiting.append(Request("ping", "", None))
        self._write({"type": "ping"})

    def pong(self) -> None:
        """A ``pong``: the frames before its ping went through."""
        while self._waiting and self._waiting.popleft().kind != "ping":
            pass

    def refused(self, room: str) -> Request | None:
        """The request a bare ``error`` frame about ``room`` answers: the oldest waiting
        one, removed, if it is about ``room`` (else None: not an answer)."""
        waiting = self._waiting
        if waiting and waiting[0].kind != "ping" and waiting[0].room == room:
            return waiting.popleft()
        return None

    def answered(self, kind: RequestKind, room: str) -> Request | None:
        """The oldest request of ``kind`` about ``room``, removed, with the silent frames
        and pings before it (a later frame was answered, so they went through); None if
        there is none (the frame was not an answer: the presence after a subscribe)."""
        waiting = self._waiting
        before = 0
        while before < len(waiting):
            request = waiting[before]
            if request.kind == kind and request.room == room:
                for _ in range(before):
                    waiting.popleft()
                return waiting.popleft()
            if request.kind not in ("silent", "ping"):
                return None  # answers come in order: this frame answers nothing
            before += 1
        return None
