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

from . import limits, security, services
from .access import Identity
from .conf import roomcast_settings
from .exceptions import PermissionDeniedError, RefusedError
from .hub import Member
from .protocol import (
    PROTOCOL_V1,
    CloseCode,
    FrameTooLargeError,
    InvalidRoomNameError,
    NotFoundError,
    ProtocolError,
    codec,
)
from .protocol.messages import AuthFrame, HistoryFrame, PingFrame, SendMessageFrame
from .security import SERVER_SEND

logger = logging.getLogger(__name__)


class RoomConsumer:
    """One WebSocket in one room: ``/ws/chat/<room>/`` (the seed's URL).

    ``RoomConsumer.as_asgi()`` is the ASGI application, as with Channels' consumers; one
    instance serves one connection.

    A connection goes through phases: ``connecting`` (the URL is read, the socket
    accepted and who it is resolved, see ``security``), ``auth`` (opened with
    ``?auth=1``: waiting at most ``HANDSHAKE_TIMEOUT_SECS`` for the auth frame),
    ``joined`` (a member of its room: frames are handled), ``closed``. Access is decided
    once, when it joins (``member.rights``); a socket with a token is closed with 4501
    when the token expires, by a timer, whether or not it sends anything.
    """

    __slots__ = (
        "expiry",
        "member",
        "phase",
        "quota",
        "room",
        "scope",
        "send",
        "since",
        "v1",
        "waiting",
    )

    def __init__(self, scope: dict[str, Any], send: Any) -> None:
        self.scope = scope
        # The server's own send when the middleware put it in the scope (fewer wrappers
        # per frame, see security.RoomcastMiddleware), else the one it was given.
        self.send = scope.get(SERVER_SEND) or send
        self.room = ""
        self.member: Member | None = None
        self.quota: limits.Quota | None = None  # rate and socket limits (roomcast.limits)
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
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    await self.receive(message.get("text"), message.get("bytes"))
                elif kind == "websocket.connect":
                    await self.connect()
                elif kind == "websocket.disconnect":
                    return
        finally:
            self.disconnect()

    async def connect(self) -> None:
        """Validate the URL, accept, find out who the client is, then join the room
        (catch-up first, then live)."""
        subprotocol = PROTOCOL_V1 if self.v1 else None
        try:
            raw_path = self.scope.get("raw_path")
            if isinstance(raw_path, bytes):
                # The server's "path" has %XX bytes that are not UTF-8 decoded to U+FFFD
                # (validate_room_name refuses that too); the raw bytes say exactly why.
                codec.check_path_encoding(raw_path)
            raw_room = self.scope["url_route"]["kwargs"]["room_name"]
            self.room = codec.validate_room_name(
                raw_room, max_chars=roomcast_settings.ROOM_NAME_MAX_CHARS
            )
            query = codec.parse_connect_query(self.scope.get("query_string", b""))
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
            logger.exception("Reading the session of a socket of room %r failed", self.room)
            await self._close(CloseCode.INTERNAL_ERROR, "could not join; reconnect")
            return
        await self._join(identity)

    async def _join(self, identity: Identity) -> None:
        self.phase = "joining"
        try:  # sockets per user and per address (roomcast.limits), now that we know who
            self.quota = limits.admit(self.scope, identity.user_id)
        except limits.TooManySocketsError as exc:
            await self._close(exc.close_code or CloseCode.TOO_MANY, exc.detail)
            return
        try:
            self.member = await services.join_room(
                self.room, send=self.send, since=self.since, v1=self.v1, identity=identity
            )
        except PermissionDeniedError:
            # The same answer whether the room exists or not: its existence does not leak.
            await self._close(CloseCode.FORBIDDEN, services.NOT_ALLOWED_REASON)
            return
        except Exception:
            # The layer or the database is down: tell the client to come back (1011 is a
            # reconnect code) instead of leaving a socket that will never get a message.
            logger.exception("Joining room %r failed", self.room)
            await self._close(CloseCode.INTERNAL_ERROR, "could not join; reconnect")
            return
        self.phase = "joined"
        if identity.expires_at is not None:
            delay = max(0.0, identity.expires_at - time.time())
            self.expiry = asyncio.get_running_loop().call_later(delay, self._token_expired)

    def _token_expired(self) -> None:
        self.expiry = None
        if self.member is not None:
            self.member.close(CloseCode.TOKEN_EXPIRED, security.TOKEN_EXPIRED_REASON)

    def _no_auth_frame(self) -> None:
        self.waiting = None
        if self.phase == "auth":
            seconds = roomcast_settings.HANDSHAKE_TIMEOUT_SECS
            reason = f"send the auth frame first (none came within {seconds:g} s)"
            task = asyncio.ensure_future(self._close(CloseCode.UNAUTHORIZED, reason))
            _closing.add(task)
            task.add_done_callback(_closing.discard)

    def disconnect(self) -> None:
        """Leave the room; stop the timers; release the socket's quota."""
        self.phase = "closed"
        for timer in (self.waiting, self.expiry):
            if timer is not None:
                timer.cancel()
        self.waiting = self.expiry = None
        if self.quota is not None:
            self.quota.release()
            self.quota = None
        if self.member is not None:
            self.member.closed = True
            services.leave_room(self.member)
            self.member = None

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
            # server first (a second close is a RuntimeError), as in hub.Member.close.
            logger.debug("Socket of room %r was gone before its close", self.room)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Parse one client frame and act on it; bad frames get an error event or a close."""
        if self.phase == "auth":
            await self._authenticate(text_data, bytes_data)
            return
        member = self.member
        if member is None or member.closed:
            return
        try:
            frame = codec.parse_frame(
                text_data, bytes_data, max_bytes=roomcast_settings.MAX_FRAME_BYTES
            )
        except ProtocolError as exc:
            if exc.close_code is not None:
                member.close(exc.close_code, codec.close_reason(exc.detail))
            else:
                self._error(member, exc.code, exc.detail)
            return
        client_id = frame.get("client_id")
        client_id = client_id if isinstance(client_id, str) else None
        try:
            await self._handlers[frame["type"]](self, member, frame)
        except RefusedError as exc:
            self._error(member, exc.code, exc.detail, client_id)
        except Exception:
            logger.exception("Handling a %r frame in room %r failed", frame["type"], self.room)
            self._error(
                member,
                "internal_error",
                "The server could not handle this frame; try again.",
                client_id,
            )

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
            await self._join(identity)

    async def _on_message(self, member: Member, frame: SendMessageFrame) -> None:
        if "post" not in member.rights:
            raise PermissionDeniedError(
                "You may not post in this room."
                if member.identity.authenticated
                else "Log in to post in this room."
            )
        if self.quota is not None and not self.quota.allow_post(member, frame["client_id"]):
            return  # over the rate limit: the client was told (rate_limited, or 4429)
        identity = member.identity
        stored = await services.apost_message(
            self.room,
            frame["message"],
            user=identity.user,
            username=identity.name,
            client_id=frame["client_id"] or "",
        )
        if member.v1:
            member.send_frame(
                codec.encode(codec.ack_event(client_id=frame["client_id"], seq=stored.seq))
            )
        elif stored.duplicate:
            # A resent client_id stores and publishes nothing. A seed-dialect client has
            # no ack: seeing its message is its ack, so it gets the stored message's
            # frame again, on this socket alone (docs/protocol.md, "Client frames").
            member.send_frame(stored.frame)

    async def _on_history(self, member: Member, frame: HistoryFrame) -> None:
        if "read" not in member.rights:
            raise PermissionDeniedError("You may not read this room's history.")
        member.send_frame(await services.ahistory_frame(self.room, frame["before"], frame["limit"]))

    async def _on_ping(self, member: Member, frame: PingFrame) -> None:
        member.send_frame(codec.encode(codec.pong_event()))

    async def _on_auth(self, member: Member, frame: AuthFrame) -> None:
        self._error(member, "invalid_frame", AUTH_FRAME_LATE)

    # Client frames dispatch on their type (like Channels' get_handler_name for events).
    _handlers: dict[str, Callable[..., Awaitable[None]]] = {
        "message": _on_message,
        "history": _on_history,
        "ping": _on_ping,
        "auth": _on_auth,
    }

    @staticmethod
    def _error(member: Member, code: str, detail: str, client_id: str | None = None) -> None:
        event = codec.error_event(code=code, detail=detail, seed=not member.v1, client_id=client_id)
        member.send_frame(codec.encode(event))


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
NO_ROUTE_DETAIL = "No WebSocket endpoint at this path; rooms are at /ws/chat/<room>/."


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
