"""Domain: rooms, posting to a room's stream, history, joining and leaving.

Layer: services. Uses the models and ``fanout``/``hub``; never touches a socket (the
consumer hands in its ASGI ``send`` and gets a :class:`~roomcast.hub.Member` back).

Storing comes before publishing, always: a message gets its room's next seq in the
transaction that stores it, and is published after that transaction commits.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.db import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    connections,
    router,
    transaction,
)
from django.utils import timezone

from . import fanout
from .conf import roomcast_settings
from .exceptions import PermissionDeniedError
from .hub import CatchUp, Hub, Member, Send, get_hub
from .models import Message, Room
from .protocol import codec

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class StoredMessage:
    """A message as stored: its room, its seq in the room's stream and its wire frame."""

    room: str
    seq: int
    frame: str
    #: True when ``client_id`` matched a message already stored in the room: this is that
    #: message, and nothing new was stored or is to be published.
    duplicate: bool = False


# -- storing and publishing -------------------------------------------------------------------


def store_message(
    room: str,
    text: str,
    *,
    user: Any = None,
    kind: str = Message.Kind.CHAT,
    client_id: str = "",
) -> StoredMessage:
    """Store ``text`` as the room's next message (creating the room) and return it.

    Runs in its own transaction, or joins the caller's. Does not publish: see
    :func:`post_message`.

    Idempotent per ``client_id``: a client that sends again after a reconnect, not
    knowing whether its message was stored, gets the stored one back (``duplicate``)
    instead of a second copy. Checked in the storing statement itself, and backed by a
    unique index on (room, client_id) for two sends racing each other.
    """
    using = router.db_for_write(Message)
    connection = connections[using]
    authenticated = user is not None and user.is_authenticated
    username = user.get_username() if authenticated else ""
    created_at = timezone.now()
    fields = [
        kind,
        user.pk if authenticated else None,
        username,
        text,
        client_id,
        connection.ops.adapt_datetimefield_value(created_at),
    ]
    # The ingest hot path, in raw SQL: the ORM's get_or_create + save cost more than the
    # database work itself (profiled: about two thirds of the time on SQLite).
    statements = _store_statements(connection, room, fields)
    # One statement is atomic by itself: a transaction would only add BEGIN and COMMIT
    # round trips (inside the caller's transaction it joins that one anyway).
    atomic = transaction.atomic(using=using) if len(statements) > 1 else nullcontext()
    try:
        with atomic, connection.cursor() as cursor:
            for _ in range(2):
                for sql, params in statements:
                    cursor.execute(sql, params)
                result = cursor.fetchone()
                if result is not None:
                    break
                # No row: a duplicate client_id, or the room's first message.
                if client_id and (stored := _stored_with_client_id(room, client_id, using)):
                    return stored
                Room.objects.using(using).get_or_create(name=room)
    except IntegrityError:
        # Two sends with one client_id raced past the check; the index kept one. Inside
        # the caller's own transaction (not the ingest path) the error is theirs to see.
        if not client_id or connection.in_atomic_block:
            raise
        stored = _stored_with_client_id(room, client_id, using)
        if stored is None:
            raise
        return stored
    seq = int(result[0])
    frame = codec.encode(
        codec.message_event(
            room=room,
            text=text,
            kind=kind,  # type: ignore[arg-type]
            user=username or None,
            ts=_timestamp(created_at),
            seq=seq,
            client_id=client_id or None,
        )
    )
    return StoredMessage(room=room, seq=seq, frame=frame)


def _stored_with_client_id(room: str, client_id: str, using: str) -> StoredMessage | None:
    message = (
        Message.objects.using(using)
        .filter(room__name=room, client_id=client_id)
        .only("seq", "kind", "username", "text", "client_id", "created_at")
        .first()
    )
    if message is None:
        return None
    return StoredMessage(
        room=room, seq=message.seq, frame=message_frame(message, room), duplicate=True
    )


def _store_statements(connection: Any, room: str, fields: list[Any]) -> list[tuple[str, list[Any]]]:
    """The statements that store a message: the last returns its seq, or no row when the
    room does not exist yet or already has a message with this client_id.

    The UPDATE takes the room's row lock and its next seq, so concurrent posters to one
    room queue there, and seqs are dense and commit in order. PostgreSQL does it all in
    one statement, one round trip (a data-modifying CTE); SQLite has no such CTE, so
    there it is an UPDATE, then an INSERT ... SELECT ... RETURNING (SQLite >= 3.35).
    """
    vendor = connection.vendor
    sql = _STORE_SQL.get(vendor) or _STORE_SQL.setdefault(vendor, _build_store_sql(connection))
    client_id = fields[4]
    if vendor == "postgresql":
        return [(sql[0], [room, client_id, *fields])]
    return [(sql[0], [room, client_id]), (sql[1], [*fields, room])]


_STORE_SQL: dict[str, tuple[str, ...]] = {}


