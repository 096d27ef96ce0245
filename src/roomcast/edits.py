"""Edits and deletes: stream events that change a stored message.

Layer: services (domain). Stores through the models and publishes through ``fanout``;
never touches a socket.

An edit or a delete is stored as a new message of the room's stream (kind ``edit`` or
``delete``, naming the message it changes by ``target_seq``) with the room's next seq,
taken as posting takes it (``stream.take_seq``: the room's row lock), in the transaction
that also changes the target's row to its final state: new text and ``edited_at``, or
no text and ``deleted_at`` (and the edit events of a deleted message lose their text
too: a deleted message's words are gone from the database, not only from the page).
Live v1 members get the event (``edit`` / ``delete`` frame) once it commits; a client
that reconnects with ``since`` replays it; history shows each message's final state.

Who may (:func:`edit_message` / :func:`delete_message`, ``by``):

* ``None``: the site itself (an API key, the Django admin, Python code): always.
* the author (``by.user_id`` is the message's user) within ``EDIT_WINDOW_SECS`` of
  posting (0: never), while they may still ``post`` in the room;
* a moderator: whom the access policy lets ``moderate`` the room (the built-in policy:
  staff, superusers and the room's admins), at any time.

Guests' messages have no user, so no guest edits: only moderators change them. System
messages likewise. A user channel's messages (``user/<id>``) are not edited here.

Idempotent by ``client_id`` as posts are: a client that sends an edit again after a
reconnect gets the stored event back (``duplicate``), and nothing new is stored or
published. A ``client_id`` is one per room across posts, edits and deletes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from channels.db import database_sync_to_async
from django.db import IntegrityError, connections, router, transaction
from django.utils import timezone

from . import access, fanout
from .conf import roomcast_settings
from .exceptions import MessageNotFoundError, PermissionDeniedError
from .models import Message
from .protocol import InvalidFrameError, codec
from .stream import FRAME_FIELDS, USERNAME_MAX_CHARS, StoredMessage, message_frame, take_seq

__all__ = [
    "StoredChange",
    "adelete_message",
    "aedit_message",
    "check_text",
    "delete_message",
    "edit_message",
    "layer_message",
]

#: Kinds of message an edit or delete may target: not the events themselves, nor a user
#: channel's data.
CHANGEABLE_KINDS = (Message.Kind.CHAT, Message.Kind.SYSTEM)


@dataclass(frozen=True, kw_only=True, slots=True)
class StoredChange(StoredMessage):
    """An edit or delete as stored: its own ``seq`` and event ``frame``, the message it
    changed (``target``) and that message's frame in its final state."""

    target: int
    target_frame: str
    #: A delete's other changes: the target's earlier edit events, which lost their text,
    #: as (seq, frame in their final state).
    also_replace: tuple[tuple[int, str], ...] = ()


def layer_message(change: StoredChange) -> dict[str, Any]:
    """The channel-layer message of a stored change: the event for v1 members, and the
    target's final frame for the hubs' recent frames (``replace``)."""
    message: dict[str, Any] = {
        "type": "room.message",
        "seq": change.seq,
        "frame": change.frame,
        "v1_only": True,
        "replace": [change.target, change.target_frame],
    }
    if change.also_replace:
        message["also_replace"] = [[seq, frame] for seq, frame in change.also_replace]
    return message


# -- the public API -------------------------------------------------------------------------


def edit_message(
    room: str, seq: int, text: str, *, by: access.Identity | None = None, client_id: str = ""
) -> StoredChange:
    """Replace the text of message ``seq`` of ``room``, and tell the room's members.

    Args:
        room: the room's name.
        seq: the message's seq.
        text: its new text (non-empty; the rules of a client's message).
        by: who edits (see the module docstring); None: the site itself, always allowed.
        client_id: makes the edit idempotent, as a post's (1 to 64 characters, or "").

    Returns:
        The stored edit event: its own ``seq``, its ``frame``; ``duplicate`` if
        ``client_id`` was stored already (nothing new is stored or published).

    Raises:
        PermissionDeniedError: ``by`` may not edit it (code ``forbidden``).
        MessageNotFoundError: no message ``seq`` in the room, or it is an event, or it is
            deleted (code ``not_found``).
        InvalidFrameError: ``text`` or ``client_id`` is not acceptable.
        InvalidRoomNameError: ``room`` cannot name a room.

    Inside ``transaction.atomic()`` the event is published when the block commits.
    """
    change = _store(room, seq, Message.Kind.EDIT, check_text(text), by, client_id)
    _publish_on_commit(change)
    return change


