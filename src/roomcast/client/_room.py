"""One room of a :class:`~roomcast.client.Connection`: its handle, its state, its events.

Layer: client. Standard library and :mod:`roomcast.protocol` only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import uuid
from collections import deque
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from roomcast.protocol import ProtocolError, should_reconnect
from roomcast.protocol.codec import check_text

from ._errors import ClientError, ClosedError, RefusedError, UnsubscribedError
from ._events import (
    SEQ_MAX,
    Delete,
    Edit,
    HistoryPage,
    Join,
    Joined,
    Leave,
    Message,
    Presence,
    PresenceCount,
    RoomEvent,
    Unread,
    message,
    retry_after,
    room_event,
)
from ._queue import EventQueue, make_lagged
from ._sends import RETRY_AFTER_MAX_SECS, Post, fail

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["HISTORY_PAGE_MAX", "SUBSCRIBE_ERRORS", "Room"]

logger = logging.getLogger("roomcast.client")

#: Most messages one history page holds (the server clamps larger asks to this).
HISTORY_PAGE_MAX = 100
#: Shortest time between two typing frames of one room, in seconds: the server forwards
#: one per user and room every TYPING_INTERVAL_SECS (2) anyway, so a frame per keystroke
#: would only cost bandwidth.
TYPING_RESEND_SECS = 1.0
#: Most live messages the client remembers having counted as unread since the server's
#: last count, so that their deletion lowers ``unread`` again (the count is corrected by
#: the server's next ``unread`` frame in any case).
UNREAD_TRACKED_MAX = 10_000

#: Error codes that answer only a subscribe.
SUBSCRIBE_ERRORS = frozenset({"already_subscribed", "too_many_subscriptions"})
#: Error codes after which a subscribe is sent again (after retry_after, or the backoff).
RESUBSCRIBE_ERRORS = frozenset({"rate_limited", "internal_error", "busy"})


def check_seq(seq: object, what: str = "seq") -> int:
    """``seq`` if it is a message's sequence number (a positive int), else ValueError."""
    if type(seq) is not int or not 1 <= seq <= SEQ_MAX:
        raise ValueError(f"{what} must be a positive int, not {seq!r:.40}")
    return seq


def check_message_text(text: object) -> str:
    """``text`` if the server can store it, else ValueError / TypeError."""
    if not isinstance(text, str):
        raise TypeError(f"the message must be a str, not {type(text).__name__}")
    if not text:
        raise ValueError("the message is empty")
    try:
        check_text(text, "message")
    except ProtocolError as exc:
        raise ValueError(exc.detail) from None
    return text


