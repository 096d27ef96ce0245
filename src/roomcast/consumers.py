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

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from . import limits, services
from .conf import roomcast_settings
from .exceptions import RefusedError
from .hub import Member
from .protocol import (
    PROTOCOL_V1,
    CloseCode,
    InvalidRoomNameError,
    NotFoundError,
    ProtocolError,
    codec,
)
from .protocol.messages import HistoryFrame, PingFrame, SendMessageFrame
from .security import SERVER_SEND

logger = logging.getLogger(__name__)


class RoomConsumer:
    """One WebSocket in one room: ``/ws/chat/<room>/`` (the seed's URL).

    ``RoomConsumer.as_asgi()`` is the ASGI application, as with Channels' consumers; one
    instance serves one connection.
    """

    __slots__ = ("member", "quota", "room", "scope", "send", "v1")

    def __init__(self, scope: dict[str, Any], send: Any) -> None:
        self.scope = scope
        # The server's own send when the middleware put it in the scope (fewer wrappers
        # per frame, see security.RoomcastMiddleware), else the one it was given.
        self.send = scope.get(SERVER_SEND) or send
        self.room = ""
        self.member: Member | None = None
        self.quota: limits.Quota | None = None  # rate and socket limits (roomcast.limits)
        self.v1 = PROTOCOL_V1 in (scope.get("subprotocols") or ())

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
        """Validate the URL, accept, then join the room (catch-up first, then live)."""
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
            since = codec.parse_since(self.scope.get("query_string", b""))
            self.quota = limits.admit(self.scope, getattr(self.scope.get("user"), "pk", None))
        except ProtocolError as exc:
            # Accept, then close with the code and reason, so the client can tell why
            # (a refusal before accept reaches a browser as a bare HTTP 403).
            await self.send({"type": "websocket.accept", "subprotocol": subprotocol})
            await self._close(exc.close_code or CloseCode.BAD_REQUEST, exc.detail)
            return
        await self.send({"type": "websocket.accept", "subprotocol": subprotocol})
        try:
            self.member = await services.join_room(
                self.room, send=self.send, since=since, v1=self.v1, user=self.scope.get("user")
            )
        except Exception:
            # The layer or the database is down: tell the client to come back (1011 is a
            # reconnect code) instead of leaving a socket that will never get a message.
            logger.exception("Joining room %r failed", self.room)
            await self._close(CloseCode.INTERNAL_ERROR, "could not join; reconnect")

    def disconnect(self) -> None:
        """Leave the room."""
        if self.quota is not None:
            self.quota.release()
        if self.member is not None:
            self.member.closed = True
            services.leave_room(self.member)
            self.member = None

    async def _close(self, code: int, reason: str) -> None:
        await self.send(
            {"type": "websocket.close", "code": int(code), "reason": codec.close_reason(reason)}
        )

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Parse one client frame and act on it; bad frames get an error event or a close."""
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

    async def _on_message(self, member: Member, frame: SendMessageFrame) -> None:
        if self.quota is not None and not self.quota.allow_post(member, frame["client_id"]):
            return  # over the rate limit: the client was told (rate_limited, or 4429)
        user = self.scope.get("user")
        services.check_can_post(user)
        stored = await services.apost_message(
            self.room, frame["message"], user=user, client_id=frame["client_id"] or ""
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
        member.send_frame(await services.ahistory_frame(self.room, frame["before"], frame["limit"]))

    async def _on_ping(self, member: Member, frame: PingFrame) -> None:
        member.send_frame(codec.encode(codec.pong_event()))

    # Client frames dispatch on their type (like Channels' get_handler_name for events).
    _handlers: dict[str, Callable[..., Awaitable[None]]] = {
        "message": _on_message,
        "history": _on_history,
        "ping": _on_ping,
    }

    @staticmethod
    def _error(member: Member, code: str, detail: str, client_id: str | None = None) -> None:
        event = codec.error_event(code=code, detail=detail, seed=not member.v1, client_id=client_id)
        member.send_frame(codec.encode(event))


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
