"""Transport: the room WebSocket. Accept, close with named codes, hand frames on.

Layer: consumer. Calls ``protocol`` to read frames and ``services`` to act on them;
never touches ``Model.objects`` or the channel layer. Only ``routing`` imports it.

``RoomConsumer`` is a plain ASGI application, not a Channels consumer class: it needs
none of a consumer's machinery (a layer channel per socket, handler dispatch, a task per
receive source), and that machinery is what an idle socket pays for in memory. Traced
with tracemalloc at 1,000 idle sockets, the Channels consumer, its dispatch tasks and
its scope copies held about a third of the server's per-socket memory. Outgoing room
frames never pass through per-message dispatch either: the hub writes them to the
socket's buffer directly (Channels 4.2+ runs ``aclose_old_connections``, a thread round
trip, before every handler call; paying that per member per message was a third of the
tutorial's server time). It still runs behind Channels' ``URLRouter`` and middleware.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import cursors, edits, limits, metrics, security, services, socket_log, stream
from .access import Identity
from .conf import roomcast_settings
from .connection import Connection, Member
from .exceptions import PermissionDeniedError, RefusedError
from .post_line import PostLine
from .protocol import (
    PROTOCOL_V1,
    CloseCode,
    FrameTooLargeError,
    InvalidRoomNameError,
    NotFoundError,
    ProtocolError,
    codec,
)
from .protocol.messages import (
    AuthFrame,
    EditFrame,
    HistoryFrame,
    PingFrame,
    ReadFrame,
    RoomFrame,
    SendMessageFrame,
    SubscribeFrame,
)
from .protocol.room_names import is_user_room
from .security import SERVER_SEND
from .stream import StoredMessage

logger = logging.getLogger(__name__)


class _Socket:
    """What the room socket and the ``/ws/`` connection share: accepting, finding out who
    the client is, the auth frame, the token's expiry, reading and dispatching frames.

    A connection goes through phases: ``connecting`` (the URL is read, the socket
    accepted and who it is resolved, see ``security``), ``auth`` (opened with
    ``?auth=1``: waiting at most ``HANDSHAKE_TIMEOUT_SECS`` for the auth frame),
    ``joined`` (frames are handled), ``closed``. A socket with a token is closed with
    4501 when the token expires, by a timer, whether or not it sends anything.
    """

    __slots__ = (
        "connection",
        "expiry",
        "phase",
        "posts",
        "quota",
        "scope",
        "send",
        "since",
        "v1",
        "waiting",
    )

    #: What the URL names, for log lines.
    label = "a socket"
    #: Client frame type -> handler(self, frame); set by each subclass.
    _handlers: dict[str, Callable[..., Awaitable[None]]] = {}

    def __init__(self, scope: dict[str, Any], send: Any) -> None:
        self.scope = scope
        # The server's own send when the middleware put it in the scope (fewer wrappers
        # per frame, see security.RoomcastMiddleware), else the one it was given.
        self.send = scope.get(SERVER_SEND) or send
        self.connection: Connection | None = None
        self.quota: limits.Quota | None = None  # rate and socket limits (roomcast.limits)
        self.posts: PostLine | None = None  # its posts in flight, made at its first post
        self.v1 = PROTOCOL_V1 in (scope.get("subprotocols") or ())
        self.phase = "connecting"
        self.since: int | None = None
        # Timers: the auth frame's deadline (phase "auth"), the token's expiry (joined).
        self.waiting: asyncio.TimerHandle | None = None
        self.expiry: asyncio.TimerHandle | None = None

    @classmethod
    def as_asgi(cls) -> Callable[..., Awaitable[None]]:
        """The ASGI application for ``websocket`` scopes."""

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await cls(scope, send).run(receive)

        return app

    async def run(self, receive: Any) -> None:
        """Serve the connection until the client goes away."""
        metrics.socket_opened(self)
        session = socket_log.Session(self)  # its access line, and who on its log records
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    session.frames_in += 1
                    await self.receive(message.get("text"), message.get("bytes"))
                elif kind == "websocket.connect":
                    await self.connect()
                elif kind == "websocket.disconnect":
                    session.code = message.get("code", socket_log.NO_CODE)
                    return
        finally:
            session.end()
            self.disconnect()
            metrics.socket_closed(self)

    def _read_url(self) -> codec.ConnectQuery:
        """Check the URL (raises ProtocolError); returns its query."""
        raw_path = self.scope.get("raw_path")
        if isinstance(raw_path, bytes):
            # The server's "path" has %XX bytes that are not UTF-8 decoded to U+FFFD
            # (validate_room_name refuses that too); the raw bytes say exactly why.
            codec.check_path_encoding(raw_path)
        return codec.parse_connect_query(self.scope.get("query_string", b""))

    async def connect(self) -> None:
        """Validate the URL, accept, find out who the client is, then start."""
        subprotocol = PROTOCOL_V1 if self.v1 else None
        try:
            query = self._read_url()
        except ProtocolError as exc:
            # Accept, then close with the code and reason, so the client can tell why
            # (a refusal before accept reaches a browser as a bare HTTP 403).
            await self.send({"type": "websocket.accept", "subprotocol": subprotocol})
            await self._close(exc.close_code or CloseCode.BAD_REQUEST, exc.detail)
            return
        await self.send({"type": "websocket.accept", "subprotocol": subprotocol})
        self.since = query.since
        try:
            token = security.bearer_token(self.scope.get("headers", ()))
            if token is not None:  # the header first: it is the client's explicit word
                identity = await security.identity_from_token(token)
            elif query.auth:
                self.phase = "auth"
                self.waiting = asyncio.get_running_loop().call_later(
                    roomcast_settings.HANDSHAKE_TIMEOUT_SECS, self._no_auth_frame
                )
                return
            else:
                identity = await security.identity_from_session(self.scope)
        except security.AuthenticationFailed as exc:
            await self._close(CloseCode.UNAUTHORIZED, exc.reason)
            return
        except Exception:
            logger.exception("Reading the session of %s failed", self.label)
            await self._close(CloseCode.INTERNAL_ERROR, "could not join; reconnect")
            return
        await self._admit(identity)

    async def _admit(self, identity: Identity) -> None:
        """Count the socket against the limits, then start it (``_start``)."""
        self.phase = "joining"
        try:  # sockets per user and per address (roomcast.limits), now that we know who
            self.quota = limits.admit(self.scope, identity.user_id)
        except limits.TooManySocketsError as exc:
            await self._close(exc.close_code or CloseCode.TOO_MANY, exc.detail)
            return
        if not await self._start(identity):
            return
        self.phase = "joined"
        if identity.expires_at is not None:
            delay = max(0.0, identity.expires_at - time.time())
            self.expiry = asyncio.get_running_loop().call_later(delay, self._token_expired)

    async def _start(self, identity: Identity) -> bool:
        """Join what the URL names; False if the socket was closed instead."""
        raise NotImplementedError

    def _token_expired(self) -> None:
        self.expiry = None
        if self.connection is not None:
            self.connection.close(CloseCode.TOKEN_EXPIRED, security.TOKEN_EXPIRED_REASON)

    def _no_auth_frame(self) -> None:
        self.waiting = None
        if self.phase == "auth":
            seconds = roomcast_settings.HANDSHAKE_TIMEOUT_SECS
            reason = f"send the auth frame first (none came within {seconds:g} s)"
            task = asyncio.ensure_future(self._close(CloseCode.UNAUTHORIZED, reason))
            _closing.add(task)
            task.add_done_callback(_closing.discard)

    def disconnect(self) -> None:
        """Leave every room; stop the timers; release the socket's quota."""
        self.phase = "closed"
        for timer in (self.waiting, self.expiry):
            if timer is not None:
                timer.cancel()
        self.waiting = self.expiry = None
        if self.quota is not None:
            self.quota.release()
            self.quota = None
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.closed = True
            for member in list(connection.subs.values()):
                member.closed = True
                services.leave_room(member)
            connection.subs.clear()

    async def _close(self, code: int, reason: str) -> None:
        if self.phase == "closed":
            return
        self.phase = "closed"
        try:
            await self.send(
                {"type": "websocket.close", "code": int(code), "reason": codec.close_reason(reason)}
            )
        except (OSError, RuntimeError):
            # Gone already (uvicorn's ClientDisconnected is an OSError), or closed by the
            # server first (a second close is a RuntimeError), as in Connection.close.
            logger.debug("%s was gone before its close", self.label)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Parse one client frame and act on it; bad frames get an error event or a close."""
        if self.phase == "auth":
            await self._authenticate(text_data, bytes_data)
            return
        connection = self.connection
        if connection is None or connection.closed:
            return
        try:
            frame = codec.parse_frame(
                text_data, bytes_data, max_bytes=roomcast_settings.MAX_FRAME_BYTES
            )
        except ProtocolError as exc:
            await self._after_posts()
            if exc.close_code is not None:
                connection.close(exc.close_code, codec.close_reason(exc.detail))
            else:
                self._error(exc.code, exc.detail)
            return
        client_id = frame.get("client_id")
        client_id = client_id if isinstance(client_id, str) else None
        room = frame.get("room") if connection.mux else None
        room = room if isinstance(room, str) else None
        handler = self._handlers.get(frame["type"])
        if frame["type"] != "message":
            await self._after_posts()
        try:
            if handler is None:
                raise InvalidFrameRefusal(ONLY_ON_WS.format(kind=frame["type"]))
            await handler(self, frame)
        except RefusedError as exc:
            await self._after_posts()  # a refused post too (on /ws/: not subscribed...)
            self._error(exc.code, exc.detail, client_id, room)
        except Exception:
            logger.exception("Handling a %r frame of %s failed", frame["type"], self.label)
            await self._after_posts()
            self._error(
                "internal_error", "The server could not handle this frame; try again.",
                client_id, room,
            )  # fmt: skip

    async def _authenticate(self, text_data: str | None, bytes_data: bytes | None) -> None:
        """The first frame of a socket opened with ``?auth=1``: it must be the auth frame."""
        if self.waiting is not None:
            self.waiting.cancel()
            self.waiting = None
        self.phase = "connecting"
        try:
            frame = codec.parse_frame(
                text_data, bytes_data, max_bytes=roomcast_settings.MAX_FRAME_BYTES
            )
        except FrameTooLargeError as exc:
            await self._close(CloseCode.MESSAGE_TOO_BIG, exc.detail)
            return
        except ProtocolError as exc:
            await self._close(CloseCode.UNAUTHORIZED, f"{AUTH_FRAME_FIRST}: {exc.detail}")
            return
        if frame["type"] != "auth":
            await self._close(CloseCode.UNAUTHORIZED, AUTH_FRAME_FIRST)
            return
        try:
            identity = await security.identity_from_token(frame["token"])
        except security.AuthenticationFailed as exc:
            await self._close(CloseCode.UNAUTHORIZED, exc.reason)
            return
        if self.phase == "connecting":  # not closed meanwhile
            await self._admit(identity)

    # -- what a member may do, on either endpoint ----------------------------------------

    async def _after_posts(self) -> None:
        """Wait until the socket's posts in flight are answered: every answer other than
        a post's own ack (an error, a refusal, a close, another frame's reply) goes
        after the answers to the posts before it, as when posts went one at a time."""
        if self.posts is not None and len(self.posts):
            await self.posts.idle()

    async def _post(self, member: Member, frame: SendMessageFrame) -> None:
        if "post" not in member.rights:
            raise PermissionDeniedError(
                "You may not post in this room."
                if member.identity.authenticated
                else "Log in to post in this room."
            )
        quota = self.quota
        if quota is not None:
            if self.posts is not None and len(self.posts) and not quota.has_token():
                await self._after_posts()  # its refusal (or 4429) goes after their acks
            if not quota.allow_post(member, frame["client_id"]):
                return  # over the rate limit: the client was told (rate_limited, or 4429)
        identity = member.identity
        post = stream.new_post(
            member.room,
            frame["message"],
            user=identity.user,
            username=identity.name,
            client_id=frame["client_id"] or "",
        )
        if self.posts is None:
            protocol = getattr(self.send, "__self__", None)  # roomcast serve's, for its drain
            self.posts = PostLine(self._answer_post, getattr(protocol, "hold_drain", None))
        await self.posts.add(member, frame, post)

    def _answer_post(
        self, member: Member, frame: SendMessageFrame, result: StoredMessage | BaseException
    ) -> None:
        """A post's answer, in the order the posts came (post_line): its ack or error."""
        connection = member.connection
        room = member.room if connection.mux else None
        if isinstance(result, BaseException):
            if isinstance(result, RefusedError):
                self._error(result.code, result.detail, frame["client_id"], room)
                return
            logger.error("Storing a post of %s failed", self.label, exc_info=result)
            self._error(
                "internal_error", "The server could not handle this frame; try again.",
                frame["client_id"], room,
            )  # fmt: skip
            return
        if connection.v1:
            ack = codec.ack_event(client_id=frame["client_id"], seq=result.seq, room=room)
            member.send_frame(codec.encode(ack))
        elif result.duplicate:
            # A resent client_id stores and publishes nothing. A seed-dialect client has
            # no ack: seeing its message is its ack, so it gets the stored message's
            # frame again, on this socket alone (docs/protocol.md, "Client frames").
            member.send_frame(result.frame)

    async def _history(self, member: Member, frame: HistoryFrame) -> None:
        if "read" not in member.rights:
            raise PermissionDeniedError("You may not read this room's history.")
        page = await services.ahistory_frame(member.room, frame["before"], frame["limit"])
        member.send_frame(page)

    async def _change(self, member: Member, frame: EditFrame) -> None:
        """An edit or a delete of one of the room's messages (roomcast.edits decides)."""
        if not member.connection.v1:
            raise InvalidFrameRefusal("Edits and deletes need the roomcast.v1 subprotocol.")
        if self.quota is not None and not self.quota.allow_post(member, frame["client_id"]):
            return  # edits count against the post rate: each is a stored event

        client_id = frame["client_id"] or ""
        if frame["message"] is None:
            stored = await edits.adelete_message(
                member.room, frame["seq"], by=member.identity, client_id=client_id
            )
        else:
            stored = await edits.aedit_message(
                member.room, frame["seq"], frame["message"], by=member.identity,
                client_id=client_id,
            )  # fmt: skip
        room = member.room if member.connection.mux else None
        ack = codec.ack_event(client_id=frame["client_id"], seq=stored.seq, room=room)
        member.send_frame(codec.encode(ack))

    def _error(
        self, code: str, detail: str, client_id: str | None = None, room: str | None = None
    ) -> None:
        connection = self.connection
        if connection is None:
            return
        event = codec.error_event(
            code=code, detail=detail, seed=not connection.v1, client_id=client_id, room=room
        )
        connection.send_frame(codec.encode(event))

    async def _on_ping(self, frame: PingFrame) -> None:
        if self.connection is not None:
            self.connection.send_frame(codec.encode(codec.pong_event()))

    async def _on_auth(self, frame: AuthFrame) -> None:
        raise InvalidFrameRefusal(AUTH_FRAME_LATE)