def delete_message(
    room: str, seq: int, *, by: access.Identity | None = None, client_id: str = ""
) -> StoredChange:
    """Delete message ``seq`` of ``room`` (its text is erased; it stays as a tombstone),
    and tell the room's members. Arguments, result and errors as :func:`edit_message`."""
    change = _store(room, seq, Message.Kind.DELETE, "", by, client_id)
    _publish_on_commit(change)
    return change


async def aedit_message(
    room: str, seq: int, text: str, *, by: access.Identity | None = None, client_id: str = ""
) -> StoredChange:
    """Async twin of :func:`edit_message`."""
    text = check_text(text)
    change = await database_sync_to_async(_store)(room, seq, Message.Kind.EDIT, text, by, client_id)
    if not change.duplicate:
        await fanout.publish_stored(change.room, layer_message(change))
    return change


async def adelete_message(
    room: str, seq: int, *, by: access.Identity | None = None, client_id: str = ""
) -> StoredChange:
    """Async twin of :func:`delete_message`."""
    change = await database_sync_to_async(_store)(room, seq, Message.Kind.DELETE, "", by, client_id)
    if not change.duplicate:
        await fanout.publish_stored(change.room, layer_message(change))
    return change


def _publish_on_commit(change: StoredChange) -> None:
    if not change.duplicate:
        fanout.publish_on_commit(
            change.room, layer_message(change), using=router.db_for_write(Message)
        )


# -- checks ----------------------------------------------------------------------------------


