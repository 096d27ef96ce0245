"""Transport: the WebSocket consumer. Accept, close with named codes, hand frames on.

Layer: consumer. Calls ``protocol`` to read frames and ``services`` to act on them;
never touches ``Model.objects`` or the channel layer. Only ``routing`` imports it.

Outgoing frames never pass through Channels' per-message dispatch: the hub writes
them to the socket's buffer directly (Channels 4.2+ runs ``aclose_old_connections``,
a thread round trip, before every handler call; paying that per member per message was
a third of the tutorial's server time).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import ClassVar, cast

from channels.generic.websocket import AsyncWebsocketConsumer

from . import services
from .conf import roomcast_settings
from .exceptions import PermissionDeniedError
from .fanout import NO_LAYER_ALIAS
from .hub import Member, Send
from .protocol import PROTOCOL_V1, CloseCode, ProtocolError, codec
from .protocol.messages import HistoryFrame, PingFrame, SendMessageFrame

logger = logging.getLogger(__name__)

#: Scope key of the server's unwrapped ``send`` (``routing.server_send_in_scope``). When
#: present, the room's frames are written with it; else through the consumer's ``send``.
SERVER_SEND = "roomcast.server_send"


class RoomConsumer(AsyncWebsocketConsumer):
    """One WebSocket in one room: ``/ws/chat/<room>/`` (the seed's URL)."""

    # No layer channel per socket: the hub receives for the whole process.
    channel_layer_alias = NO_LAYER_ALIAS

    member: Member | None = None
    room: str = ""

    async def connect(self) -> None:
        """Validate the URL, accept, then join the room (catch-up first, then live)."""
        offered = self.scope.get("subprotocols") or []
        v1 = PROTOCOL_V1 in offered
        try:
            raw_room = self.scope["url_route"]["kwargs"]["room_name"]
            self.room = codec.validate_room_name(
                raw_room, max_chars=roomcast_settings.ROOM_NAME_MAX_CHARS
            )
            since = codec.parse_since(self.scope.get("query_string", b""))
        except ProtocolError as exc:
            # Accept, then close with the code and reason, so the client can tell why
            # (a refusal before accept reaches a browser as a bare HTTP 403).
            await self.accept(PROTOCOL_V1 if v1 else None)
            await self.close(code=exc.close_code, reason=exc.detail[:120])
            return
        await self.accept(PROTOCOL_V1 if v1 else None)
        try:
            self.member = await services.join_room(
                self.room,
                send=cast(Send, self.scope.get(SERVER_SEND) or self.base_send),
                since=since,
                v1=v1,
                user=self.scope.get("user"),
            )
        except Exception:
            # The layer or the database is down: tell the client to come back (1011 is a
            # reconnect code) instead of leaving a socket that will never get a message.
            logger.exception("Joining room %r failed", self.room)
            await self.close(code=CloseCode.INTERNAL_ERROR, reason="could not join; reconnect")

    async def disconnect(self, code: int) -> None:
        """Leave the room."""
        if self.member is not None:
            self.member.closed = True
            services.leave_room(self.member)
            self.member = None

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
                member.close(exc.close_code, exc.detail[:120])
            else:
                self._error(member, exc.code, exc.detail)
            return
        try:
            await self._handlers[frame["type"]](self, member, frame)
        except PermissionDeniedError as exc:
            self._error(member, exc.code, exc.detail)
        except Exception:
            logger.exception("Handling a %r frame in room %r failed", frame["type"], self.room)
            self._error(
                member, "internal_error", "The server could not handle this frame; try again."
            )

    async def _on_message(self, member: Member, frame: SendMessageFrame) -> None:
        user = self.scope.get("user")
        services.check_can_post(user)
        stored = await services.apost_message(
            self.room, frame["message"], user=user, client_id=frame["client_id"] or ""
        )
        if member.v1:
            member.send_frame(
                codec.encode(codec.ack_event(client_id=frame["client_id"], seq=stored.seq))
            )

    async def _on_history(self, member: Member, frame: HistoryFrame) -> None:
        member.send_frame(await services.ahistory_frame(self.room, frame["before"], frame["limit"]))

    async def _on_ping(self, member: Member, frame: PingFrame) -> None:
        member.send_frame(codec.encode(codec.pong_event()))

    # Client frames dispatch on their type (like Channels' get_handler_name for events).
    _handlers: ClassVar[dict[str, Callable[..., Awaitable[None]]]] = {
        "message": _on_message,
        "history": _on_history,
        "ping": _on_ping,
    }

    @staticmethod
    def _error(member: Member, code: str, detail: str) -> None:
        event = codec.error_event(code=code, detail=detail, seed=not member.v1)
        member.send_frame(codec.encode(event))