class RoomConsumer(_Socket):
    """One WebSocket in one room: ``/ws/chat/<room>/`` (the seed's URL).

    ``RoomConsumer.as_asgi()`` is the ASGI application, as with Channels' consumers; one
    instance serves one connection: a :class:`~roomcast.connection.Connection` with one
    fixed member. Access is decided once, when it joins (``member.rights``).
    """

    __slots__ = ("member", "room")

    label = "a room socket"

    def __init__(self, scope: dict[str, Any], send: Any) -> None:
        super().__init__(scope, send)
        self.room = ""
        self.member: Member | None = None

    def _read_url(self) -> codec.ConnectQuery:
        query = super()._read_url()
        raw_room = self.scope["url_route"]["kwargs"]["room_name"]
        self.room = codec.validate_room_name(
            raw_room, max_chars=roomcast_settings.ROOM_NAME_MAX_CHARS
        )
        return query

    async def _start(self, identity: Identity) -> bool:
        try:
            self.member = await services.join_room(
                self.room, send=self.send, since=self.since, v1=self.v1, identity=identity
            )
        except PermissionDeniedError as exc:
            # The same answer whether the room exists or not: its existence does not
            # leak (a banned user is told of the ban: services._refusal).
            await self._close(CloseCode.FORBIDDEN, exc.detail)
            return False
        except Exception:
            # The layer or the database is down: tell the client to come back (1011 is a
            # reconnect code) instead of leaving a socket that will never get a message.
            logger.exception("Joining room %r failed", self.room)
            await self._close(CloseCode.INTERNAL_ERROR, "could not join; reconnect")
            return False
        self.connection = self.member.connection
        return True

    def disconnect(self) -> None:
        super().disconnect()
        self.member = None

    def _member(self) -> Member:
        member = self.member
        assert member is not None  # frames are handled once joined
        return member

    async def _on_message(self, frame: SendMessageFrame) -> None:
        await self._post(self._member(), frame)

    async def _on_history(self, frame: HistoryFrame) -> None:
        await self._history(self._member(), frame)

    async def _on_change(self, frame: EditFrame) -> None:
        await self._change(self._member(), frame)

    # Client frames dispatch on their type (like Channels' get_handler_name for events).
    _handlers: dict[str, Callable[..., Awaitable[None]]] = {
        "message": _on_message,
        "history": _on_history,
        "edit": _on_change,
        "delete": _on_change,
        "ping": _Socket._on_ping,
        "auth": _Socket._on_auth,
    }