def _build_store_sql(connection: Any) -> tuple[str, ...]:
    q = connection.ops.quote_name
    rooms, messages = q(Room._meta.db_table), q(Message._meta.db_table)
    names = ("room", "seq", "kind", "user", "username", "text", "client_id", "created_at")
    column = {field.name: field.column for field in Message._meta.concrete_fields}
    columns = ", ".join(q(column[name]) for name in names)
    values = ", ".join(["%s"] * 6)  # kind, user, username, text, client_id, created_at
    room_id, client_id = q(column["room"]), q(column["client_id"])
    # The room's seq is taken only if no message of the room has this client_id ('' is
    # no client_id): a taken seq with no message would be a gap in the stream.
    update = (
        f"UPDATE {rooms} SET last_seq = last_seq + 1 WHERE name = %s AND NOT EXISTS "
        f"(SELECT 1 FROM {messages} m WHERE m.{room_id} = {rooms}.id "
        f"AND m.{client_id} = %s AND m.{client_id} <> '')"
    )
    if connection.vendor == "postgresql":
        return (
            f"WITH r AS ({update} RETURNING id, last_seq) INSERT INTO {messages} ({columns}) "
            f"SELECT r.id, r.last_seq, {values} FROM r RETURNING {q('seq')}",
        )
    return (
        update,
        # changes(): rows the UPDATE just changed, 0 for a duplicate client_id.
        f"INSERT INTO {messages} ({columns}) SELECT id, last_seq, {values} "
        f"FROM {rooms} WHERE name = %s AND changes() = 1 RETURNING {q('seq')}",
    )


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message_frame(message: Message, room: str) -> str:
    """The wire frame of a stored message: the same bytes live and when read back."""
    return codec.encode(
        codec.message_event(
            room=room,
            text=message.text,
            kind=message.kind,  # type: ignore[arg-type]
            user=message.username or None,
            ts=_timestamp(message.created_at),
            seq=message.seq,
            client_id=message.client_id or None,
        )
    )


def layer_message(stored: StoredMessage) -> dict[str, Any]:
    """The channel-layer message that carries a stored message to the hubs."""
    return {"type": "room.message", "seq": stored.seq, "frame": stored.frame}


def post_message(room: str, text: str, **kwargs: Any) -> StoredMessage:
    """Store a message and publish it once the transaction commits (sync).

    Keyword arguments are those of :func:`store_message`. Inside
    ``transaction.atomic()`` the message is published only if the block commits.
    """
    stored = store_message(room, text, **kwargs)
    if not stored.duplicate:
        fanout.publish_on_commit(room, layer_message(stored), using=router.db_for_write(Message))
    return stored


#: Threads that store messages for async posters, each with its own database connection.
#: Not Channels' one thread-sensitive thread: on PostgreSQL a store is a round trip of
#: waiting, so stores from many sockets overlap; SQLite writers still take turns on its
#: write lock (IMMEDIATE transactions). Bounded: posts beyond it queue in the pool.
STORE_THREADS = 4
_store_executor = ThreadPoolExecutor(max_workers=STORE_THREADS, thread_name_prefix="roomcast-store")


def _store_on_pool_thread(room: str, text: str, **kwargs: Any) -> StoredMessage:
    """``store_message`` on a store thread, keeping the thread's connection open.

    Not ``database_sync_to_async``: its ``close_old_connections()`` before each call
    makes Django health-check the connection at its next use, a ``SELECT 1`` round trip
    per stored message (half of PostgreSQL ingest, measured). A connection that fails is
    closed instead, so the thread's next store opens a new one; the failed store is not
    retried (it may have committed), the poster gets an error frame.
    """
    try:
        return store_message(room, text, **kwargs)
    except (InterfaceError, OperationalError):
        connections[router.db_for_write(Message)].close()
        raise


_astore_message = sync_to_async(
    _store_on_pool_thread, thread_sensitive=False, executor=_store_executor
)


async def apost_message(room: str, text: str, **kwargs: Any) -> StoredMessage:
    """Store a message, then publish it (async twin of :func:`post_message`)."""
    stored = await _astore_message(room, text, **kwargs)
    if not stored.duplicate:
        await fanout.publish_stored(room, layer_message(stored))
    return stored


def check_can_post(user: Any) -> None:
    """Raise :class:`PermissionDeniedError` if ``user`` may not post."""
    if not roomcast_settings.ALLOW_ANONYMOUS and (user is None or not user.is_authenticated):
        raise PermissionDeniedError("Log in to post in this room.")


# -- reading ---------------------------------------------------------------------------------


def _frames(queryset: Any, room: str) -> list[tuple[int, str]]:
    return [(m.seq, message_frame(m, room)) for m in queryset]


def _room_row(room: str) -> tuple[int, int] | None:
    return Room.objects.filter(name=room).values_list("id", "last_seq").first()