def check_text(text: object) -> str:
    """``text`` if it may be a message's new text, else :class:`InvalidFrameError`."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidFrameError('The new text ("message") must be a non-empty string.')
    codec.check_text(text, "message")
    limit = roomcast_settings.MAX_FRAME_BYTES
    if len(text) * 4 > limit and len(text.encode("utf-8")) > limit:
        raise InvalidFrameError(f'"message" is limited to {limit} bytes of UTF-8.')
    return text


def _client_id(client_id: object) -> str:
    if not isinstance(client_id, str) or len(client_id) > codec.CLIENT_ID_MAX_CHARS:
        raise InvalidFrameError(
            f'"client_id" must be a string of 1 to {codec.CLIENT_ID_MAX_CHARS} characters.'
        )
    codec.check_text(client_id, "client_id")
    return client_id


def _authorizer(by: access.Identity | None, room: str, kind: str) -> Callable[[Message], None]:
    """Raises PermissionDeniedError unless ``by`` may change the target message."""
    verb, done = ("edit", "edited") if kind == Message.Kind.EDIT else ("delete", "deleted")

    def authorize(target: Message) -> None:
        if by is None:
            return  # the site itself
        window = float(roomcast_settings.EDIT_WINDOW_SECS)
        own = by.user_id is not None and target.user_id == by.user_id
        if own and window > 0:
            age = (timezone.now() - target.created_at).total_seconds()
            if age <= window and access.check(by, room, "post"):
                return
        if access.check(by, room, "moderate"):
            return
        if not by.authenticated:
            raise PermissionDeniedError(f"Log in to {verb} messages.")
        if own:
            raise PermissionDeniedError(
                f"Your messages may be {done} for {window:g} s after posting; this one is older."
                if window > 0
                else f"Messages may not be {done} by their authors in this room."
            )
        raise PermissionDeniedError(f"You may not {verb} other people's messages here.")

    return authorize


# -- storing ---------------------------------------------------------------------------------


def _store(
    room: str, seq: int, kind: str, text: str, by: access.Identity | None, client_id: str
) -> StoredChange:
    """Store the change and the target's final state in one transaction (see the module
    docstring); nothing is published here."""
    room = codec.validate_room_name(room, max_chars=roomcast_settings.ROOM_NAME_MAX_CHARS)
    client_id = _client_id(client_id)
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise TypeError(f"seq must be an int, not {type(seq).__name__}.")
    if not 1 <= seq <= codec.SEQ_MAX:
        raise MessageNotFoundError(f"No message {seq} in room {room!r}.")
    change = _Change(
        room=room,
        target=seq,
        kind=kind,
        text=text,
        user_id=by.user_id if by is not None else None,
        username=by.name[:USERNAME_MAX_CHARS] if by is not None else "",
        client_id=client_id,
        authorize=_authorizer(by, room, kind),
    )
    using = router.db_for_write(Message)
    connection = connections[using]
    try:
        with transaction.atomic(using=using):
            taken = take_seq(connection, room, client_id)
            if taken is None:
                if client_id and (stored := _stored_with_client_id(room, client_id, using)):
                    return stored
                raise MessageNotFoundError(f"No message {seq} in room {room!r}.")
            room_id, event_seq = taken
            return _apply(change, room_id, event_seq, using)
    except IntegrityError:
        # Two sends of one client_id raced past the check; the unique index kept one.
        if not client_id or connection.in_atomic_block:
            raise
        stored = _stored_with_client_id(room, client_id, using)
        if stored is None:
            raise
        return stored


@dataclass(frozen=True, kw_only=True, slots=True)
class _Change:
    """An edit or delete to store: what, of which message, by whom."""

    room: str
    target: int
    kind: str
    text: str
    user_id: int | None
    username: str
    client_id: str
    authorize: Callable[[Message], None]


def _apply(change: _Change, room_id: int, event_seq: int, using: str) -> StoredChange:
    """Inside the transaction that took ``event_seq``: check and change the target, and
    store the event. Raising rolls the seq back."""
    room, seq, kind, text = change.room, change.target, change.kind, change.text
    messages = Message.objects.using(using)
    target = messages.select_for_update().filter(room_id=room_id, seq=seq).first()
    if target is None or target.kind not in CHANGEABLE_KINDS or target.deleted_at is not None:
        raise MessageNotFoundError(f"No message {seq} in room {room!r} to change.")
    change.authorize(target)
    now = timezone.now()
    event = Message(
        room_id=room_id,
        seq=event_seq,
        kind=kind,
        user_id=change.user_id,
        username=change.username,
        text=text,
        client_id=change.client_id,
        created_at=now,
        target_seq=seq,
    )
    event.save(using=using, force_insert=True)
    also_replace: tuple[tuple[int, str], ...] = ()
    if kind == Message.Kind.EDIT:
        target.text, target.edited_at = text, now
        target.save(using=using, update_fields=["text", "edited_at"])
    else:
        target.text, target.deleted_at = "", now
        target.save(using=using, update_fields=["text", "deleted_at"])
        edits = messages.filter(
            room_id=room_id, kind=Message.Kind.EDIT, target_seq=seq, deleted_at__isnull=True
        )
        changed = list(edits.only(*FRAME_FIELDS).order_by("seq"))
        if changed:
            edits.update(text="", deleted_at=now)
            for edit in changed:
                edit.text, edit.deleted_at = "", now
            also_replace = tuple((edit.seq, message_frame(edit, room)) for edit in changed)
    return StoredChange(
        room=room,
        seq=event_seq,
        frame=message_frame(event, room),
        target=seq,
        target_frame=message_frame(target, room),
        also_replace=also_replace,
    )


def _stored_with_client_id(room: str, client_id: str, using: str) -> StoredChange | None:
    """What ``client_id`` stored in ``room`` already, as a duplicate."""
    messages = Message.objects.using(using).filter(room__name=room)
    # exclude(""): the unique index's condition, which SQLite needs to see to use it.
    found = (
        messages.filter(client_id=client_id)
        .exclude(client_id="")
        .only("room_id", *FRAME_FIELDS)
        .first()
    )
    if found is None:
        return None
    target_seq = found.target_seq if found.target_seq is not None else found.seq
    target = messages.filter(seq=target_seq).only(*FRAME_FIELDS).first()
    return StoredChange(
        room=room,
        seq=found.seq,
        frame=message_frame(found, room),
        duplicate=True,
        target=target_seq,
        target_frame=message_frame(target, room) if target is not None else "",
    )