class NotSubscribedError(RefusedError):
    """A /ws/ frame about a room the connection is not subscribed to."""

    code = "not_subscribed"


class MuxConsumer(_Socket):
    """One WebSocket, many rooms: ``/ws/`` (docs/protocol.md, "One socket, many rooms").

    Speaks roomcast.v1 whatever the client offers. Its rooms are the members of its
    :class:`~roomcast.connection.Connection` (``connection.subs``), joined by
    ``subscribe`` frames with the same access rules, catch-up and recovery as a room
    socket; a logged-in user's connection is also subscribed to the user's own stream
    (``user/<id>``), whose position is the URL's ``since``.
    """

    __slots__ = ("_joining",)

    label = "a /ws/ socket"

    def __init__(self, scope: dict[str, Any], send: Any) -> None:
        super().__init__(scope, send)
        self._joining: set[str] = set()  # rooms whose subscribe is under way

    async def _start(self, identity: Identity) -> bool:
        connection = services.new_connection(self.send, v1=True, identity=identity, mux=True)
        self.connection = connection
        if not identity.authenticated:
            connection.send_frame(codec.encode(codec.connected_event(user=identity.name)))
            return True
        try:
            await services.join_user_stream(connection, self.since)
        except Exception:
            logger.exception("Joining the user stream of %r failed", identity.name)
            self.connection = None
            await self._close(CloseCode.INTERNAL_ERROR, "could not connect; reconnect")
            return False
        return True

    def _room_name(self, frame: Any) -> str:
        try:
            return codec.validate_room_name(
                frame["room"], max_chars=roomcast_settings.ROOM_NAME_MAX_CHARS
            )
        except ProtocolError as exc:
            raise InvalidFrameRefusal(exc.detail) from None

    def _subscribed(self, frame: Any) -> Member:
        """The member of the room ``frame`` names, started; else not_subscribed."""
        connection = self.connection
        assert connection is not None
        room = frame["room"]
        # The name as the client sent it first (the common case); else as normalised
        # (a name that normalises to a subscribed one is the same room).
        member = None if is_user_room(room) else connection.subs.get(room)
        if member is None:
            room = self._room_name(frame)
            member = connection.subs.get(room)
        if member is None or not member.started:
            raise NotSubscribedError(f"Not subscribed to room {room!r}: subscribe first.")
        return member

    async def _on_subscribe(self, frame: SubscribeFrame) -> None:
        connection = self.connection
        assert connection is not None
        raw = frame["room"]
        try:
            room = codec.validate_room_name(raw, max_chars=roomcast_settings.ROOM_NAME_MAX_CHARS)
        except ProtocolError as exc:
            event = codec.unsubscribed_event(
                room=raw, code=exc.close_code or CloseCode.BAD_REQUEST, reason=exc.detail
            )
            connection.send_frame(codec.encode(event))
            return
        if room in connection.subs or room in self._joining:
            raise AlreadySubscribedError(f"Already subscribed to room {room!r}.")
        limit = roomcast_settings.MAX_SUBSCRIPTIONS
        rooms = sum(1 for name in connection.subs if not is_user_room(name))
        if rooms + len(self._joining) >= limit:
            raise TooManySubscriptionsError(
                f"At most {limit} rooms per connection (MAX_SUBSCRIPTIONS); unsubscribe first."
            )
        if not self._request_allowed(room):
            return
        self._joining.add(room)
        try:
            await services.join_room(room, since=frame["since"], connection=connection)
        except PermissionDeniedError as exc:
            self._refused(room, CloseCode.FORBIDDEN, exc.detail)
        except Exception:
            logger.exception("Subscribing to room %r failed", room)
            self._refused(room, CloseCode.INTERNAL_ERROR, "could not join; subscribe again")
        finally:
            self._joining.discard(room)

    def _refused(self, room: str, code: int, reason: str) -> None:
        if self.connection is not None:
            event = codec.unsubscribed_event(room=room, code=code, reason=reason)
            self.connection.send_frame(codec.encode(event))

    async def _on_unsubscribe(self, frame: RoomFrame) -> None:
        member = self._subscribed(frame)
        member.close(CloseCode.NORMAL_CLOSURE, "unsubscribed")

    async def _on_message(self, frame: SendMessageFrame) -> None:
        await self._post(self._subscribed(self._needs_room(frame)), frame)

    async def _on_history(self, frame: HistoryFrame) -> None:
        await self._history(self._subscribed(self._needs_room(frame)), frame)

    async def _on_change(self, frame: EditFrame) -> None:
        await self._change(self._subscribed(self._needs_room(frame)), frame)

    async def _on_typing(self, frame: RoomFrame) -> None:
        member = self._subscribed(frame)
        if "post" not in member.rights:
            raise PermissionDeniedError("You may not post in this room, so not type either.")
        await services.typing(member)

    async def _on_presence(self, frame: RoomFrame) -> None:
        member = self._subscribed(frame)
        if self._request_allowed(member.room):
            member.send_frame(services.presence_frame(member.room))

    def _request_allowed(self, room: str) -> bool:
        """Take a room request from the socket's bucket; if empty, say rate_limited."""
        wait = self.quota.request_wait() if self.quota is not None else 0.0
        if wait and self.connection is not None:
            event = {**limits.rate_limited_event(wait, None, seed=False), "room": room}
            self.connection.send_frame(codec.encode(event))
        return not wait

    async def _on_read(self, frame: ReadFrame) -> None:
        member = self._subscribed(frame)
        if not member.identity.authenticated:
            raise PermissionDeniedError("Guests have no read cursors; log in to keep one.")

        await cursors.amark_read(member.identity, member.room, frame["seq"])

    @staticmethod
    def _needs_room(frame: Any) -> Any:
        if "room" not in frame:
            raise InvalidFrameRefusal(f'A {frame["type"]} frame on /ws/ needs a "room" key.')
        return frame

    _handlers: dict[str, Callable[..., Awaitable[None]]] = {
        "subscribe": _on_subscribe,
        "unsubscribe": _on_unsubscribe,
        "message": _on_message,
        "history": _on_history,
        "edit": _on_change,
        "delete": _on_change,
        "typing": _on_typing,
        "presence": _on_presence,
        "read": _on_read,
        "ping": _Socket._on_ping,
        "auth": _Socket._on_auth,
    }


