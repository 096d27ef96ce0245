"""What :mod:`roomcast.client` yields: one frozen dataclass per server frame type.

A room's iterator yields :data:`RoomEvent` objects, ``conn.user_messages()`` yields
:data:`UserEvent` objects. Each class is named after the frame's ``type``
(``"presence_count"`` -> :class:`PresenceCount`) and keeps the frame it came from in
``raw`` (fields a newer server adds are there). One is made by the client itself:
:class:`Lagged` (events were dropped because nobody read them).

Parsing never raises: a frame that does not have the fields its type needs is not an
event (:func:`room_event` and :func:`user_event` return None) and the client logs it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, ClassVar

__all__ = [
    "Connected",
    "Delete",
    "Edit",
    "HistoryPage",
    "Join",
    "Joined",
    "Lagged",
    "Leave",
    "Message",
    "Presence",
    "PresenceCount",
    "RoomEvent",
    "Typing",
    "Unread",
    "UserEvent",
    "UserMessage",
]

#: Largest seq the server stores (a 64-bit signed column): larger numbers are not seqs.
SEQ_MAX = 2**63 - 1


@dataclass(frozen=True, kw_only=True, slots=True)
class _Event:
    #: The wire frame's ``type``.
    type: ClassVar[str]
    #: The frame as the server sent it (empty for events the client makes).
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class Joined(_Event):
    """The subscription is live (again): sent after every subscribe, also after a
    reconnect. ``seq`` is the room's position once the catch-up that follows is
    delivered. ``recovered`` is True when the catch-up holds exactly what was missed,
    None on a first subscribe without ``since``, and **False when the gap could not be
    replayed: discard what you showed of this room and start over** from the catch-up
    that follows (the latest messages). ``read_seq`` / ``unread``: the user's read
    cursor (None for guests)."""

    type: ClassVar[str] = "joined"
    room: str
    seq: int
    recovered: bool | None
    read_seq: int | None = None
    unread: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Message(_Event):
    """A message of the room: live, from the catch-up, or in a history page.

    ``seq`` is None only for ephemeral frames (never stored, never replayed).
    ``kind`` is ``"chat"`` or ``"system"``; ``user`` is None for system messages.
    ``edited`` is when it was last edited (its final state is shown); ``deleted`` marks a
    tombstone (``text`` is empty).
    """

    type: ClassVar[str] = "message"
    room: str
    seq: int | None
    text: str
    kind: str = "chat"
    user: str | None = None
    ts: datetime | None = None
    client_id: str | None = None
    edited: datetime | None = None
    deleted: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Edit(_Event):
    """The message ``target`` now reads ``text``; a stream event with its own ``seq``.
    ``deleted``: the target was deleted since, and this edit's text with it (``text``
    is empty; the :class:`Delete` follows)."""

    type: ClassVar[str] = "edit"
    room: str
    seq: int
    target: int
    text: str
    user: str | None = None
    ts: datetime | None = None
    client_id: str | None = None
    deleted: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Delete(_Event):
    """The message ``target`` was deleted; a stream event with its own ``seq``."""

    type: ClassVar[str] = "delete"
    room: str
    seq: int
    target: int
    user: str | None = None
    ts: datetime | None = None
    client_id: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Typing(_Event):
    """``user`` is typing in the room (the server forwards this at most every
    ``TYPING_INTERVAL_SECS``, 2 s, per user)."""

    type: ClassVar[str] = "typing"
    room: str
    user: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Presence(_Event):
    """Who is in the room now: ``users`` maps each listed user to their number of
    connections; ``count`` users in all (more than listed when ``truncated``),
    ``anonymous`` guests."""

    type: ClassVar[str] = "presence"
    room: str
    users: Mapping[str, int]
    count: int
    anonymous: int = 0
    truncated: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Join(_Event):
    """``user``'s first connection to the room arrived."""

    type: ClassVar[str] = "join"
    room: str
    user: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Leave(_Event):
    """``user``'s last connection to the room went."""

    type: ClassVar[str] = "leave"
    room: str
    user: str