class Room:
    """A subscription to one room, from :meth:`Connection.subscribe`.

    State kept up to date whether or not the events are read:

    - ``last_seq``: the highest stream position seen (the ``since`` of the next
      resubscribe); None before the first message of a room that has one.
    - ``read_seq``, ``unread``: the user's read cursor and unread count (None for
      guests): the server's numbers from ``joined`` and ``unread`` frames, plus one for
      each live message after them not posted by this user (minus the ones deleted).
    - ``presence``: user -> number of connections, from ``presence`` frames and
      ``join`` / ``leave``; ``presence_count`` users in all (it can exceed the listed
      ones: ``presence_truncated``, or a big room's ``presence_count`` frames);
      ``anonymous`` guests.

    ``async for event in room`` yields :data:`~roomcast.client.RoomEvent` objects in
    the order the server sent them, each stored message once. One task reads a room's
    events; at most ``max_queued_events`` (1000) wait for it, then the oldest are
    dropped and a :class:`~roomcast.client.Lagged` event says how many. The iteration
    ends after :meth:`unsubscribe`, and raises :class:`~roomcast.client.UnsubscribedError`
    when the server ends the subscription (4403 ...), or
    :class:`~roomcast.client.ClosedError` when the connection ends.
    """

    def __init__(self, conn: Connection, name: str, since: int | None, max_events: int) -> None:
        self._conn = conn
        self.name = name
        self.last_seq: int | None = since
        self.read_seq: int | None = None
        self.unread: int | None = None
        self._presence: dict[str, int] = {}
        self.presence_count = 0
        self.anonymous = 0
        self.presence_truncated = False
        #: Whether the room is live on the current socket (a ``joined`` came).
        self.joined = False
        #: Whether the subscription ended (unsubscribed, refused, or the connection ended).
        self.ended = False
        self._ended_for_calls: BaseException | None = None
        self._joined_seq: int | None = None
        #: Whether a subscribe went out on the current socket, and with which since.
        self._subscribe_sent = False
        self._since_sent: int | None = None
        self._events: EventQueue[RoomEvent] = EventQueue(max_events, name)
        self._history: deque[tuple[dict[str, Any], asyncio.Future[HistoryPage]]] = deque()
        self._presence_waiters: list[asyncio.Future[Presence]] = []
        loop = asyncio.get_running_loop()
        self._first: asyncio.Future[None] = loop.create_future()
        self._read_wanted: int | None = None
        self._typing_at = -math.inf
        #: False once the server refused a typing frame (the user may not post here).
        self.may_type = True
        self._counted: set[int] = set()
        self._resubscribe_attempt = 0
        self._resubscribe_timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<Room {self.name!r} last_seq={self.last_seq} joined={self.joined}>"

    @property
    def presence(self) -> Mapping[str, int]:
        """Who is in the room: user -> connections (a read-only live view)."""
        return MappingProxyType(self._presence)

    # -- the program's calls --------------------------------------------------------------

    async def send(self, text: str) -> int:
        """Post ``text``; returns its seq once the server stored it.

        It waits while the connection is down (at most MAX_QUEUED_SENDS, 100, sends of
        the room wait) and is sent again after a reconnect until the server
        acknowledges it, with the same ``client_id``: the server stores it once.
        ``busy`` and ``rate_limited`` answers are retried after the server's
        ``retry_after`` (3 times at most).

        Raises:
            RefusedError: the server refused it (``forbidden``, ``rate_limited`` after
                the retries, ...); nothing was stored.
            QueueFullError, FrameTooLargeError: not sent.
            UnsubscribedError, ClosedError: the subscription or connection ended first.
            ValueError, TypeError: ``text`` is empty, not a str, or has NUL.

        Cancelling the call before the message is sent takes it out of the queue; after
        it was sent it may still be stored.
        """
        text = check_message_text(text)
        return await self._post({"type": "message", "message": text})

    async def edit(self, seq: int, text: str) -> int:
        """Change the text of message ``seq`` (the author within EDIT_WINDOW_SECS, or a
        moderator); returns the seq of the edit event. Raises as :meth:`send`
        (``RefusedError`` ``forbidden`` or ``not_found``)."""
        seq = check_seq(seq)
        text = check_message_text(text)
        return await self._post({"type": "edit", "seq": seq, "message": text})

    async def delete(self, seq: int) -> int:
        """Delete message ``seq``; returns the seq of the delete event. Raises as
        :meth:`edit`."""
        seq = check_seq(seq)
        return await self._post({"type": "delete", "seq": seq})

    async def _post(self, fields: dict[str, Any]) -> int:
        self._raise_if_ended()
        frame = {"type": fields.pop("type"), "room": self.name, **fields}
        frame["client_id"] = uuid.uuid4().hex
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        post = Post(self, frame, future)
        self._conn._sends.submit(post)
        try:
            return await future
        finally:
            if future.cancelled():
                self._conn._sends.withdraw(post)

    async def history(self, *, before: int | None = None, limit: int = 50) -> HistoryPage:
        """A page of the room's stream before ``before`` (default: the latest), at most
        ``limit`` (1-100) messages, oldest first, in their final state.

        Asked again after a reconnect if the answer had not come.

        Raises:
            RefusedError: ``forbidden`` (may not read this room's history).
            UnsubscribedError, ClosedError: the subscription or connection ended first.
            ValueError: ``before`` or ``limit`` out of range.
        """
        frame: dict[str, Any] = {"type": "history", "room": self.name}
        if before is not None:
            frame["before"] = check_seq(before, "before")
        if type(limit) is not int or not 1 <= limit <= HISTORY_PAGE_MAX:
            raise ValueError(f"limit must be an int from 1 to {HISTORY_PAGE_MAX}")
        frame["limit"] = limit
        self._raise_if_ended()
        future: asyncio.Future[HistoryPage] = asyncio.get_running_loop().create_future()
        self._history.append((frame, future))
        if self.joined:
            self._conn._requests.send("history", self.name, frame, future)
        try:
            return await future
        finally:
            if future.cancelled():
                self._history = deque(e for e in self._history if e[1] is not future)

    async def read(self, seq: int) -> None:
        """Move the user's read cursor to ``seq`` (it never moves back). Returns once the
        frame is on its way (sent again after a reconnect if the server did not confirm
        it); ``read_seq`` / ``unread`` change when the server's ``unread`` frame comes.

        Raises:
            RefusedError: ``forbidden`` for a guest, who has no read cursor.
        """
        seq = check_seq(seq)
        self._raise_if_ended()
        if self._conn.guest:
            raise RefusedError("forbidden", "Guests have no read cursors.", room=self.name)
        if self._read_wanted is not None and seq <= self._read_wanted:
            return
        if self.read_seq is not None and seq <= self.read_seq:
            return
        self._read_wanted = seq
        if self.joined:
            self._conn._requests.send(
                "silent", self.name, {"type": "read", "room": self.name, "seq": seq}
            )

    async def typing(self) -> None:
        """Tell the room's other members this user is typing. Sent at most once every
        TYPING_RESEND_SECS (1 s); dropped while the connection is down (typing is
        ephemeral), and once the server refused it (no right to post here)."""
        self._raise_if_ended()
        now = asyncio.get_running_loop().time()
        if self.joined and self.may_type and now - self._typing_at >= TYPING_RESEND_SECS:
            self._typing_at = now
            self._conn._requests.send("silent", self.name, {"type": "typing", "room": self.name})

    async def fetch_presence(self) -> Presence:
        """Ask the server who is in the room now (``room.presence`` is kept up to date
        without asking; this is for a big room's full list, or to be sure).

        Raises:
            RefusedError: the server has no presence (``refused``).
        """
        self._raise_if_ended()
        future: asyncio.Future[Presence] = asyncio.get_running_loop().create_future()
        self._presence_waiters.append(future)
        if self.joined:
            self._conn._requests.send(
                "presence", self.name, {"type": "presence", "room": self.name}, future
            )
        return await future

    async def unsubscribe(self) -> None:
        """Leave the room: the server stops sending its frames, sends still waiting fail
        with UnsubscribedError (1000), the iteration ends after the events queued, and
        the name can be subscribed again."""
        if self.ended:
            return
        if self._subscribe_sent:
            frame = {"type": "unsubscribe", "room": self.name}
            self._conn._requests.send("unsubscribe", self.name, frame)
        self._end(None, UnsubscribedError(self.name, 1000, "unsubscribed"))

    def __aiter__(self) -> Room:
        return self

    async def __anext__(self) -> RoomEvent:
        return await self._events.get(make_lagged)

    def _raise_if_ended(self) -> None:
        if self._ended_for_calls is not None:
            raise self._ended_for_calls

    # -- the connection's calls -----------------------------------------------------------

    def subscribe_frame(self) -> dict[str, Any]:
        """The ``subscribe`` frame for the current socket (with ``since`` once a position
        is known)."""
        self._subscribe_sent = True
        self._since_sent = self.last_seq
        frame: dict[str, Any] = {"type": "subscribe", "room": self.name}
        if self.last_seq is not None:
            frame["since"] = self.last_seq
        return frame

    def socket_lost(self) -> None:
        """The socket closed: the room waits for the next one."""
        self.joined = False
        self._joined_seq = None
        self._subscribe_sent = False
        self._since_sent = None
        if self._resubscribe_timer is not None:
            self._resubscribe_timer.cancel()
            self._resubscribe_timer = None

    @property
    def subscribing(self) -> bool:
        """Whether a subscribe went out on the current socket and is not answered yet."""
        return self._subscribe_sent and not self.joined and not self.ended

    def subscribe_refused(self, error: RefusedError) -> None:
        """The subscribe was answered with ``error``: ``rate_limited`` (the server's
        ROOM_REQUESTS_PER_SOCKET) and ``internal_error`` are asked again after
        ``retry_after`` or the backoff; anything else ends the subscription."""
        if error.code not in RESUBSCRIBE_ERRORS:
            self._end(error, error)
            return
        delay = self._conn._backoff_delay(self._resubscribe_attempt)
        if error.retry_after is not None:
            delay = max(delay, min(error.retry_after, RETRY_AFTER_MAX_SECS))
        self._resubscribe_later(delay)

    def _resubscribe_later(self, delay: float) -> None:
        self._subscribe_sent = False
        self._resubscribe_attempt += 1
        socket = self._conn._socket_id
        loop = asyncio.get_running_loop()
        self._resubscribe_timer = loop.call_later(delay, self._resubscribe, socket)

    def caught_up(self) -> bool:
        """Whether the catch-up announced by the last ``joined`` has been delivered."""
        return self.joined and (self.last_seq or 0) >= (self._joined_seq or 0)

    def on_frame(self, frame: dict[str, Any]) -> None:
        """A frame about this room arrived (answers to requests are matched by the
        connection first: :meth:`answered`, :meth:`refused`)."""
        kind = frame.get("type")
        if kind == "ack":
            client_id, seq = frame.get("client_id"), frame.get("seq")
            if isinstance(client_id, str) and type(seq) is int:
                self._conn._sends.settle(self, client_id, seq)
        elif kind == "error":
            self._on_error(frame)
        elif kind == "unsubscribed":
            self._on_unsubscribed(frame)
        else:
            event = room_event(frame)
            if event is None:
                logger.debug("roomcast.client: ignored a %r frame of %r", kind, self.name)
            else:
                self._on_event(event)

    def answered(self, future: asyncio.Future[Any], frame: dict[str, Any]) -> None:
        """``frame`` (a ``history`` page) answers the request ``future``."""
        self._history = deque(e for e in self._history if e[1] is not future)
        if future.done():
            return
        messages: list[Message | Edit | Delete] = []
        items = frame.get("messages")
        for item in items if isinstance(items, list) else []:
            try:
                messages.append(message(item, self.name))
            except (ValueError, AttributeError):
                logger.warning("roomcast.client: skipped a history entry of %r", self.name)
        page = HistoryPage(
            room=self.name, messages=messages, has_more=frame.get("has_more") is True
        )
        future.set_result(page)

    def refused(self, kind: str, future: asyncio.Future[Any] | None, error: RefusedError) -> None:
        """The server answered this room's request (``kind``) with ``error``."""
        if future is not None:
            self._history = deque(e for e in self._history if e[1] is not future)
            if future in self._presence_waiters:
                self._presence_waiters.remove(future)
            fail(future, error)
        elif kind == "silent" and error.code == "forbidden" and not self._conn.guest:
            self.may_type = False  # a read refused would be a guest's: typing it is
        else:
            logger.info("roomcast.client: a frame of %r was refused: %s", self.name, error)

    def _on_event(self, event: RoomEvent) -> None:
        if isinstance(event, Joined):
            event = self._on_joined(event)
        elif isinstance(event, Message | Edit | Delete):
            if event.seq is not None:
                if self.last_seq is not None and event.seq <= self.last_seq:
                    return  # already delivered (a replay overlapping what was seen)
                self.last_seq = event.seq
                self._count_unread(event)
                if event.client_id:  # the sender's post, stored (a catch-up shows it)
                    self._conn._sends.settle(self, event.client_id, event.seq)
        elif isinstance(event, Unread):
            self.read_seq, self.unread = event.read_seq, event.unread
            self._counted.clear()
            if self._read_wanted is not None and event.read_seq >= self._read_wanted:
                self._read_wanted = None
        elif isinstance(event, Presence):
            self._presence = dict(event.users)
            self.presence_count = event.count
            self.anonymous = event.anonymous
            self.presence_truncated = event.truncated
            waiters, self._presence_waiters = self._presence_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(event)
        elif isinstance(event, Join):
            if event.user not in self._presence:
                self._presence[event.user] = 1
                self.presence_count += 1
        elif isinstance(event, Leave):
            if self._presence.pop(event.user, None) is not None or self.presence_truncated:
                self.presence_count = max(0, self.presence_count - 1)
        elif isinstance(event, PresenceCount):
            self.presence_count, self.anonymous = event.count, event.anonymous
        self._events.put(event)
        self._conn._sends.pump()

    def _on_joined(self, event: Joined) -> Joined:
        since = self._since_sent
        if since is not None and event.recovered is not False and event.seq < since:
            # The server's stream is behind what was seen (a restored database): what
            # was shown is not this stream any more.
            event = dataclasses.replace(event, recovered=False)
        if event.recovered is not True:
            self.last_seq = None
        if self.last_seq is None and event.seq == 0:
            self.last_seq = 0  # an empty room: nothing to catch up
        self._joined_seq = event.seq
        self.joined = True
        self._resubscribe_attempt = 0
        if event.read_seq is not None:
            self.read_seq = event.read_seq
        if event.unread is not None:
            self.unread = event.unread
        self._counted.clear()
        wanted = self._read_wanted
        if wanted is not None:
            if self.read_seq is not None and self.read_seq >= wanted:
                self._read_wanted = None
            else:
                frame = {"type": "read", "room": self.name, "seq": wanted}
                self._conn._requests.send("silent", self.name, frame)
        for frame, future in self._history:
            self._conn._requests.send("history", self.name, frame, future)
        for waiter in self._presence_waiters:
            frame = {"type": "presence", "room": self.name}
            self._conn._requests.send("presence", self.name, frame, waiter)
        if not self._first.done():
            self._first.set_result(None)
        return event

    def _count_unread(self, event: Message | Edit | Delete) -> None:
        if self.unread is None or self._joined_seq is None or event.seq is None:
            return
        if isinstance(event, Delete):
            if event.target in self._counted:
                self._counted.discard(event.target)
                self.unread = max(0, self.unread - 1)
            return
        live = event.seq > self._joined_seq and event.seq > (self.read_seq or 0)
        if (
            live
            and isinstance(event, Message)
            and event.kind in ("chat", "system")
            and not event.deleted
            and event.user != self._conn.user
        ):
            self.unread += 1
            if len(self._counted) < UNREAD_TRACKED_MAX:
                self._counted.add(event.seq)

    def _on_error(self, frame: dict[str, Any]) -> None:
        code = str(frame["code"]) if isinstance(frame.get("code"), str) else "error"
        detail = str(frame["detail"]) if isinstance(frame.get("detail"), str) else ""
        client_id = frame.get("client_id")
        if isinstance(client_id, str):
            self._conn._sends.refused(self, client_id, code, detail, retry_after(frame))
        elif code in SUBSCRIBE_ERRORS:
            error = RefusedError(code, detail, room=self.name)
            self._end(error, error)

    def _on_unsubscribed(self, frame: dict[str, Any]) -> None:
        code = frame.get("code")
        reason = frame.get("reason")
        if type(code) is not int or code == 1000:
            # The answer to an unsubscribe of an earlier subscription of this name (a
            # refused subscribe never has 1000).
            return
        reason = reason if isinstance(reason, str) else ""
        self.joined = False
        if should_reconnect(code):
            # Database or layer down (1011): subscribe again, with backoff.
            self._resubscribe_later(self._conn._backoff_delay(self._resubscribe_attempt))
        else:
            error = UnsubscribedError(self.name, code, reason)
            self._end(error, error)

    def _resubscribe(self, socket: int) -> None:
        self._resubscribe_timer = None
        if not self.ended and socket == self._conn._socket_id and self._conn._ws is not None:
            self._conn._write(self.subscribe_frame())

    def _end(self, error: BaseException | None, for_waiting: BaseException) -> None:
        """End the subscription: iteration ends (with ``error``, if any); every call
        still waiting fails with ``for_waiting``."""
        if self.ended:
            return
        self.ended = True
        self.joined = False
        self._ended_for_calls = for_waiting
        if self._resubscribe_timer is not None:
            self._resubscribe_timer.cancel()
        self._events.end(error)
        fail(self._first, for_waiting)
        for _, future in self._history:
            fail(future, for_waiting)
        self._history.clear()
        for waiter in self._presence_waiters:
            fail(waiter, for_waiting)
        self._presence_waiters.clear()
        self._conn._forget(self, for_waiting)

    def close(self, error: ClientError | None) -> None:
        """The connection ended: ``error`` (None: closed by the program)."""
        self._end(error, error or ClosedError(1000, "closed by the client"))