def read_catch_up(room: str, since: int | None) -> tuple[int, list[tuple[int, str]], bool | None]:
    """What a joining client is sent: ``(last_seq, frames, recovered)``.

    Without ``since``: the latest ``HISTORY_COUNT`` messages, ``recovered`` None. With
    ``since``: the messages after it when there are at most ``REPLAY_LIMIT`` of them
    (``recovered`` True); otherwise, and when ``since`` is ahead of the room (the
    client saw a stream this database does not have), ``recovered`` False and the
    latest ``HISTORY_COUNT`` messages so the client can start over.
    """
    row = _room_row(room)
    last_seq = row[1] if row else 0
    if (
        since is not None
        and since <= last_seq
        and last_seq - since <= roomcast_settings.REPLAY_LIMIT
    ):
        if row is None or since == last_seq:
            return last_seq, [], True
        messages = Message.objects.filter(room_id=row[0], seq__gt=since, seq__lte=last_seq)
        return last_seq, _frames(messages.order_by("seq"), room), True
    recovered = None if since is None else False
    if row is None:
        return last_seq, [], recovered
    latest = Message.objects.filter(room_id=row[0], seq__lte=last_seq).order_by("-seq")
    frames = _frames(latest[: roomcast_settings.HISTORY_COUNT], room)
    frames.reverse()
    return last_seq, frames, recovered


def read_history(room: str, before: int | None, limit: int) -> tuple[list[str], bool]:
    """A page of up to ``limit`` messages older than ``before`` (oldest first), and
    whether older ones remain."""
    row = _room_row(room)
    if row is None:
        return [], False
    messages = Message.objects.filter(room_id=row[0])
    if before is not None:
        messages = messages.filter(seq__lt=before)
    page = _frames(messages.order_by("-seq")[: limit + 1], room)
    has_more = len(page) > limit
    page = page[:limit]
    page.reverse()
    return [frame for _, frame in page], has_more


async def ahistory_frame(room: str, before: int | None, limit: int) -> str:
    """The encoded ``history`` reply for a client's history request."""
    frames, has_more = await database_sync_to_async(read_history)(room, before, limit)
    return codec.history_frame(room=room, frames=frames, has_more=has_more)


class DatabaseLoader:
    """The hub's window on the database (see :class:`roomcast.hub.Loader`)."""

    async def latest(self, room: str, count: int) -> tuple[int, list[tuple[int, str]]]:
        def read() -> tuple[int, list[tuple[int, str]]]:
            row = _room_row(room)
            if row is None:
                return 0, []
            latest = Message.objects.filter(room_id=row[0], seq__lte=row[1]).order_by("-seq")
            frames = _frames(latest[:count], room)
            frames.reverse()
            return row[1], frames

        return await database_sync_to_async(read)()

    async def last_seqs(self, rooms: list[str]) -> dict[str, int]:
        def read() -> dict[str, int]:
            return dict(Room.objects.filter(name__in=rooms).values_list("name", "last_seq"))

        return await database_sync_to_async(read)()

    async def frames_after(
        self, room: str, after: int, upto: int, limit: int
    ) -> list[tuple[int, str]]:
        def read() -> list[tuple[int, str]]:
            messages = Message.objects.filter(room__name=room, seq__gt=after, seq__lte=upto)
            return _frames(messages.order_by("seq")[:limit], room)

        return await database_sync_to_async(read)()


# -- joining and leaving ----------------------------------------------------------------------


def _make_hub() -> Hub:
    fanout.set_server_loop(asyncio.get_running_loop())
    return Hub(
        fanout.get_layer(),
        DatabaseLoader(),
        fanout.room_group,
        position_check_secs=roomcast_settings.POSITION_CHECK_SECS,
        recent_count=roomcast_settings.HISTORY_COUNT,
    )


def hub() -> Hub:
    """This event loop's hub (made on first use)."""
    return get_hub(_make_hub)


async def join_room(
    room: str, *, send: Send, since: int | None, v1: bool, user: Any = None
) -> Member:
    """Make ``send``'s socket a member of ``room`` and queue its catch-up.

    After calling this, you must call :func:`leave_room` when the socket closes.
    """
    user_id = user.pk if user is not None and user.is_authenticated else None
    member = Member(
        send, room=room, max_frames=roomcast_settings.OUTBOUND_BUFFER_FRAMES, v1=v1, user_id=user_id
    )

    the_hub = hub()

    async def catch_up() -> CatchUp:
        cached = the_hub.recent(room, since, replay_limit=roomcast_settings.REPLAY_LIMIT)
        if cached is None:
            cached = await database_sync_to_async(read_catch_up)(room, since)
        last_seq, frames, recovered = cached
        preface = [codec.encode(codec.joined_event(room=room, seq=last_seq, recovered=recovered))]
        return CatchUp(preface=preface if v1 else [], frames=frames, last_seq=last_seq)

    await the_hub.join(member, catch_up)
    return member


def leave_room(member: Member) -> None:
    """Remove a member from its room (the socket closed)."""
    hub().leave(member)
