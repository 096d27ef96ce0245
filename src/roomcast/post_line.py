"""A socket's posts in flight: stored a unit at a time, published and answered in order.

Layer: consumer (transport); the consumers use it, it calls ``stream.writer`` and
``services``. A socket read its next frame only after its last post was stored,
published and acked: one post in flight, so a client posting as fast as it can (a bot,
a bridge, the benchmarks' publisher; rate limits off) had each message stored,
published and written to every member on its own. Now the socket reads on while its
posts are stored, up to :data:`MAX_POSTS_IN_FLIGHT`:

* The posts read while a unit is being stored form the next unit, handed to the writer
  as one (``StreamWriter.submit``): it goes into one batch, so a socket's posts keep
  their order in the room's stream with any number of writer threads, and a unit of
  ten costs one transaction, not ten.
* Each post is published and answered (ack, or the error carrying its ``client_id``) in
  the order it came. A unit's messages are published one after another in one pass of
  the loop, so each member gets them in one write call (``connection._Flusher``).
* Every other answer waits until the posts before it are answered
  (:meth:`PostLine.idle`): another frame's reply (history, edit, unsubscribe...), a
  refused post (``rate_limited``, not allowed), an invalid frame's error, and the
  closes those bring (4429, 1009). What a client sees after a post is what it saw when
  posts went one at a time.

Bound and overflow policy: at most :data:`MAX_POSTS_IN_FLIGHT` posts per socket between
being read and being answered; at the bound the socket reads no more frames until one
is answered (they wait in TCP, as before). A socket that goes away with posts in flight
still has them stored and published (they were accepted); only the answers are dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from . import services
from .connection import Member
from .protocol.messages import SendMessageFrame
from .stream import StoredMessage, writer

logger = logging.getLogger(__name__)

#: Posts of one socket read and not yet answered, at most.
MAX_POSTS_IN_FLIGHT = 16

#: (member, frame, the stored message or the error) -> None: send the post's answer.
Answer = Callable[[Member, SendMessageFrame, "StoredMessage | BaseException"], None]

# Line tasks, referenced until done (asyncio keeps only weak references to tasks): a
# socket that closed still has its posts published.
_running: set[asyncio.Task[None]] = set()


class PostLine:
    """One socket's posts between being read and being answered (see the module)."""

    __slots__ = ("_answer", "_count", "_flight", "_hold", "_idle", "_pending", "_space", "_task")

    def __init__(self, answer: Answer, hold: Callable[[bool], None] | None = None) -> None:
        self._answer = answer
        # Told True while posts are in flight, False when none are: ``roomcast serve``'s
        # drain closes a socket only after its posts are answered (server.lean_ws).
        self._hold = hold
        self._pending: list[tuple[Member, SendMessageFrame, Any]] = []  # read, not submitted
        self._flight: list[tuple[Member, SendMessageFrame, asyncio.Future[StoredMessage]]] = []
        self._count = 0  # pending + in flight
        self._task: asyncio.Task[None] | None = None
        self._space: asyncio.Future[None] | None = None  # the reader waits for room
        self._idle: asyncio.Future[None] | None = None  # a non-post frame waits for idle

    def __len__(self) -> int:
        return self._count

    async def add(self, member: Member, frame: SendMessageFrame, post: Any) -> None:
        """Take a post (``stream.new_post``); returns when the socket may read its next
        frame (at once, unless :data:`MAX_POSTS_IN_FLIGHT` are in flight)."""
        self._pending.append((member, frame, post))
        self._count += 1
        if self._task is None:
            if self._hold is not None:
                self._hold(True)
            self._submit()  # the writer has it now, not a pass of the loop later
            self._task = task = asyncio.get_running_loop().create_task(self._run())
            _running.add(task)
            task.add_done_callback(_running.discard)
        if self._count >= MAX_POSTS_IN_FLIGHT:
            self._space = asyncio.get_running_loop().create_future()
            await self._space

    async def idle(self) -> None:
        """Return once every post taken so far is answered."""
        if self._task is None:
            return
        if self._idle is None:
            self._idle = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._idle)

    def _submit(self) -> None:
        """Hand the pending posts to the writer as one unit (in flight from now)."""
        unit, self._pending = self._pending, []
        try:
            futures = writer.submit([post for _, _, post in unit])
        except Exception as exc:  # busy (STORE_QUEUE_LIMIT): every post of the unit
            failed = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            failed.exception()  # retrieved here: each post's answer says it
            futures = [failed] * len(unit)
        pairs = zip(unit, futures, strict=True)
        self._flight = [(member, frame, future) for (member, frame, _), future in pairs]

    async def _run(self) -> None:
        try:
            while self._flight:
                for member, frame, future in self._flight:
                    result: StoredMessage | BaseException
                    try:
                        result = await future
                        await services.apublish(result)
                    except Exception as exc:
                        result = exc
                    self._done(member, frame, result)
                self._flight = []
                if self._pending:
                    self._submit()
        finally:
            # Here, not in a done callback a pass later: a post taken in between would
            # find a task that no longer looks at its posts.
            self._task = None
            if self._hold is not None:
                self._hold(False)
            for waiter in (self._idle, self._space):
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            self._idle = self._space = None

    def _done(self, member: Member, frame: SendMessageFrame, result: Any) -> None:
        self._count -= 1
        try:
            self._answer(member, frame, result)
        except Exception:  # a bug in an answer must not stop the posts after it
            logger.exception("Answering a post failed")
        space = self._space
        if space is not None and self._count < MAX_POSTS_IN_FLIGHT:
            self._space = None
            if not space.done():
                space.set_result(None)