class InvalidFrameRefusal(RefusedError):
    """A frame that parses but cannot be acted on here (``invalid_frame``)."""

    code = "invalid_frame"


class AlreadySubscribedError(RefusedError):
    """A subscribe to a room the connection is subscribed to (or subscribing to)."""

    code = "already_subscribed"


class TooManySubscriptionsError(RefusedError):
    """A subscribe past ``MAX_SUBSCRIPTIONS``."""

    code = "too_many_subscriptions"


#: Error detail for a /ws/ frame sent on a room socket.
ONLY_ON_WS = "{kind!r} frames are for the multi-room socket /ws/, not a room socket."


#: Close reason (4401) when a socket opened with ``?auth=1`` sends something else first.
AUTH_FRAME_FIRST = "send the auth frame first"
#: Error detail for an auth frame on a socket that has joined already.
AUTH_FRAME_LATE = (
    "The auth frame is the first frame of a socket opened with ?auth=1; "
    "this socket has joined already."
)

# Close tasks started from timer callbacks, referenced until done (asyncio keeps weak refs).
_closing: set[asyncio.Task[None]] = set()


# -- handshakes that reach no room ------------------------------------------------------------

#: ASGI extension (spec 2.4) that lets an application answer a WebSocket handshake with
#: an HTTP response of its own instead of accepting it.
HTTP_RESPONSE_EXTENSION = "websocket.http.response"