@dataclass(frozen=True, kw_only=True, slots=True)
class PresenceCount(_Event):
    """How many users (``count``) and guests (``anonymous``) are in a room too big for
    join / leave events."""

    type: ClassVar[str] = "presence_count"
    room: str
    count: int
    anonymous: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class Unread(_Event):
    """The user's read cursor in the room moved (here or on another device)."""

    type: ClassVar[str] = "unread"
    room: str
    read_seq: int
    unread: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Lagged(_Event):
    """Made by the client: ``dropped`` events (the oldest) were discarded because the
    program did not read them and the queue was full. Treat it as a
    ``recovered=False``: reload what you show (``await room.history()``). ``room`` is
    None in ``user_messages()``."""

    type: ClassVar[str] = "lagged"
    room: str | None
    dropped: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Connected(_Event):
    """The connection is open (again), as ``user`` (a guest's name for a guest).
    ``user_seq`` is the position in the user channel after its catch-up (None for
    guests, who have none). ``recovered`` as in :class:`Joined`: **False means user
    messages were missed that cannot be replayed**."""

    type: ClassVar[str] = "connected"
    user: str
    user_seq: int | None
    recovered: bool | None


@dataclass(frozen=True, kw_only=True, slots=True)
class UserMessage(_Event):
    """A message to this user alone (``roomcast.push.send_to_user``): ``text`` for
    text, ``data`` for anything else JSON carries (exactly one is not None)."""

    type: ClassVar[str] = "user_message"
    seq: int
    text: str | None = None
    data: Any = None
    ts: datetime | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class HistoryPage:
    """A page of a room's stream, oldest first: messages in their final state and the
    edit / delete events, in seq order. ``has_more``: older ones exist (ask again with
    ``before=`` the first one's seq)."""

    room: str
    messages: list[Message | Edit | Delete]
    has_more: bool


RoomEvent = (
    Joined | Message | Edit | Delete | Typing | Presence | Join | Leave | PresenceCount | Unread
    | Lagged
)  # fmt: skip
UserEvent = Connected | UserMessage | Lagged


# -- parsing ------------------------------------------------------------------------------


class _Bad(Exception):
    """A field is missing or of the wrong type."""


def _seq(frame: Mapping[str, Any], key: str, *, optional: bool = False) -> int | None:
    value = frame.get(key)
    if value is None and optional:
        return None
    if type(value) is not int or not 0 <= value <= SEQ_MAX:
        raise _Bad(key)
    return value


def _req_seq(frame: Mapping[str, Any], key: str) -> int:
    value = _seq(frame, key)
    if value is None:  # pragma: no cover - _seq raises first
        raise _Bad(key)
    return value


