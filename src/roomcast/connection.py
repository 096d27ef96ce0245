"""Delivery to one socket: a :class:`Connection` and its subscriptions (:class:`Member`).

Layer: fan-out (delivery). Imports asyncio and ``protocol``; never models, services or
the channel layer. The hub (``roomcast.hub``) hands frames to members; the consumer
hands the socket's ``send`` to a connection.

A **connection** is one WebSocket: its ASGI ``send``, its one outbound buffer and the
slow-client policy, and who it is (``identity``). A **member** is one subscription of a
connection to one room (or to a user's own stream): the room's stream position
(``last_seq``), the frames it holds while joining, and what it may do there
(``rights``). ``/ws/chat/<room>/`` is a connection with one fixed member; ``/ws/`` is a
connection whose members come and go (``mux``): a member that ends there (unsubscribed,
rights taken away, the room disconnected) tells the client with an ``unsubscribed``
frame and the socket stays open for its other rooms, while on a one-room socket it
closes the socket, as it always has.

Why the split: a socket subscribed to ten rooms needs one buffer, one writer and one set
of server objects, not ten. A member is a small object with slots (about 120 bytes);
everything per socket is paid once (measured in benchmark (g), benchmarks/README.md).

Bounded queues and their overflow policy (per connection, whatever its rooms):

* The outbound buffer holds at most ``max_frames`` frames and ``max_bytes`` bytes,
  whichever is reached first (a join's catch-up is allowed on top of the bytes while it
  drains). A socket that lets it fill (a client too slow for its rooms) is closed with
  1013 TRY_AGAIN_LATER and its queued frames dropped: it reconnects with ``since=`` and
  recovers them from the database. Nothing is dropped silently. Under ``roomcast serve``
  a close that cannot get through (the client reads nothing) ends in a TCP reset after
  ``CLOSE_TIMEOUT_SECS`` (``server.lean_ws``), so the socket's kernel buffers go too.
* The frames a member holds while joining count against ``max_frames`` too.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from typing import Any

from . import direct, metrics
from .protocol import CloseCode
from .protocol.codec import close_reason, encode, is_v1_only, unsubscribed_event

logger = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]

#: Close reason of the slow-client policy (1013).
SLOW_REASON = "slow consumer: reconnect with since="


@dataclass(frozen=True, kw_only=True, slots=True)
class CatchUp:
    """What a joining member is sent before the live stream (built by services)."""

    preface: list[str]  # frames sent first (the ``joined`` event)
    frames: list[tuple[int, str]]  # (seq, frame) of stored messages, ascending
    last_seq: int  # the member's stream position once these are sent


class Connection:
    """One socket: its outbound buffer, its writer, its identity and its subscriptions.

    Frames are written at once, without a task, while the server's ``send`` completes
    without waiting (uvicorn's does while the socket is writable); only a send that has
    to wait (the client is not reading) hands the rest to a writer task. An idle socket
    costs no task, and fan-out to a room creates none per member and message: a task per
    delivery cost a third of the server's time and fed the cyclic GC (measured,
    benchmarks/results/2026-11-25.md).
    """

    __slots__ = (
        "__weakref__",
        "_buffer",
        "_bytes",
        "_direct",
        "_flusher",
        "_loop",
        "_send",
        "_slack",
        "_slack_frames",
        "_writer",
        "closed",
        "identity",
        "max_bytes",
        "max_frames",
        "mux",
        "on_end",
        "subs",
        "user_id",
        "v1",
    )

    def __init__(
        self,
        send: Send,
        *,
        max_frames: int,
        v1: bool,
        max_bytes: int = 0,
        identity: Any = None,
        user_id: int | None = None,
        mux: bool = False,
    ) -> None:
        self._send = send
        # uvicorn's websockets-sansio protocol when frames can be written to it directly
        # (serialised once per message for the whole room, see direct.py), else None.
        self._direct = direct.protocol_of(send)
        self.max_frames = max_frames
        self.max_bytes = max_bytes  # 0: no byte bound
        # Bytes of the frames in the buffer, counted only while a writer task drains it
        # (frames written at once never wait, and sizing them would cost every delivery);
        # and the catch-ups' bytes, allowed on top of max_bytes until they are written.
        self._bytes = 0
        self._slack = 0
        self._slack_frames = 0
        self.v1 = v1  # speaks roomcast.v1 (else the seed's dialect: message frames only)
        # Who the socket is (roomcast.access.Identity), replaced by re-checks.
        self.identity = identity
        self.user_id = identity.user_id if identity is not None else user_id
        # A /ws/ connection: its members end with an unsubscribed frame, not a close.
        self.mux = mux
        # Its members by room (a /ws/ connection's; a one-room socket's single member).
        self.subs: dict[str, Member] = {}
        # Called with a member that ended on its own (revoked, disconnected, refused)
        # on a mux connection, to take it out of the hub (services.leave_room).
        self.on_end: Callable[[Member], None] | None = None
        self.closed = False
        # A list, not a deque: an empty deque costs ~600 bytes per idle socket, and with
        # inline writes the buffer is nearly always empty (pop(0) on a short list is cheap).
        self._buffer: list[str] = []
        self._writer: asyncio.Task[None] | None = None
        self._loop = loop = asyncio.get_running_loop()
        # Frames written directly wait for the end of the loop's pass, so that what one
        # pass gives the socket goes in one write call (see _Flusher).
        self._flusher = _flusher(loop) if self._direct is not None else None

    def send_frame(self, frame: str) -> None:
        """Queue a frame for this socket (ack, error, pong, history page...)."""
        if not self.closed:
            self._enqueue(frame)

    def close(self, code: int, reason: str = "") -> None:
        """Close the socket now, dropping queued frames (those a slow client left
        waiting; frames waiting only for the end of the loop's pass are written first,
        as they would have been at once). Idempotent, never blocks."""
        if self.closed:
            return
        if self._buffer and self._writer is None and self._flusher is not None:
            self._kick()
        self.closed = True
        self._buffer.clear()
        for member in self.subs.values():
            member._held = None
        if self._writer is not None:
            # Its send waits for a socket that is not being read; the close goes
            # instead (a frame sent after the close would be an ASGI error).
            self._writer.cancel()
        task = self._loop.create_task(self._send_close(code, reason))
        _background.add(task)
        task.add_done_callback(_background.discard)

    def _start(
        self, frames: list[str], held: list[tuple[int | None, str]], member: Member, last: int
    ) -> None:
        """Queue a member's catch-up (``frames``), then the held frames it does not cover.

        A catch-up is allowed on top of the buffer's bounds while it drains (a /ws/
        connection that resubscribes ten rooms with ``since`` queues ten of them at once).
        """
        buffer = self._buffer
        if not self.v1:
            frames = [frame for frame in frames if not is_v1_only(frame)]
        self._slack_frames += len(frames)
        if self.max_bytes:
            size = sum(map(_size, frames))
            self._slack += size
            if self._writer is not None:
                self._bytes += size
        buffer.extend(frames)
        for seq, frame in held:
            if seq is None or seq > last:
                self._enqueue(frame)
                last = seq if seq is not None else last
        member.last_seq = last
        self._kick()

    def _enqueue(self, frame: str) -> None:
        buffer = self._buffer
        buffer.append(frame)
        if self._writer is None:  # the socket takes frames: nothing waits but this pass's
            flusher = self._flusher
            if flusher is not None and len(buffer) < COALESCE_MAX_FRAMES:
                if len(buffer) == 1:  # the buffer was empty: not waiting for a flush yet
                    flusher.add(self)
                return
            self._kick()
            return
        # A writer task drains the buffer: the client is not keeping up.
        if len(buffer) > self.max_frames + self._slack_frames:
            metrics.SLOW_CLOSES.inc()
            self.close(CloseCode.TRY_AGAIN_LATER, SLOW_REASON)
        elif self.max_bytes:
            self._bytes += _size(frame)
            if self._bytes > self.max_bytes + self._slack:
                metrics.SLOW_CLOSES.inc()
                self.close(CloseCode.TRY_AGAIN_LATER, SLOW_REASON)

    def _kick(self, cache: dict[str, bytes] | None = None) -> None:
        """Write the buffer now, as far as the server's send allows without waiting;
        ``cache``: the frames serialised in this pass of the loop (see _Flusher)."""
        if self._writer is not None or self.closed:
            return  # a writer task is draining, or the socket is gone
        buffer, send, protocol = self._buffer, self._send, self._direct
        while buffer:
            if protocol is not None and len(buffer) > 1:
                # Frames waiting (a catch-up, a pass's frames): one write call per 64 KB.
                count = direct.try_write_many(protocol, buffer, cache)
                if count:
                    self._wrote_slack(buffer, count)
                    del buffer[:count]
                    continue
            if self._slack_frames:  # a catch-up is being written: its allowance shrinks
                self._slack_frames -= 1
                if self._slack:
                    self._slack = max(0, self._slack - _size(buffer[0]))
            if protocol is not None and direct.try_write(protocol, buffer[0], cache):
                del buffer[0]
                continue
            coro = send({"type": "websocket.send", "text": buffer.pop(0)})
            try:
                awaiting = coro.send(None)
            except StopIteration:
                continue  # written
            except OSError:  # uvicorn's ClientDisconnected: the socket is gone
                self._gone()
                return
            except Exception:
                logger.exception("Writing to a socket failed")
                self._gone()
                return
            # The send has to wait (flow control): a task finishes it and drains the rest.
            if self.max_bytes:
                self._bytes = sum(map(_size, buffer))
            pending = _Resumed(coro, awaiting)
            self._writer = self._loop.create_task(self._drain(pending))
            self._writer.add_done_callback(partial(self._writer_done, pending))
            return

    def _wrote_slack(self, frames: list[str], count: int) -> None:
        """Shrink a catch-up's allowance by the first ``count`` of ``frames``, written
        (as the one-frame path does, frame by frame)."""
        counted = min(count, self._slack_frames)
        if counted:
            self._slack_frames -= counted
            if self._slack:
                self._slack = max(0, self._slack - sum(map(_size, frames[:counted])))

    async def _drain(self, pending: Awaitable[None]) -> None:
        buffer, send = self._buffer, self._send
        try:
            await pending
            while buffer:
                frame = buffer.pop(0)
                if self._slack_frames:
                    self._slack_frames -= 1
                if self.max_bytes:
                    size = _size(frame)
                    self._bytes -= size
                    if self._slack:
                        self._slack = max(0, self._slack - size)
                await send({"type": "websocket.send", "text": frame})
        except OSError:
            self._gone()
        except Exception:
            logger.exception("Writing to a socket failed")
            self._gone()

    def _writer_done(self, pending: _Resumed, task: asyncio.Task[None]) -> None:
        self._writer = None
        self._bytes = 0
        pending.close()  # a writer cancelled before it ran never finished the send
        # Frames queued after the task emptied the buffer and before this callback ran
        # (it runs a pass later) found a writer and were left to it: write them now.
        if self._buffer and not self.closed:
            self._kick()

    def _gone(self) -> None:
        self.closed = True
        self._buffer.clear()
        self._slack_frames = self._slack = 0

    async def _send_close(self, code: int, reason: str) -> None:
        try:
            await self._send(
                {"type": "websocket.close", "code": int(code), "reason": close_reason(reason)}
            )
        except OSError:
            pass  # the socket is gone already
        except RuntimeError:
            # The server closed it first (a keepalive timeout, a parser error): ASGI
            # servers refuse a second close with RuntimeError.
            logger.debug("A socket was closed by the server first")


class Member:
    """One subscription of a :class:`Connection` to one room: its stream position.

    Made with ``connection=`` for a ``/ws/`` subscription; made with ``send`` (and the
    connection's arguments), it makes a one-room connection of its own, as the room
    socket ``/ws/chat/<room>/`` does.

    Access (issue 7): ``rights`` is the frozenset of actions (``"join"``, ``"read"``,
    ``"post"``) it may do in its room, decided once when it joins
    (``services.join_room``) and read by the consumer for each ``history`` frame and
    post, so that neither costs a database read; replaced, never mutated, by a re-check
    when rights change (``roomcast.revocation``). Empty (nothing allowed) until decided.
    """

    __slots__ = (
        "__weakref__",
        "_ended",
        "_held",
        "connection",
        "last_seq",
        "live_state",
        "present",
        "rights",
        "rights_epoch",
        "room",
    )

    def __init__(
        self,
        send: Send | None = None,
        *,
        room: str,
        connection: Connection | None = None,
        max_frames: int = 1000,
        v1: bool = True,
        user_id: int | None = None,
        max_bytes: int = 0,
        identity: Any = None,
        rights: frozenset[str] | None = None,
        rights_epoch: int | None = None,
    ) -> None:
        if connection is None:
            if send is None:
                raise TypeError("Member needs a connection or a send")
            connection = Connection(
                send,
                max_frames=max_frames,
                max_bytes=max_bytes,
                v1=v1,
                identity=identity,
                user_id=user_id,
            )
        self.connection = connection
        self.room = room
        self.rights: frozenset[str] = rights if rights is not None else frozenset()
        # The hub's access_epoch read before those rights were checked: a member whose
        # check is older than a revocation this hub has seen is re-checked when it joins
        # (it was not yet registered when the revocation came).
        if rights_epoch is None:
            from .hub import running_hub  # the hub imports this module

            hub = running_hub()
            rights_epoch = hub.access_epoch if hub is not None else 0
        self.rights_epoch = rights_epoch
        # Whether it wants a room's live state (presence, typing): /ws/ subscriptions.
        self.live_state = connection.mux
        self.present = False  # counted in the room's presence (roomcast.presence)
        self.last_seq = 0
        self._ended = False
        self._held: list[tuple[int | None, str]] | None = []  # None once started

    # The connection's, for the code that knew a member as a socket.
    @property
    def identity(self) -> Any:
        return self.connection.identity

    @identity.setter
    def identity(self, value: Any) -> None:
        self.connection.identity = value

    @property
    def user_id(self) -> int | None:
        return self.connection.user_id

    @property
    def v1(self) -> bool:
        return self.connection.v1

    @property
    def closed(self) -> bool:
        """Whether it gets no more frames: it ended, or its socket closed."""
        return self._ended or self.connection.closed

    @closed.setter
    def closed(self, value: bool) -> None:
        self._ended = value

    @property
    def started(self) -> bool:
        """Whether its catch-up was queued (it gets live frames directly from now on)."""
        return self._held is None and not self._ended

    def deliver(self, seq: int | None, frame: str) -> None:
        """Queue a frame of the room; ``seq`` None for ephemeral frames."""
        if self._ended:
            return
        connection = self.connection
        if connection.closed:
            return
        held = self._held
        if held is not None:
            held.append((seq, frame))
            if len(held) > connection.max_frames:
                metrics.SLOW_CLOSES.inc()
                connection.close(CloseCode.TRY_AGAIN_LATER, "too far behind while joining")
            return
        if seq is not None:
            if seq <= self.last_seq:
                return  # already sent (catch-up overlapped the live stream)
            self.last_seq = seq
        connection._enqueue(frame)

    def send_frame(self, frame: str) -> None:
        """Queue a frame for this socket alone (ack, error, pong, history page)."""
        self.connection.send_frame(frame)

    def start(self, catch_up: CatchUp) -> None:
        """End the joining step: queue the catch-up, then the held frames not yet covered."""
        held, self._held = self._held or [], None
        if self.closed:
            return
        frames = list(catch_up.preface)
        frames.extend(frame for _, frame in catch_up.frames)
        self.connection._start(frames, held, self, catch_up.last_seq)

    def close(self, code: int, reason: str = "") -> None:
        """End this subscription with ``code``: on a one-room socket, close the socket;
        on a ``/ws/`` connection, send ``unsubscribed`` and keep the socket open."""
        connection = self.connection
        if not connection.mux:
            connection.close(code, reason)
            return
        if self._ended or connection.closed:
            return
        self._ended = True
        self._held = None
        if connection.subs.get(self.room) is self:
            del connection.subs[self.room]
        connection.send_frame(encode(unsubscribed_event(room=self.room, code=code, reason=reason)))
        if connection.on_end is not None:
            connection.on_end(self)


#: Most frames a socket's buffer holds for the end of the loop's pass; the one that
#: reaches it writes them at once (so a pass that gives one socket hundreds of frames,
#: a catch-up or a big batch, never comes near ``max_frames``).
COALESCE_MAX_FRAMES = 64


class _Flusher:
    """The connections of one event loop whose frames wait for the end of the loop's
    current pass, then written in one call each (``direct.try_write_many``).

    Why: a room's members each got one ``send`` system call per message, 83% of the
    server's time at 1,000 members flat out (py-spy). Frames handed to a socket in one
    pass of the loop (a batch of stored posts published one after another, an ack and
    the message it acks, several rooms of one ``/ws/`` socket) now go in one call. The
    wait is one pass (``call_soon``): nothing is held for a timer. Each message is
    serialised once per pass for all sockets (``cache``), as one frame was before.
    """

    __slots__ = ("_cache", "_loop", "_waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weak: _flushers holds this by its loop, and a dead loop's entry must go.
        self._loop = weakref.ref(loop)
        self._waiting: list[Connection] = []
        self._cache: dict[str, bytes] = {}

    def add(self, connection: Connection) -> None:
        if not self._waiting:
            loop = self._loop()
            if loop is None or loop.is_closed():
                connection._kick()  # no loop to wait for: write now
                return
            loop.call_soon(self._run)
        self._waiting.append(connection)

    def _run(self) -> None:
        waiting, self._waiting = self._waiting, []
        cache = self._cache
        try:
            for connection in waiting:
                try:
                    connection._kick(cache)
                except Exception:  # one socket's failure must not strand the others' frames
                    logger.exception("Writing to a socket failed")
                    connection._gone()
        finally:
            cache.clear()


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher] = (
    weakref.WeakKeyDictionary()
)


def _flusher(loop: asyncio.AbstractEventLoop) -> _Flusher:
    flusher = _flushers.get(loop)
    if flusher is None:
        flusher = _flushers[loop] = _Flusher(loop)
    return flusher


def _size(frame: str) -> int:
    """UTF-8 size of a frame's text (encoding only when it is not ASCII)."""
    return len(frame) if frame.isascii() else len(frame.encode("utf-8", "surrogatepass"))


class _Resumed:
    """Awaitable that finishes a coroutine already started by hand with ``send(None)``.

    ``awaiting`` is what that first step yielded (the future it waits on); awaiting this
    object inside a task hands that future to the task and then steps the coroutine as
    the task would have. This is the "eager start" asyncio gained in Python 3.12
    (``eager_start=True``); roomcast supports 3.11, which lacks it.
    """

    __slots__ = ("_awaiting", "_coro")

    def __init__(self, coro: Any, awaiting: Any) -> None:
        self._coro = coro
        self._awaiting = awaiting

    def close(self) -> None:
        """Close the coroutine (nothing happens if it already finished)."""
        self._coro.close()

    def __await__(self) -> Any:
        coro, awaiting = self._coro, self._awaiting
        while True:
            try:
                try:
                    sent = yield awaiting
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as exc:  # cancellation, or an error the task threw in
                    awaiting = coro.throw(exc)
                else:
                    awaiting = coro.send(sent)
            except StopIteration as stop:
                return stop.value


# Tasks started from sync callbacks; kept referenced until done (asyncio holds weak refs).
_background: set[asyncio.Task[None]] = set()
