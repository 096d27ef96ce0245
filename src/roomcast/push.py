"""Push from anywhere: a view, a management command, a worker thread, async code.

    from roomcast.push import send_to_room
    send_to_room("lobby", "Deploy finished")          # sync: views, commands, threads
    await asend_to_room("lobby", "Deploy finished")   # async twin

A pushed message is a system message stored in the room's stream like any other (it
gets a seq, replays on reconnect, shows in history). Inside ``transaction.atomic()`` it
is published when the transaction commits, and not at all if it rolls back.

Sync calls never start an event loop per call (see ``fanout.run_sync``), so a loop of
ten thousand pushes opens no new connections. With the in-memory channel layer a push
reaches only members connected to the same process: use the Redis layer, or the HTTP
push API (``roomcast push`` does that for you), from another process.
"""

from __future__ import annotations

from typing import Any

from . import fanout, services
from .conf import roomcast_settings
from .models import Message
from .protocol import CloseCode, codec
from .protocol.errors import ProtocolError
from .stream import StoredMessage

__all__ = ["adisconnect", "asend_to_room", "disconnect", "send_to_room"]


def _room(room: str) -> str:
    return codec.validate_room_name(room, max_chars=roomcast_settings.ROOM_NAME_MAX_CHARS)


def _text(text: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("A pushed message needs non-empty text.")
    try:
        codec.check_text(text, "text")  # what a client's frame is held to
    except ProtocolError as exc:
        raise ValueError(exc.detail) from None
    return text


def send_to_room(room: str, text: str, *, user: Any = None) -> StoredMessage:
    """Store ``text`` as a message of ``room`` and publish it to the room's members.

    Args:
        room: the room name (any Unicode text, as in the room's URL).
        text: the message text.
        user: the sender; None (the default) makes it a system message.

    Returns:
        The stored message (``seq`` is its place in the room's stream).

    Raises:
        InvalidRoomNameError: ``room`` cannot name a room.
        SynchronousCallError: called from async code (use :func:`asend_to_room`).

    Once stored, the message is not lost if the channel layer is down: publishing is
    retried in the background, and members fill any gap from the database.
    """
    kind = Message.Kind.SYSTEM if user is None else Message.Kind.CHAT
    return services.post_message(_room(room), _text(text), user=user, kind=kind)


async def asend_to_room(room: str, text: str, *, user: Any = None) -> StoredMessage:
    """Async twin of :func:`send_to_room`."""
    kind = Message.Kind.SYSTEM if user is None else Message.Kind.CHAT
    return await services.apost_message(_room(room), _text(text), user=user, kind=kind)


def _disconnect_message(code: int, reason: str, user_id: int | None) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "room.disconnect", "code": int(code), "reason": reason}
    if user_id is not None:
        message["user_id"] = user_id
    return message


def disconnect(
    room: str, *, user_id: int | None = None, code: int = CloseCode.DISCONNECTED, reason: str = ""
) -> None:
    """Close the sockets of ``room`` (only ``user_id``'s, if given), in every process.

    The default code, 4000, tells clients not to reconnect.
    """
    fanout.run_sync(fanout.publish, _room(room), _disconnect_message(code, reason, user_id))


async def adisconnect(
    room: str, *, user_id: int | None = None, code: int = CloseCode.DISCONNECTED, reason: str = ""
) -> None:
    """Async twin of :func:`disconnect`."""
    await fanout.publish(_room(room), _disconnect_message(code, reason, user_id))
