"""uvicorn's websockets-sansio protocol, minus about 6 KB per open socket.

``roomcast serve`` passes :class:`LeanWebSocketsSansIOProtocol` to uvicorn as its ``ws``
protocol. It behaves as its parent; it only holds less per connection, which on a server
of mostly idle sockets is most of its memory. Traced per idle socket (tracemalloc, 3,000
sockets, uvicorn 0.54): the parent's ``asyncio.Queue`` (three deques and an Event's) and
``writable`` Event (one more) cost 5 deques of 760 bytes each, since CPython allocates a
deque's first 64-slot block up front; the handshake's parsed request and its 101 response
(about 4 KB of header text) stay referenced for the socket's life though never read
again. Measured as server RSS per idle socket: a bare ASGI app, 10,000 sockets, 20.1 ->
14.0 KB; roomcast's room sockets, 5,000, 22.2 -> 15.6 KB; sends and receives per second
unchanged (in-process, best of 7).

Why by hand: asyncio has no queue or event that allocates lazily, and uvicorn takes a
protocol class, not a queue factory. The two small classes below keep the asyncio
semantics uvicorn relies on (``Queue.put_nowait/get/get_nowait/empty``, ``Event.wait/set/
clear/is_set``; cancellation of a waiting ``get`` as in CPython 3.11's ``Queue.get``).
:func:`protocol_class` falls back to the parent if a uvicorn release changes the hooks
used here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from . import drain, guard

logger = logging.getLogger(__name__)

__all__ = ["LeanWebSocketsSansIOProtocol", "protocol_class"]


class _Queue:
    """The part of ``asyncio.Queue`` (unbounded) that uvicorn's protocol uses, with its
    semantics, holding a list only while items or getters exist."""

    __slots__ = ("_getters", "_items")

    def __init__(self) -> None:
        self._items: list[Any] | None = None
        self._getters: list[asyncio.Future[None]] | None = None

    def empty(self) -> bool:
        return not self._items

    @property
    def waiting(self) -> bool:
        """Whether the application waits in ``receive()`` (for the drain: it is idle)."""
        return bool(self._getters)

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = [item]
        else:
            self._items.append(item)
        self._wake_next()

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        # A list's pop(0): uvicorn pauses reading while messages wait, so it stays short.
        item = self._items.pop(0)
        if not self._items:
            self._items = None
        return item

    async def get(self) -> Any:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()  # in case it was woken and then cancelled
                if self._getters is not None and getter in self._getters:
                    self._getters.remove(getter)
                    if not self._getters:
                        self._getters = None
                if self._items and not getter.cancelled():
                    self._wake_next()  # it was woken for an item it will not take
                raise
        return self.get_nowait()

    def _wake_next(self) -> None:
        getters = self._getters
        while getters:
            getter = getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                break
        if not getters:
            self._getters = None


class _Event:
    """``asyncio.Event`` whose waiter list exists only while someone waits."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[bool]] | None = None

    def is_set(self) -> bool:
        return self._value

    @property
    def waiting(self) -> bool:
        """Whether a send waits for the socket to drain (a writer has frames to write)."""
        return bool(self._waiters)

    def set(self) -> None:
        if not self._value:
            self._value = True
            for waiter in self._waiters or ():
                if not waiter.done():
                    waiter.set_result(True)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            self._waiters.remove(waiter)
            if not self._waiters:
                self._waiters = None


class LeanWebSocketsSansIOProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol with lazily allocated queue and flow-control
    event, dropping the handshake's request and response once they are used; and with
    ``roomcast serve``'s connection limits (:mod:`roomcast.server.guard`): the count
    taken when the connection arrived, a deadline for the application to accept, and
    an abort for a socket that takes no data for ``SEND_TIMEOUT_SECS`` or does not
    complete its close within ``CLOSE_TIMEOUT_SECS``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _Queue()  # type: ignore[assignment]
        self.writable = _Event()  # type: ignore[assignment]
        self.writable.set()
        self.close_timeout = guard.limits().close_timeout

    # Class-level defaults, set on an instance only when used (an idle socket's
    # attribute dict stays as it was).
    _guard_address: str | None = None
    # One timer at a time: the handshake deadline until the app answers, then the stall
    # deadline while the transport is paused, or the abort after a close.
    _timer: asyncio.TimerHandle | None = None
    _timer_kind = ""
    # Where this socket is in a graceful drain (see the drain section below), and
    # whether the application has answers to send that the drain's close must wait for.
    _drain_state = ""
    _app_busy = 0

    def adopt_guard(self, address: str) -> None:
        """Take over the connection count of the HTTP protocol this socket was upgraded
        from (released in :meth:`connection_lost`), and start the handshake deadline."""
        self._guard_address = address
        if not self.handshake_complete and not self.disconnected:
            self._set_timer(guard.limits().handshake_timeout, self._handshake_timed_out)

    def handle_connect(self, event: Any) -> None:
        if drain.started(self.loop):
            self._refuse_during_drain()
            return
        super().handle_connect(event)
        self.request = None  # type: ignore[assignment]  # the scope holds its own copy

    def start_keepalive(self) -> None:
        # Called once, by send() right after it wrote the 101 response: the response's
        # last reader.
        self.response = None  # type: ignore[assignment]
        super().start_keepalive()

    async def receive(self) -> Any:
        if self._drain_state != "waiting":
            return await super().receive()
        # Draining: reading stays paused (the parent would resume it once the queue is
        # empty), and an application asking for more with nothing queued is done with
        # what it was given: the socket may close.
        if self.queue.empty():
            self.loop.call_soon(self._close_if_idle)
        return await self.queue.get()

    async def send(self, message: Any) -> None:
        if (
            message["type"] == "websocket.close"
            and not self.writable.is_set()
            and self.handshake_complete
            and not self.close_sent
            and not self.disconnected
        ):
            # The client reads nothing (the transport is paused): the stock send would
            # wait for it to drain before even queueing the close, which for a client
            # that never reads is forever (issue 6: 1013 closes that never left).
            self._close_behind_backlog(message.get("code", 1000), message.get("reason") or "")
            return
        await super().send(message)
        if self._timer is not None and self._timer_kind == "handshake" and self.handshake_complete:
            self._cancel_timer()
        if self.close_timer is not None:
            # uvicorn ends an unanswered close with transport.close(), which waits for
            # the buffer to drain: end it with a reset instead.
            self.close_timer.cancel()
            self.close_timer = None
            self._set_timer(self.close_timeout, self._abort, "close")
        if self._drain_state == "waiting":  # its ack may have been the last thing to write
            self.loop.call_soon(self._close_if_idle)

    # Roomcast's direct writes (roomcast.direct) may bypass this send: it writes frames
    # as the parent's does and adds only what happens at a close.
    send.direct_write_safe = True  # type: ignore[attr-defined]

    def _close_behind_backlog(self, code: int, reason: str) -> None:
        self._close_now(code, reason)
        self.close_sent = True

    def _close_now(self, code: int, reason: str) -> None:
        """Tell the application the socket is gone, write the close frame at once (past
        any backlog) and read on until the client answers it; reset it after
        ``close_timeout`` if it does not."""
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self._set_timer(self.close_timeout, self._abort, "close")

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        if not self.disconnected:  # its transport.close() would wait for the buffer
            self._set_timer(self.close_timeout, self._abort, "close")

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._timer is None:
            self._set_timer(guard.limits().send_timeout, self._stalled, "stall")

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._timer is not None and self._timer_kind == "stall":
            self._cancel_timer()
        if self._drain_state == "waiting":  # after the writer task's turn
            self.loop.call_soon(self._close_if_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        super().connection_lost(exc)
        if self._guard_address is not None:
            guard.guard().release(self._guard_address)
            self._guard_address = None
        if self._drain_state and self._drain_state != "gone":
            drain.current(self.loop).closed(forced=self._drain_state == "forced")
            self._drain_state = "gone"

    # -- graceful drain (server.drain) -----------------------------------------------------
    #
    # _drain_state: "" (not draining), "registered" (waiting for its batch), "waiting"
    # (its batch came: reading paused, the application finishing what it has), "closed"
    # (1012 sent when idle), "forced" (1012 sent at the deadline), "gone".

    def shutdown(self) -> None:
        """uvicorn's shutdown: an open socket is closed in its drain batch instead of now."""
        if self._drain_state:
            return
        if self.handshake_complete and not self.close_sent and not self.disconnected:
            self._drain_state = "registered"
            drain.current(self.loop).add(self)
            return
        super().shutdown()  # a handshake under way (500), or a close already sent

    def drain_close(self, deadline: float) -> None:
        """Stop reading frames; once the application has handled those it has (a post
        stored and acked) and its frames are written, close with 1012; at ``deadline``
        (loop time) close anyway."""
        if self._drain_state != "registered" or self.disconnected:
            return
        if self.close_sent or self.transport.is_closing():  # closing on its own already
            return
        self._drain_state = "waiting"
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()
        self._set_timer(max(0.0, deadline - self.loop.time()), self._drain_deadline, "drain")
        # Soon, not now: frames the application sent in this pass of the loop may wait
        # for its end (roomcast.connection's _Flusher, scheduled before this).
        self.loop.call_soon(self._close_if_idle)

    def hold_drain(self, busy: bool) -> None:
        """The application has work under way that will send (a socket's posts being
        stored, roomcast.post_line): while ``busy``, a drain waits for it as for a frame
        being handled; when it ends, the drain's close may go.

        The end counts a pass of the loop later: the work's last frames (its acks) may
        wait for the end of the pass they were sent in (roomcast.connection's _Flusher,
        scheduled before this), and the close must come after them.
        """
        if busy:
            self._app_busy += 1
        else:
            self.loop.call_soon(self._drain_released)

    def _drain_released(self) -> None:
        self._app_busy -= 1
        if self._drain_state == "waiting":
            self._close_if_idle()

    def _close_if_idle(self) -> None:
        queue, writable = cast(_Queue, self.queue), cast(_Event, self.writable)
        if (
            self._drain_state == "waiting"
            and not self._app_busy  # no posts being stored, their acks yet to come
            and queue.waiting  # the application waits for a frame
            and queue.empty()  # and has none left to handle
            and writable.is_set()  # and what it sent is written, none waits
            and not writable.waiting
        ):
            self._drain_now("closed")

    def _drain_deadline(self) -> None:
        self._timer = None
        if self._drain_state == "waiting":
            self._drain_now("forced")

    def _drain_now(self, state: str) -> None:
        self._drain_state = state
        if self.disconnected or self.transport.is_closing():
            return
        self._cancel_timer()
        self.stop_keepalive()
        # Frames the client sends until it answers the close are dropped
        # (send_receive_event_to_app). close_sent stays False, as after uvicorn's own
        # shutdown: a frame the application still sends fails as a gone socket
        # (ClientDisconnected), not as an ASGI error.
        self._close_now(drain.CLOSE_CODE, drain.REASON)

    def _refuse_during_drain(self) -> None:
        """A handshake that arrived as the drain began: 503, so the client tries again
        (through the load balancer, another process)."""
        self.handshake_complete = self.close_sent = True
        self.conn.send_response(self.conn.reject(503, "Server restarting; connect again.\n"))
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.transport.close()

    def send_receive_event_to_app(self) -> None:
        if self._drain_state in ("closed", "forced"):
            self.frames = []  # after the drain's close: not read, as after any close
            return
        if self.curr_msg_data_type == "text" and not self.close_sent:
            data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
            try:
                data.decode()
            except UnicodeDecodeError:
                # The parent would log a traceback per frame (one client sent 158): a
                # client's bad bytes are not the server's error. One line at DEBUG.
                self.frames = []
                logger.debug("%s - invalid UTF-8 in a text frame: closing with 1007", self.client)
                self.conn.send_close(1007, "invalid UTF-8 in a text frame")
                self.handle_parser_exception()
                return
        super().send_receive_event_to_app()

    def handle_parser_exception(self) -> None:
        super().handle_parser_exception()  # sends the close frame, then transport.close()
        if not self.disconnected:
            self._set_timer(self.close_timeout, self._abort, "close")

    def _set_timer(self, delay: float, callback: Any, kind: str = "handshake") -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(delay, callback)
        self._timer_kind = kind

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_kind = ""

    def _handshake_timed_out(self) -> None:
        self._timer = None
        if not self.handshake_complete and not self.disconnected:
            guard.guard().tally.add("closed: WebSocket not accepted within HANDSHAKE_TIMEOUT_SECS")
            guard.abort(self.transport)

    def _stalled(self) -> None:
        self._timer = None
        if not self.disconnected:
            guard.guard().tally.add("aborted: read nothing for SEND_TIMEOUT_SECS")
            guard.abort(self.transport)

    def _abort(self) -> None:
        self._timer = None
        if not self.disconnected:
            guard.guard().tally.add("aborted: close not completed within CLOSE_TIMEOUT_SECS")
            guard.abort(self.transport)


#: What the subclass relies on in its parent (checked before it is used).
_HOOKS = (
    "handle_connect",
    "start_keepalive",
    "send",
    "receive",
    "connection_lost",
    "pause_writing",
    "resume_writing",
    "keepalive_timeout",
    "send_receive_event_to_app",
    "handle_parser_exception",
    "shutdown",
    "stop_keepalive",
)


def protocol_class() -> str:
    """The ``ws`` argument for uvicorn: this module's class, or uvicorn's own
    ``websockets-sansio`` if this uvicorn lacks a hook the subclass overrides or uses."""
    missing = [name for name in _HOOKS if not hasattr(WebSocketsSansIOProtocol, name)]
    if missing:
        logger.warning(
            "uvicorn's WebSocketsSansIOProtocol has no %s: using it as it is (about 6 KB "
            "more per socket)",
            ", ".join(missing),
        )
        return "websockets-sansio"
    return f"{__name__}:LeanWebSocketsSansIOProtocol"
