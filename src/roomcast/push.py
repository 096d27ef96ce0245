"""Push from anywhere: a view, a management command, a worker thread, async code.

    from roomcast.push import send_to_room
    send_to_room("lobby", "Deploy finished")          # sync: views, commands, threads
    await asend_to_room("lobby", "Deploy finished")   # async twin

A pushed message is a system message stored in the room's stream like any other (it
gets a seq, replays on reconnect, shows in history). Inside ``transaction.atomic()`` it
is published when the transaction commits, and not at all if it rolls back.

A user's own channel works alike: ``send_to_user(user, "your export is ready")`` (or
any JSON data) stores the message in the user's stream, ``user/<id>``, and every
``/ws/`` socket of the user, on every process, gets it as a ``user_message`` frame; a
socket that reconnects with ``since`` gets what it missed.

Edits and deletes of room messages as the site (always allowed): ``edit_message`` and
``delete_message`` (see :mod:`roomcast.edits`, which also takes a user's identity).

Sync calls never start an event loop per call (see ``fanout.run_sync``), so a loop of
ten thousand pushes opens no new connections. With the in-memory channel layer a push
reaches only members connected to the same process: use the Redis layer, or the HTTP
push API (``roomcast push`` does that for you), from another process.
"""

from __future__ import annotations

import json
from typing import Any

from channels.db import database_sync_to_async

from . import fanout, services
from .conf import roomcast_settings
from .edits import StoredChange, adelete_message, aedit_message, delete_message, edit_message
from .models import Message, Room
from .protocol import CloseCode, codec
from .protocol.errors import ProtocolError
from .rooms import UserNotFoundError, get_user
from .stream import StoredMessage

__all__ = [
    "StoredChange",
    "StoredMessage",
    "UserNotFoundError",
    "adelete_message",
    "adisconnect",
    "aedit_message",
    "asend_to_room",
    "asend_to_user",
    "delete_message",
    "disconnect",
    "edit_message",
    "send_to_room",
    "send_to_user",
]


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


# -- a user's own channel ---------------------------------------------------------------------


def _payload(text_or_data: Any, as_data: bool) -> tuple[str, str]:
    """(kind, stored text) of a user message: text as a system message, anything else
    as its JSON text (kind ``data``); either at most ``MAX_FRAME_BYTES`` of UTF-8."""
    limit = roomcast_settings.MAX_FRAME_BYTES
    if isinstance(text_or_data, str) and not as_data:
        kind, text = Message.Kind.SYSTEM, _text(text_or_data)
    else:
        try:
            text = json.dumps(
                text_or_data, ensure_ascii=False, allow_nan=False, separators=(",", ":")
            )
        except (TypeError, ValueError, RecursionError) as exc:
            raise ValueError(f"A user message's data must be JSON-serialisable: {exc}") from None
        try:
            codec.check_text(text, "data")
        except ProtocolError as exc:
            raise ValueError(exc.detail) from None
        kind = Message.Kind.DATA
    if len(text.encode("utf-8")) > limit:
        raise ValueError(f"A user message is limited to {limit} bytes (MAX_FRAME_BYTES).")
    return kind, text


def _user_stream(user: Any) -> str:
    """The stream of ``user`` (a user object, a username or an id), its room row made
    (private: nobody may join it as a room) if it has none yet."""
    found = get_user(user)
    name = fanout.user_room(found.pk)
    Room.objects.get_or_create(name=name, defaults={"visibility": Room.Visibility.PRIVATE})
    return name


def send_to_user(user: Any, text_or_data: Any, *, as_data: bool = False) -> StoredMessage:
    """Store a message in ``user``'s own channel and publish it to their ``/ws/`` sockets.

    Args:
        user: a user object, a username or a user's primary key.
        text_or_data: a text (a ``user_message`` frame's ``message``), or anything else
            JSON can carry (its ``data``), at most ``MAX_FRAME_BYTES`` once encoded.
        as_data: send a str as ``data`` too (the HTTP API's ``{"data": "..."}``).

    Returns:
        The stored message: ``seq`` is its place in the user's stream (counted per user).

    Raises:
        UserNotFoundError: no such user.
        ValueError: empty text, data JSON cannot carry, or too large.
        SynchronousCallError: called from async code (use :func:`asend_to_user`).

    Inside ``transaction.atomic()`` it is published when the block commits.
    """
    kind, text = _payload(text_or_data, as_data)
    return services.post_message(_user_stream(user), text, kind=kind)


async def asend_to_user(user: Any, text_or_data: Any, *, as_data: bool = False) -> StoredMessage:
    """Async twin of :func:`send_to_user`."""
    kind, text = _payload(text_or_data, as_data)
    room = await database_sync_to_async(_user_stream)(user)
    return await services.apost_message(room, text, kind=kind)
