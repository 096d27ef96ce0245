"""A bounded queue of events with one reader: drop the oldest, then tell the reader.

Layer: client. Standard library only.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from ._events import Lagged

__all__ = ["EventQueue"]

T = TypeVar("T")


class EventQueue(Generic[T]):
    """Events waiting for the program, at most ``limit``.

    Policy when full (the program does not read): the **oldest** event is dropped, and
    the next read returns ``Lagged(dropped=N)`` before the events kept, so a reader
    always knows it missed something. The connection is never slowed down by a reader
    that does not read (one room's iterator left alone must not stall the others).

    :meth:`end` marks the end: reads return what is queued, then raise ``error`` (or
    ``StopAsyncIteration`` when it is None).
    """

    def __init__(self, limit: int, room: str | None) -> None:
        self._limit = limit
        self._room = room
        self._items: deque[T] = deque()
        self._dropped = 0
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self._error: BaseException | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        """Queue ``item`` (after the end: ignored)."""
        if self._ended:
            return
        if len(self._items) >= self._limit:
            self._items.popleft()
            self._dropped += 1
        self._items.append(item)
        self._wake()

    def end(self, error: BaseException | None = None) -> None:
        """No more items: readers get the ones queued, then ``error`` or the end."""
        if not self._ended:
            self._ended = True
            self._error = error
            self._wake()

    @property
    def ended(self) -> bool:
        """Whether :meth:`end` was called."""
        return self._ended

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self, lagged: Callable[[str | None, int], T]) -> T:
        """The next item (``lagged(room, n)`` first if ``n`` were dropped).

        Raises:
            StopAsyncIteration: ended without an error, nothing left.
            BaseException: the error given to :meth:`end`, nothing left.
            RuntimeError: another task is already reading.
        """
        while True:
            if self._dropped:
                dropped, self._dropped = self._dropped, 0
                return lagged(self._room, dropped)
            if self._items:
                return self._items.popleft()
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            if self._waiter is not None:
                raise RuntimeError("another task is already reading these events")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


def make_lagged(room: str | None, dropped: int) -> Lagged:
    """The :class:`Lagged` event for ``dropped`` events of ``room``."""
    return Lagged(room=room, dropped=dropped)