async def refuse(scope: dict[str, Any], receive: Any, send: Any, error: ProtocolError) -> None:
    """Answer a WebSocket handshake that cannot be served, with ``error``'s named answer.

    Not found (:class:`NotFoundError`): HTTP 404 with ``error.detail`` as a text body
    where the server offers the ``websocket.http.response`` extension (uvicorn does),
    else accept and close with 4404. Other errors (a bad room name): accept and close
    with their code and the detail as the reason, as the room socket does, since a
    browser shows a script neither the status nor the body of a refused handshake.
    """
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    code = error.close_code or CloseCode.BAD_REQUEST
    if code == CloseCode.NOT_FOUND and HTTP_RESPONSE_EXTENSION in (scope.get("extensions") or {}):
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 404,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": error.detail.encode()})
        return
    subprotocol = PROTOCOL_V1 if PROTOCOL_V1 in (scope.get("subprotocols") or ()) else None
    await send({"type": "websocket.accept", "subprotocol": subprotocol})
    reason = codec.close_reason(error.detail)
    await send({"type": "websocket.close", "code": int(code), "reason": reason})


#: The answer for a path that matches no WebSocket route at all.
NO_ROUTE_DETAIL = (
    "No WebSocket endpoint at this path; rooms are at /ws/chat/<room>/, many rooms at /ws/."
)


async def no_route(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI application for a path no route matched: not found (404 or 4404)."""
    await refuse(scope, receive, send, NotFoundError(NO_ROUTE_DETAIL))


def room_url_error(rest: str) -> ProtocolError:
    """What is wrong with ``/ws/chat/<rest>``, a path under the room prefix that is not
    a room URL (``rest`` percent-decoded, as the route matched it)."""
    if rest.endswith("/") and "/" in rest[:-1]:
        return InvalidRoomNameError("Room names cannot contain '/' (%2F in the URL is one too).")
    if rest == "/":
        return InvalidRoomNameError("The room name is empty.")
    return NotFoundError(
        "No WebSocket endpoint at this path; room URLs end with '/': /ws/chat/<room>/."
    )


async def bad_room_url(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI application for a path under ``ws/chat/`` that names no room: say why."""
    rest = scope.get("url_route", {}).get("kwargs", {}).get("rest", "")
    await refuse(scope, receive, send, room_url_error(str(rest)))
