"""Graceful drain of ``roomcast serve``'s WebSockets on SIGTERM, in batches.

uvicorn's shutdown closes its listening sockets (new connections are refused), then calls
each connection's ``shutdown()``; for a WebSocket that sends close 1012 at once. Every
client of the process then reconnects within the same few milliseconds, to the processes
that remain behind the load balancer: a stampede of handshakes, session reads and
catch-ups there. And a post that the socket's consumer was still storing loses its ack
(the client sends it again, and ``client_id`` keeps it from being stored twice, but it
waits for the reconnect to learn so).

Here instead (:class:`Drain`): the sockets are spread over ``DRAIN_SECS`` in evenly spaced
batches (:func:`schedule`: one every :data:`BATCH_INTERVAL_SECS` at most, of
:data:`MIN_BATCH_SOCKETS` at least). When its batch
comes, a socket stops reading frames, lets its consumer finish the frames it already has
(a post is stored and its ack written), then closes with 1012 SERVICE_RESTART, which
every roomcast client answers by reconnecting with ``since=`` and so loses nothing
(docs/protocol.md). The protocol side is ``server.lean_ws``; this module holds the plan.

Bounds, so that a stop never hangs: a socket whose consumer is still busy (a post held up
by a locked room, a client that does not read its ack) :data:`SETTLE_SECS` after its batch
time is closed anyway (the post is still stored, and the client's resend is answered with
its seq); a close the client does not answer is reset after ``CLOSE_TIMEOUT_SECS``
(``lean_ws``); uvicorn cancels what is left after :func:`graceful_shutdown_secs`; the
application's own shutdown (``roomcast.lifespan``) has ``lifespan.SHUTDOWN_SECS``.

Per process: each uvicorn worker drains its own sockets (one event loop, one
:class:`Drain`).

Layer: server (the standalone site); imports the standard library, ``roomcast.conf`` and
``roomcast.protocol``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from roomcast.conf import roomcast_settings
from roomcast.protocol import CloseCode

logger = logging.getLogger(__name__)

__all__ = [
    "BATCH_INTERVAL_SECS",
    "MIN_BATCH_SOCKETS",
    "SETTLE_SECS",
    "Drain",
    "Drainable",
    "current",
    "graceful_shutdown_secs",
    "schedule",
    "started",
]

#: Shortest time between two batches, in seconds: ten a second is smooth enough for any
#: receiving process (a batch is then DRAIN_SECS x 10-th of the sockets, at most), and
#: one timer per batch stays cheap for a drain of minutes.
BATCH_INTERVAL_SECS = 0.1
#: Fewest sockets in a batch: a process takes ten reconnects at once without noticing,
#: and spreading a handful of sockets over DRAIN_SECS would only delay the stop (a
#: developer's Ctrl-C with two tabs open). So DRAIN_SECS is the longest the closes take.
MIN_BATCH_SOCKETS = 10
#: Longest a socket's close waits, after its batch time, for its consumer to finish what
#: it was given (a post being stored and its ack), in seconds. A post normally takes
#: milliseconds; one held up by a locked room can take STORE_LOCKED_GIVE_UP_SECS, and
#: the drain does not wait for that.
SETTLE_SECS = 5.0
#: Time, after the last close could have been reset, for uvicorn to see the connections
#: gone and the tasks end, in seconds.
TASKS_MARGIN_SECS = 1.0
#: The close code: 1012 SERVICE_RESTART, a reconnect code for every roomcast client.
CLOSE_CODE = int(CloseCode.SERVICE_RESTART)
#: Close reason sent with 1012 (the client's cue is the code; the reason is for people).
REASON = "server restarting: reconnect with since="


class Drainable(Protocol):
    """What a WebSocket protocol offers the drain (``server.lean_ws``)."""

    def drain_close(self, deadline: float) -> None:
        """Stop reading, finish what the application has, then close with 1012; close
        at ``deadline`` (loop time) at the latest."""


def schedule(
    count: int,
    drain_secs: float,
    interval: float = BATCH_INTERVAL_SECS,
    min_batch: int = MIN_BATCH_SOCKETS,
) -> list[tuple[float, int]]:
    """The batches closing ``count`` sockets over ``drain_secs``: ``(offset, size)`` each.

    Offsets are evenly spaced from 0 (the signal), ``drain_secs / batches`` apart, so the
    last batch goes one spacing before ``drain_secs`` ends; batches are at most one per
    ``interval`` and hold ``min_batch`` sockets at least (unless there are fewer in
    all); sizes differ by one at most, the larger ones first. ``drain_secs`` 0 is one
    batch at 0.

    >>> schedule(25, 1.0, interval=0.5)
    [(0.0, 13), (0.5, 12)]
    >>> schedule(25, 1.0, interval=0.25)
    [(0.0, 13), (0.5, 12)]
    """
    if count <= 0:
        return []
    slots = round(drain_secs / interval) if drain_secs > 0 else 1
    batches = max(1, min(slots, count // max(1, min_batch)))
    size, larger = divmod(count, batches)
    spacing = drain_secs / batches
    return [(i * spacing, size + (1 if i < larger else 0)) for i in range(batches)]


def graceful_shutdown_secs(drain_secs: float, close_timeout_secs: float) -> int:
    """uvicorn's ``timeout_graceful_shutdown`` for a drain of ``drain_secs``: the last
    batch, its settling time, an unanswered close's reset, and a margin (whole seconds,
    as uvicorn types it)."""
    return int(drain_secs + SETTLE_SECS + close_timeout_secs + TASKS_MARGIN_SECS + 0.999)


class Drain:
    """The drain of one process: sockets registered as uvicorn shuts each down, then
    closed in :func:`schedule`'s batches.

    uvicorn calls every connection's ``shutdown()`` in one synchronous loop, so the
    first :meth:`add` plans at the loop's next turn, when all are in. A socket added after
    that (a handshake that completed during the drain) is closed at once.
    """

    def __init__(self, drain_secs: float, loop: asyncio.AbstractEventLoop) -> None:
        self.drain_secs = drain_secs
        self.loop = loop
        self.started_at: float | None = None  # loop time of the plan
        self.pending: list[Drainable] = []
        self.total = 0
        self.remaining = 0  # sockets added and not yet gone
        self.forced = 0  # closed at their deadline, their consumer still busy
        self._timers: list[asyncio.TimerHandle] = []

    def add(self, socket: Drainable) -> None:
        """Close ``socket`` in a batch (or now, when the batches are planned already)."""
        self.total += 1
        self.remaining += 1
        if self.started_at is not None:
            socket.drain_close(self.loop.time() + SETTLE_SECS)
            return
        if not self.pending:
            self.loop.call_soon(self._plan)
        self.pending.append(socket)

    def _plan(self) -> None:
        sockets, self.pending = self.pending, []
        self.started_at = start = self.loop.time()
        batches = schedule(len(sockets), self.drain_secs)
        logger.info(
            "Draining %d WebSocket%s over %g s in %d batch%s (close 1012: reconnect)",
            len(sockets),
            "" if len(sockets) == 1 else "s",
            self.drain_secs,
            len(batches),
            "" if len(batches) == 1 else "es",
        )
        first = 0
        for number, (offset, size) in enumerate(batches, 1):
            batch = sockets[first : first + size]
            first += size
            when = start + offset
            if offset == 0:
                self._close(number, len(batches), batch, when)
            else:
                self._timers.append(
                    self.loop.call_at(when, self._close, number, len(batches), batch, when)
                )

    def _close(self, number: int, batches: int, batch: list[Drainable], when: float) -> None:
        logger.debug("Drain batch %d/%d: closing %d sockets", number, batches, len(batch))
        for socket in batch:
            socket.drain_close(when + SETTLE_SECS)

    def closed(self, *, forced: bool) -> None:
        """A drained socket is gone; ``forced``: closed at its deadline, not when idle."""
        self.forced += forced
        self.remaining -= 1
        if self.remaining == 0 and self.started_at is not None:
            elapsed = self.loop.time() - self.started_at
            if self.forced:
                logger.warning(
                    "Drained %d WebSockets in %.1f s; %d closed after SETTLE_SECS (%g s) "
                    "with a frame still being handled (its client sends it again)",
                    self.total,
                    elapsed,
                    self.forced,
                    SETTLE_SECS,
                )
            else:
                logger.info("Drained %d WebSockets in %.1f s", self.total, elapsed)


_current: Drain | None = None


def current(loop: asyncio.AbstractEventLoop) -> Drain:
    """This process's drain, made at the first socket uvicorn shuts down (reads
    ``DRAIN_SECS`` then: the system checks validated it at start-up)."""
    global _current
    if _current is None or _current.loop is not loop:
        _current = Drain(float(roomcast_settings.DRAIN_SECS), loop)
    return _current


def started(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the server on ``loop`` is draining (its new handshakes are refused); a
    server started later in the same process (tests) on another loop is not."""
    return _current is not None and _current.loop is loop and _current.started_at is not None