def _count(frame: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = frame.get(key, default)
    if type(value) is not int or value < 0:
        raise _Bad(key)
    return value


def _text(frame: Mapping[str, Any], key: str) -> str:
    value = frame.get(key)
    if not isinstance(value, str):
        raise _Bad(key)
    return value


def _opt_text(frame: Mapping[str, Any], key: str) -> str | None:
    value = frame.get(key)
    if value is not None and not isinstance(value, str):
        raise _Bad(key)
    return value


def _recovered(frame: Mapping[str, Any]) -> bool | None:
    value = frame.get("recovered")
    if value is not None and not isinstance(value, bool):
        raise _Bad("recovered")
    return value


def _time(value: object) -> datetime | None:
    """An ISO 8601 time (``2026-11-25T09:30:00.123Z``), or None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def message(frame: Mapping[str, Any], room: str) -> Message | Edit | Delete:
    """A ``message``, ``edit`` or ``delete`` frame of ``room`` as an event.

    Raises:
        ValueError: the frame lacks a field its type needs.
    """
    try:
        kind = frame.get("type", "message")
        if kind == "edit":
            return Edit(
                room=room,
                seq=_req_seq(frame, "seq"),
                target=_req_seq(frame, "target"),
                text=_text(frame, "message"),
                user=_opt_text(frame, "user"),
                ts=_time(frame.get("ts")),
                client_id=_opt_text(frame, "client_id") or None,
                deleted=frame.get("deleted") is True,
                raw=frame,
            )
        if kind == "delete":
            return Delete(
                room=room,
                seq=_req_seq(frame, "seq"),
                target=_req_seq(frame, "target"),
                user=_opt_text(frame, "user"),
                ts=_time(frame.get("ts")),
                client_id=_opt_text(frame, "client_id") or None,
                raw=frame,
            )
        if kind != "message":
            raise _Bad("type")
        return Message(
            room=room,
            seq=_seq(frame, "seq", optional=True),
            text=_text(frame, "message"),
            kind=str(frame["kind"]) if isinstance(frame.get("kind"), str) else "chat",
            user=_opt_text(frame, "user"),
            ts=_time(frame.get("ts")),
            client_id=_opt_text(frame, "client_id") or None,
            edited=_time(frame.get("edited")),
            deleted=frame.get("deleted") is True,
            raw=frame,
        )
    except _Bad as exc:
        raise ValueError(f"a {frame.get('type')!r} frame without a valid {exc}") from None


def room_event(frame: Mapping[str, Any]) -> RoomEvent | None:
    """The event of a server frame about a room (it has ``"room"``), or None if the
    frame is not one this client knows or lacks a field."""
    room = frame.get("room")
    kind = frame.get("type")
    if not isinstance(room, str):
        return None
    try:
        if kind in ("message", "edit", "delete"):
            return message(frame, room)
        if kind == "joined":
            return Joined(
                room=room,
                seq=_req_seq(frame, "seq"),
                recovered=_recovered(frame),
                read_seq=_seq(frame, "read_seq", optional=True),
                unread=_count(frame, "unread") if frame.get("unread") is not None else None,
                raw=frame,
            )
        if kind == "typing":
            return Typing(room=room, user=_text(frame, "user"), raw=frame)
        if kind == "presence":
            return _presence(frame, room)
        if kind == "join":
            return Join(room=room, user=_text(frame, "user"), raw=frame)
        if kind == "leave":
            return Leave(room=room, user=_text(frame, "user"), raw=frame)
        if kind == "presence_count":
            return PresenceCount(
                room=room,
                count=_count(frame, "count"),
                anonymous=_count(frame, "anonymous"),
                raw=frame,
            )
        if kind == "unread":
            return Unread(
                room=room,
                read_seq=_req_seq(frame, "read_seq"),
                unread=_count(frame, "unread"),
                raw=frame,
            )
    except (_Bad, ValueError):
        return None
    return None


def _presence(frame: Mapping[str, Any], room: str) -> Presence:
    users: dict[str, int] = {}
    listed = frame.get("users")
    if not isinstance(listed, list):
        raise _Bad("users")
    for entry in listed:
        if not isinstance(entry, dict):
            raise _Bad("users")
        users[_text(entry, "user")] = _count(entry, "connections", 1)
    return Presence(
        room=room,
        users=MappingProxyType(users),
        count=_count(frame, "count", len(users)),
        anonymous=_count(frame, "anonymous"),
        truncated=frame.get("truncated") is True,
        raw=frame,
    )


def user_event(frame: Mapping[str, Any]) -> Connected | UserMessage | None:
    """The event of a ``connected`` or ``user_message`` frame, or None."""
    try:
        if frame.get("type") == "connected":
            return Connected(
                user=_text(frame, "user"),
                user_seq=_seq(frame, "user_seq", optional=True),
                recovered=_recovered(frame),
                raw=frame,
            )
        if frame.get("type") == "user_message":
            text = _opt_text(frame, "message")
            return UserMessage(
                seq=_req_seq(frame, "seq"),
                text=text,
                data=frame.get("data") if text is None else None,
                ts=_time(frame.get("ts")),
                raw=frame,
            )
    except _Bad:
        return None
    return None


def retry_after(frame: Mapping[str, Any]) -> float | None:
    """The ``retry_after`` of an error frame, in seconds, if it is a sane number."""
    value = frame.get("retry_after")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return max(0.0, float(value))
    return None
