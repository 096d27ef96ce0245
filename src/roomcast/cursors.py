"""Read cursors and unread counts: how far each user has read each room.

Layer: services (domain). Reads and writes the models, publishes through ``fanout``;
never touches a socket.

A cursor is a row (user, room, seq): the seq of the last message the user read there,
in the database so that every device of the user agrees. It only moves forward
(:func:`mark_read`: one upsert whose update applies only to a smaller seq, so two
devices racing leave the larger). Every move is told to every ``/ws/`` socket of the
user, on every process, as an ephemeral ``unread`` frame on the user's own stream
(``fanout.user_room``).

Unread: the room's ``chat`` and ``system`` messages after the cursor that are not
deleted and were not posted by the user (edit and delete events do not count; a user's
own posts are read by definition). Counted up to :data:`UNREAD_COUNT_MAX`: a client
shows more as "999+". Guests have no cursors.

Access is the caller's to check: the ``/ws/`` consumer marks and reads rooms its socket
is subscribed to (so may join), and :func:`user_rooms` lists only rooms the user may
join.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from channels.db import database_sync_to_async
from django.db import connections, router, transaction
from django.db.models import Q
from django.utils import timezone

from . import access, fanout
from .conf import roomcast_settings
from .exceptions import PermissionDeniedError, PushError
from .models import Message, ReadCursor, Room
from .protocol import stream_events

logger = logging.getLogger(__name__)

__all__ = [
    "UNREAD_COUNT_MAX",
    "USER_ROOMS_MAX",
    "amark_read",
    "aread_state",
    "layer_message",
    "mark_read",
    "read_state",
    "user_rooms",
]

#: Largest unread count reported: counting stops there, so a room of a million messages
#: the user never read costs a bounded index scan, not a million rows. Clients show
#: "999+" from 1000 on.
UNREAD_COUNT_MAX = 1000
#: Most rooms :func:`user_rooms` lists (``GET /api/users/<name>/rooms``); more is
#: ``truncated``.
USER_ROOMS_MAX = 1000
#: Most room names one :func:`read_state` query asks about (SQLite allows 32,766
#: parameters in a statement; each name is one). Longer lists are asked in chunks.
READ_STATE_CHUNK = 1000


def layer_message(room: str, read_seq: int, unread: int) -> dict[str, Any]:
    """The channel-layer message that tells a user's sockets their cursor in ``room``."""
    frame = stream_events.unread_event(room=room, read_seq=read_seq, unread=unread)
    return {"type": "room.event", "frame": stream_events.encode(frame)}


# -- marking ----------------------------------------------------------------------------------


def mark_read(identity: access.Identity, room: str, seq: int) -> tuple[int, int]:
    """Move ``identity``'s cursor in ``room`` forward to ``seq``, and tell their sockets.

    ``seq`` is clamped to the room's last seq (and to 0); a cursor already further on
    stays where it is. Every ``/ws/`` socket of the user, on every process, is sent
    ``{"type": "unread", "room", "read_seq", "unread"}`` once the transaction commits,
    whether or not the cursor moved.

    Returns:
        ``(read_seq, unread)`` after the move.

    Raises:
        PermissionDeniedError: a guest (guests have no cursors).
        SynchronousCallError: called from async code (use :func:`amark_read`).
    """
    state = _move(identity, room, seq)
    message = layer_message(room, *state)
    group = fanout.user_room(int(identity.user_id or 0))
    transaction.on_commit(
        lambda: _publish_from_sync(group, message), using=router.db_for_write(ReadCursor)
    )
    return state


async def amark_read(identity: access.Identity, room: str, seq: int) -> tuple[int, int]:
    """Async twin of :func:`mark_read`."""
    state = await database_sync_to_async(_move)(identity, room, seq)
    await _publish(fanout.user_room(int(identity.user_id or 0)), layer_message(room, *state))
    return state


async def _publish(group: str, message: dict[str, Any]) -> None:
    # An unread frame is ephemeral: the next one (or a reconnect's joined) corrects a
    # lost one, so a layer failure is logged, not raised.
    try:
        await fanout.publish(group, message)
    except Exception:
        logger.warning("Publishing an unread frame to %r failed", group, exc_info=True)


def _publish_from_sync(group: str, message: dict[str, Any]) -> None:
    try:
        fanout.run_sync(_publish, group, message)
    except PushError:
        logger.warning("Publishing an unread frame to %r timed out", group)


def _move(identity: access.Identity, room: str, seq: int) -> tuple[int, int]:
    if identity.user_id is None:
        raise PermissionDeniedError("Log in to keep your place in rooms.")
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise TypeError(f"seq must be an int, not {type(seq).__name__}.")
    row = Room.objects.filter(name=room).values_list("id", "last_seq").first()
    if row is None:
        return 0, 0  # nothing stored in it: nothing to read
    room_id, last_seq = row
    seq = max(0, min(seq, last_seq))
    using = router.db_for_write(ReadCursor)
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(
            _upsert_sql(connection),
            [
                identity.user_id,
                room_id,
                seq,
                connection.ops.adapt_datetimefield_value(timezone.now()),
            ],
        )
    return read_state(identity, [room]).get(room, (0, 0))


