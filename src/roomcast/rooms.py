"""Managing rooms from Python: create, visibility, members, what a room looks like.

Layer: services. The same operations back ``roomcast room ...`` on the command line,
the HTTP API and the Django admin::

    from roomcast import rooms
    rooms.create_room("board", visibility="private")
    rooms.add_members("board", ["alice", "bob"])
    rooms.set_visibility("news", "read_only")
    rooms.remove_members("board", ["bob"])   # bob's sockets in "board" close within 1 s

Users are given as user objects, usernames or primary keys. Every change that can take
rights away sends ``roomcast.signals.access_changed`` once the transaction commits, so
live sockets lose them at once (``roomcast.revocation``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.db import IntegrityError, router, transaction

from .conf import roomcast_settings
from .exceptions import RoomcastError
from .models import Message, Room, RoomMember
from .protocol import codec
from .signals import access_changed

__all__ = [
    "RoomExistsError",
    "RoomInfo",
    "RoomNotFoundError",
    "UserNotFoundError",
    "add_members",
    "create_room",
    "get_room",
    "get_user",
    "remove_members",
    "room_info",
    "set_visibility",
]

VISIBILITIES = tuple(Room.Visibility.values)


class RoomNotFoundError(RoomcastError, LookupError):
    """No room of that name."""


class RoomExistsError(RoomcastError):
    """A room of that name exists already."""


class UserNotFoundError(RoomcastError, LookupError):
    """No user of that name or id."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RoomInfo:
    """What ``roomcast room show`` prints."""

    name: str
    visibility: str
    members: list[tuple[str, str]]  # (username, role), by username
    message_count: int
    last_seq: int


def _name(room: str) -> str:
    return codec.validate_room_name(room, max_chars=roomcast_settings.ROOM_NAME_MAX_CHARS)


def _visibility(value: str) -> str:
    value = value.replace("-", "_")
    if value not in VISIBILITIES:
        raise ValueError(f"Visibility {value!r}: use one of {', '.join(VISIBILITIES)}.")
    return value


def _user(user: Any) -> Any:
    User = get_user_model()
    if isinstance(user, User):
        return user
    if isinstance(user, int) and not isinstance(user, bool):
        found = User._default_manager.filter(pk=user).first()
    elif isinstance(user, str):
        found = User._default_manager.filter(**{User.USERNAME_FIELD: user}).first()
    else:
        raise TypeError(f"A user is a user object, a username or an id, not {user!r}.")
    if found is None:
        raise UserNotFoundError(f"No user {user!r}.")
    return found


def get_user(user: Any) -> Any:
    """The user given as a user object, a username or a primary key.

    Raises:
        UserNotFoundError: there is none.
    """
    return _user(user)


def get_room(room: str) -> Room:
    """The room named ``room``.

    Raises:
        RoomNotFoundError: there is none.
    """
    found = Room.objects.filter(name=_name(room)).first()
    if found is None:
        raise RoomNotFoundError(f"No room {room!r}.")
    return found


def _changed(room: str, user_id: int | None = None) -> None:
    transaction.on_commit(
        lambda: access_changed.send(sender=Room, room=room, user_id=user_id),
        using=router.db_for_write(Room),
    )


def create_room(room: str, *, visibility: str = Room.Visibility.PUBLIC) -> Room:
    """Create a room (public unless told otherwise).

    Raises:
        InvalidRoomNameError: ``room`` cannot name a room.
        RoomExistsError: it exists (rooms also come into being when first used).
        ValueError: an unknown visibility.
    """
    name, visibility = _name(room), _visibility(visibility)
    try:
        with transaction.atomic(using=router.db_for_write(Room)):
            made = Room.objects.create(name=name, visibility=visibility)
            if visibility != Room.Visibility.PUBLIC:
                # Sockets may be in it already: a room has no row until first used.
                _changed(name)
            return made
    except IntegrityError:
        raise RoomExistsError(f"Room {name!r} exists already.") from None


def set_visibility(room: str, visibility: str, *, create: bool = False) -> Room:
    """Make ``room`` public, private or read-only (``create``: make it if missing).

    Sockets that lose access by it are closed within a second, on every process.
    """
    visibility = _visibility(visibility)
    with transaction.atomic(using=router.db_for_write(Room)):
        if create:
            found, _ = Room.objects.get_or_create(name=_name(room))
        else:
            found = get_room(room)
        if found.visibility != visibility:
            found.visibility = visibility
            found.save(update_fields=["visibility"])
            _changed(found.name)
    return found


def add_members(
    room: str, users: Iterable[Any], *, role: str = RoomMember.Role.MEMBER, create: bool = False
) -> list[str]:
    """Make ``users`` members of ``room`` (with ``role``; an existing member's role is
    updated). Returns their usernames."""
    if role not in RoomMember.Role.values:
        raise ValueError(f"Role {role!r}: use one of {', '.join(RoomMember.Role.values)}.")
    resolved = [_user(user) for user in users]
    with transaction.atomic(using=router.db_for_write(Room)):
        found = Room.objects.get_or_create(name=_name(room))[0] if create else get_room(room)
        for user in resolved:
            membership, made = RoomMember.objects.get_or_create(
                room=found, user=user, defaults={"role": role}
            )
            if not made and membership.role != role:
                demoted = membership.role == RoomMember.Role.ADMIN
                membership.role = role
                membership.save(update_fields=["role"])
                if demoted:
                    _changed(found.name, user.pk)
    return [user.get_username() for user in resolved]


def remove_members(room: str, users: Iterable[Any]) -> list[str]:
    """Remove ``users`` from ``room``; their sockets there are re-checked at once (and
    closed with 4403 if the room is private). Returns the usernames that were members."""
    resolved = [_user(user) for user in users]
    removed = []
    with transaction.atomic(using=router.db_for_write(Room)):
        found = get_room(room)
        for user in resolved:
            deleted, _ = RoomMember.objects.filter(room=found, user=user).delete()
            if deleted:
                removed.append(user.get_username())
                _changed(found.name, user.pk)
    return removed


def room_info(room: str) -> RoomInfo:
    """Visibility, members and message count of ``room``."""
    found = get_room(room)
    username_field = f"user__{get_user_model().USERNAME_FIELD}"
    members = sorted(
        (str(name), str(role))
        for name, role in RoomMember.objects.filter(room=found).values_list(username_field, "role")
    )
    return RoomInfo(
        name=found.name,
        visibility=found.visibility,
        members=members,
        message_count=Message.objects.filter(room=found).count(),
        last_seq=found.last_seq,
    )
