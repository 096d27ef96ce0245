"""Server frames of the stored stream's newer events: edits, deletes, a message's final
state, the user channel and read cursors. Pure functions, standard library only.

Forbidden imports: Django, Channels, asyncio, anything that does I/O.

Every builder returns a dict whose first key is ``type`` (the hub tells frames apart by
their first bytes, ``{"type":"edit"``, without decoding them); ``codec.encode`` makes
the frame's text.
"""

from __future__ import annotations

import json
from typing import Any, Literal, NotRequired, TypedDict, cast

from . import codec
from .codec import message_event
from .messages import MessageEvent, MessageKind

__all__ = [
    "DeleteEvent",
    "EditEvent",
    "StreamEvent",
    "UnreadEvent",
    "UserMessageEvent",
    "delete_event",
    "edit_event",
    "encode",
    "final_message_event",
    "unread_event",
    "user_message_event",
]


class EditEvent(TypedDict):
    """Message ``target`` of the room now reads ``message`` (a stream event: ``seq``)."""

    type: Literal["edit"]
    room: str
    seq: int
    target: int
    message: str
    user: str | None  # who edited it: the author, a moderator, or null for the site
    ts: str
    client_id: NotRequired[str]
    deleted: NotRequired[bool]  # the target was deleted since: ``message`` is ""


class DeleteEvent(TypedDict):
    """Message ``target`` of the room was deleted (a stream event: ``seq``)."""

    type: Literal["delete"]
    room: str
    seq: int
    target: int
    user: str | None
    ts: str
    client_id: NotRequired[str]


class UserMessageEvent(TypedDict):
    """A message of the user's own channel: ``message`` (text) or ``data`` (any JSON)."""

    type: Literal["user_message"]
    seq: int
    message: NotRequired[str]
    data: NotRequired[Any]
    ts: str


class UnreadEvent(TypedDict):
    """The user's read cursor in ``room`` is at ``read_seq``; ``unread`` messages follow."""

    type: Literal["unread"]
    room: str
    read_seq: int
    unread: int


def final_message_event(
    *,
    room: str,
    text: str,
    kind: MessageKind,
    user: str | None,
    ts: str,
    seq: int,
    client_id: str | None = None,
    edited: str | None = None,
    deleted: bool = False,
) -> MessageEvent | dict[str, Any]:
    """A stored message in its final state: ``edited`` (the last edit's time) adds
    ``"edited": TS``; ``deleted`` makes it a tombstone, ``"deleted": true`` and no text."""
    event: dict[str, Any] = dict(
        message_event(
            room=room,
            text="" if deleted else text,
            kind=kind,
            user=user,
            ts=ts,
            seq=seq,
            client_id=client_id,
        )
    )
    if deleted:
        event["deleted"] = True
    elif edited is not None:
        event["edited"] = edited
    return event


def edit_event(
    *,
    room: str,
    seq: int,
    target: int,
    text: str,
    user: str | None,
    ts: str,
    client_id: str | None = None,
    deleted: bool = False,
) -> EditEvent:
    """The edit stored as ``seq``; ``deleted``: its target was deleted since, and the
    edit's text went with it."""
    event = EditEvent(
        type="edit",
        room=room,
        seq=seq,
        target=target,
        message="" if deleted else text,
        user=user,
        ts=ts,
    )
    if client_id:
        event["client_id"] = client_id
    if deleted:
        event["deleted"] = True
    return event


def delete_event(
    *, room: str, seq: int, target: int, user: str | None, ts: str, client_id: str | None = None
) -> DeleteEvent:
    """The delete stored as ``seq``."""
    event = DeleteEvent(type="delete", room=room, seq=seq, target=target, user=user, ts=ts)
    if client_id:
        event["client_id"] = client_id
    return event


def user_message_event(
    *, seq: int, ts: str, text: str | None = None, data_json: str | None = None
) -> UserMessageEvent:
    """A message of the user channel: ``text``, or ``data_json`` (the JSON text of the
    data, as stored) decoded into ``data``."""
    # Keys in the documented order: type, seq, message | data, ts.
    if data_json is not None:
        return UserMessageEvent(type="user_message", seq=seq, data=json.loads(data_json), ts=ts)
    return UserMessageEvent(type="user_message", seq=seq, message=text or "", ts=ts)


def unread_event(*, room: str, read_seq: int, unread: int) -> UnreadEvent:
    """The user's cursor in ``room`` (ephemeral: no seq)."""
    return UnreadEvent(type="unread", room=room, read_seq=read_seq, unread=unread)


StreamEvent = EditEvent | DeleteEvent | UserMessageEvent | UnreadEvent


def encode(event: StreamEvent | MessageEvent | dict[str, Any]) -> str:
    """The frame's text: :func:`codec.encode` for these events too."""
    return codec.encode(cast("dict[str, Any]", event))