def _upsert_sql(connection: Any) -> str:
    """Insert the cursor, or move it forward: never back (one statement, no race)."""
    q = connection.ops.quote_name
    table = q(ReadCursor._meta.db_table)
    column = {field.name: field.column for field in ReadCursor._meta.concrete_fields}
    user, room, seq, at = (q(column[name]) for name in ("user", "room", "seq", "updated_at"))
    return (
        f"INSERT INTO {table} ({user}, {room}, {seq}, {at}) VALUES (%s, %s, %s, %s) "
        f"ON CONFLICT ({user}, {room}) DO UPDATE SET {seq} = excluded.{seq}, "
        f"{at} = excluded.{at} WHERE {table}.{seq} < excluded.{seq}"
    )


# -- reading ----------------------------------------------------------------------------------


def read_state(identity: access.Identity, rooms: Iterable[str]) -> dict[str, tuple[int, int]]:
    """``{room: (read_seq, unread)}`` of ``identity`` for each of ``rooms``, in one query
    (per :data:`READ_STATE_CHUNK` rooms).

    A room with no messages yet is ``(0, 0)``; a room the user never read has
    ``read_seq`` 0. A guest has no cursors: ``{}``. Access is not checked here.
    """
    if identity.user_id is None:
        return {}
    names = list(dict.fromkeys(rooms))
    state = dict.fromkeys(names, (0, 0))
    connection = connections[router.db_for_read(Message)]
    for start in range(0, len(names), READ_STATE_CHUNK):
        chunk = names[start : start + READ_STATE_CHUNK]
        with connection.cursor() as cursor:
            cursor.execute(
                _state_sql(connection, len(chunk)),
                [identity.user_id, UNREAD_COUNT_MAX, identity.user_id, *chunk],
            )
            for name, read_seq, unread in cursor.fetchall():
                state[name] = (int(read_seq), int(unread))
    return state


async def aread_state(
    identity: access.Identity, rooms: Iterable[str]
) -> dict[str, tuple[int, int]]:
    """Async twin of :func:`read_state`."""
    if identity.user_id is None:
        return {}
    return await database_sync_to_async(read_state)(identity, list(rooms))


def _state_sql(connection: Any, count: int) -> str:
    q = connection.ops.quote_name
    rooms, cursors = q(Room._meta.db_table), q(ReadCursor._meta.db_table)
    messages = q(Message._meta.db_table)
    m = {field.name: q(field.column) for field in Message._meta.concrete_fields}
    c = {field.name: q(field.column) for field in ReadCursor._meta.concrete_fields}
    counted = ", ".join(f"'{kind}'" for kind in (Message.Kind.CHAT, Message.Kind.SYSTEM))
    names = ", ".join(["%s"] * count)
    read_seq = f"COALESCE(c.{c['seq']}, 0)"
    # The count stops at UNREAD_COUNT_MAX rows (the LIMIT inside): an index range scan of
    # (room, seq) of at most that many rows per room.
    return (
        f"SELECT r.name, {read_seq}, (SELECT COUNT(*) FROM (SELECT 1 FROM {messages} m "
        f"WHERE m.{m['room']} = r.id AND m.{m['seq']} > {read_seq} "
        f"AND m.{m['kind']} IN ({counted}) AND m.{m['deleted_at']} IS NULL "
        f"AND (m.{m['user']} IS NULL OR m.{m['user']} <> %s) LIMIT %s) u) "
        f"FROM {rooms} r LEFT JOIN {cursors} c ON c.{c['room']} = r.id AND c.{c['user']} = %s "
        f"WHERE r.name IN ({names})"
    )


def user_rooms(identity: access.Identity) -> tuple[list[dict[str, Any]], bool]:
    """The rooms of a user's sidebar: those they are a member of or have read (have a
    cursor in), that they may join now; by name, at most :data:`USER_ROOMS_MAX`.

    Returns:
        ``([{"name", "visibility", "last_seq", "read_seq", "unread"}, ...], truncated)``.
        A guest has none.
    """
    if identity.user_id is None:
        return [], False
    mine = Q(memberships__user_id=identity.user_id) | Q(read_cursors__user_id=identity.user_id)
    rooms = (
        Room.objects.filter(mine)
        .exclude(name__startswith=fanout.USER_STREAM_PREFIX)
        .distinct()
        .order_by("name")
    )
    if not roomcast_settings.ACCESS_POLICY and not (identity.is_staff or identity.is_superuser):
        # The built-in policy, without a query per room: a private room is for members.
        rooms = rooms.filter(
            ~Q(visibility=Room.Visibility.PRIVATE) | Q(memberships__user_id=identity.user_id)
        )
    rows = list(rooms.values_list("name", "visibility", "last_seq")[: USER_ROOMS_MAX + 1])
    truncated = len(rows) > USER_ROOMS_MAX
    rows = rows[:USER_ROOMS_MAX]
    if roomcast_settings.ACCESS_POLICY:  # the project's rules decide, room by room
        rows = [row for row in rows if access.check(identity, row[0], "join")]
    state = read_state(identity, [name for name, _, _ in rows])
    listed = []
    for name, visibility, last_seq in rows:
        read_seq, unread = state.get(name, (0, 0))
        listed.append(
            {
                "name": name,
                "visibility": visibility,
                "last_seq": last_seq,
                "read_seq": read_seq,
                "unread": unread,
            }
        )
    return listed, truncated
