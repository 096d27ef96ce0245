"""The sends of a connection that the server answers with ``ack`` (messages, edits,
deletes): queued while the connection is down, sent one at a time, sent again after a
reconnect until answered.

Layer: client. Standard library only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._errors import ClosedError, FrameTooLargeError, QueueFullError, RefusedError

if TYPE_CHECKING:
    from ._room import Room

__all__ = ["MAX_QUEUED_SENDS", "Outbox", "Post", "fail"]

#: Sends (messages, edits, deletes) of one room waiting for the server at once, sent or
#: not: more are refused with QueueFullError, never dropped. The JS client's bound.
MAX_QUEUED_SENDS = 100
#: Times a send answered ``busy`` or ``rate_limited`` is sent again (after the server's
#: retry_after, or BUSY_RETRY_SECS doubling) before RefusedError. The server closes a
#: socket whose posts it refused RATE_LIMIT_CLOSE_AFTER (10) times within about 10 s.
SEND_RETRIES_MAX = 3
BUSY_RETRY_SECS = 0.5
#: Longest pause taken on the server's word (retry_after), in seconds.
RETRY_AFTER_MAX_SECS = 60.0
#: The close code of a frame the server found over its MAX_FRAME_BYTES.
MESSAGE_TOO_BIG = 1009


def fail(future: asyncio.Future[Any], error: BaseException) -> None:
    """Set ``error`` on ``future`` unless it is done, marked as retrieved: a future whose
    waiter was cancelled must not log "exception never retrieved"."""
    if not future.done():
        future.set_exception(error)
        future.exception()


@dataclasses.dataclass(eq=False)
class Post:
    """A frame the server answers with ``ack`` (message, edit, delete), until it does."""

    room: Room
    frame: dict[str, Any]
    future: asyncio.Future[int]
    #: The socket it was last sent on (None: never sent); a post sent on an earlier
    #: socket may be stored, so its room's catch-up is awaited before it goes again.
    sent_on: int | None = None
    #: Times the server answered busy / rate_limited.
    retries: int = 0

    @property
    def client_id(self) -> str:
        return str(self.frame["client_id"])


class Outbox:
    """A connection's posts waiting for their ``ack``.

    One at a time on the wire. The server would read ahead (docs/protocol.md, "a
    socket's posts in flight"), but a client's posts are paced by the post rate limit
    anyway, and waiting keeps ``busy`` / ``rate_limited`` retries in order.
    A room's posts wait for its ``joined`` and, when one of them was sent on an earlier
    socket (so it may be stored), for the catch-up, which settles it if it shows it.
    """

    def __init__(self, write: Callable[[dict[str, Any]], None], max_frame_bytes: int | None):
        self._write = write
        self._max_frame_bytes = max_frame_bytes
        self._queue: deque[Post] = deque()
        self._in_flight: Post | None = None
        self._paused: asyncio.TimerHandle | None = None
        #: The id of the open socket, None while there is none.
        self.socket: int | None = None

    def submit(self, post: Post) -> None:
        """Queue ``post`` and send it when its turn comes.

        Raises:
            FrameTooLargeError, QueueFullError: not queued.
        """
        size = len(json.dumps(post.frame, ensure_ascii=False).encode())
        if self._max_frame_bytes is not None and size > self._max_frame_bytes:
            raise FrameTooLargeError(size, self._max_frame_bytes)
        room = post.room
        waiting = sum(1 for queued in self._queue if queued.room is room)
        if self._in_flight is not None and self._in_flight.room is room:
            waiting += 1
        if waiting >= MAX_QUEUED_SENDS:
            raise QueueFullError(MAX_QUEUED_SENDS)
        self._queue.append(post)
        self.pump()

    def withdraw(self, post: Post) -> None:
        """The program cancelled the send: out of the queue unless it is on the wire."""
        if post in self._queue:
            self._queue.remove(post)

    def pump(self) -> None:
        """Send the next post whose room is ready, if none is waiting for its answer."""
        if self._in_flight is not None or self.socket is None or self._paused is not None:
            return
        resent = {post.room for post in self._queue if post.sent_on is not None}
        for post in self._queue:
            if post.room.joined and (post.room not in resent or post.room.caught_up()):
                break
        else:
            return
        self._queue.remove(post)
        post.sent_on = self.socket
        self._in_flight = post
        self._write(post.frame)

    def settle(self, room: Room, client_id: str, seq: int) -> None:
        """The server stored the post ``client_id`` of ``room`` as ``seq`` (an ack, or
        the message itself, live or in a catch-up)."""
        post = self._take(room, client_id)
        if post is not None and not post.future.done():
            post.future.set_result(seq)
        self.pump()

    def refused(
        self, room: Room, client_id: str, code: str, detail: str, retry_after: float | None
    ) -> None:
        """The server answered the post ``client_id`` with an error ``code``."""
        post = self._take(room, client_id)
        if post is None:
            return
        if code in ("busy", "rate_limited") and post.retries < SEND_RETRIES_MAX:
            delay = retry_after if retry_after is not None else BUSY_RETRY_SECS * 2**post.retries
            post.retries += 1
            self._queue.appendleft(post)
            self._pause(min(delay, RETRY_AFTER_MAX_SECS))
            return
        fail(post.future, RefusedError(code, detail, room=room.name, retry_after=retry_after))
        self.pump()

    def socket_lost(self, code: int, reason: str) -> None:
        """The socket closed with ``code``: the post on the wire goes again on the next
        one, unless the server closed for its size (1009): then it is rejected, so that
        it is not sent to the same end again (the connection itself was fine)."""
        self.socket = None
        post, self._in_flight = self._in_flight, None
        if post is None:
            return
        if code == MESSAGE_TOO_BIG:
            fail(post.future, ClosedError(code, reason))
        else:
            self._queue.appendleft(post)

    def forget(self, room: Room, error: BaseException) -> None:
        """``room`` ended: fail its waiting posts with ``error``."""
        for post in [p for p in self._queue if p.room is room]:
            self._queue.remove(post)
            fail(post.future, error)
        if self._in_flight is not None and self._in_flight.room is room:
            fail(self._in_flight.future, error)  # its answer still frees the line

    def close(self, error: BaseException) -> None:
        """The connection ended: fail every post with ``error``."""
        if self._paused is not None:
            self._paused.cancel()
        for post in [*self._queue, *([self._in_flight] if self._in_flight else [])]:
            fail(post.future, error)
        self._queue.clear()
        self._in_flight = None

    def _take(self, room: Room, client_id: str) -> Post | None:
        post = self._in_flight
        if post is not None and post.room is room and post.client_id == client_id:
            self._in_flight = None
            return post
        for post in self._queue:
            if post.room is room and post.client_id == client_id:
                self._queue.remove(post)
                return post
        return None

    def _pause(self, delay: float) -> None:
        def resume() -> None:
            self._paused = None
            self.pump()

        self._paused = asyncio.get_running_loop().call_later(delay, resume)
