"""The stored stream: each room's messages, numbered by ``seq``, in the database.

Layer: services (persistence). Stores and encodes; never publishes (``services`` does,
after the store commits) and never touches a socket.

Two ways in. :func:`store_message` stores one message on the calling thread, in its own
transaction or the caller's (``push.send_to_room`` inside ``transaction.atomic()``).
:data:`writer` is how async code stores (every post from a socket): posts queue for
:data:`WRITER_THREADS` threads that keep their database connections and store whatever
has queued up, at most :data:`BATCH_MAX` posts, in one transaction.

Why batches. A post stored alone costs a commit, and on a store thread it costs two GIL
hand-offs between that thread and the event loop; with the loop busy delivering, each
hand-off waits out the interpreter's switch interval (5 ms). Profiled at 50 publishers
on PostgreSQL: 4 store threads, each one store at a time, spent most of their time
waiting to run again, and the process stored about 2,000 messages/s at 0.8 cores. A
batch pays one commit, one round trip on PostgreSQL (psycopg's pipeline, through
``executemany(..., returning=True)``) and one hand-off each way, whatever its size.
Under light load a batch is one post, stored as soon as it arrives: nothing waits to
fill a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import os
import queue
import threading
import time
import weakref
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    connections,
    router,
    transaction,
)
from django.utils import timezone

from . import metrics
from .conf import roomcast_settings
from .exceptions import StoreBusyError
from .fanout import is_user_room
from .models import Message, Room
from .protocol import codec, stream_events

logger = logging.getLogger(__name__)

#: Threads storing async posts, each with its own database connection. Two, so that a
#: batch held up (a room's row lock taken by another process, a slow disk) does not hold
#: up every post of the process. One on SQLite: its write lock admits one writer at a
#: time, so a second thread would only wait for it (and on a shared-cache in-memory
#: database, the test suite's, fail at once with "table is locked").
WRITER_THREADS = 2
#: Most posts stored in one transaction.
BATCH_MAX = 100
# Settings (conf.py): STORE_QUEUE_LIMIT, posts waiting for a writer thread, at most. A
# socket has at most 16 posts in flight (post_line.MAX_POSTS_IN_FLIGHT), so only
# thousands of sockets posting flat out, or a burst of async pushes from application
# code, come near it. Overflow policy: the post is refused at once with
# StoreBusyError (a socket's poster gets a ``busy`` error event and sends again);
# nothing is dropped after it was accepted. STORE_LOCK_TIMEOUT_MS: on PostgreSQL, the
# longest wait of a writer thread for a room's row lock held by another transaction (a
# push inside a long ``transaction.atomic()``, say); past it, that room's posts are set
# aside and the rest of the batch is stored; set-aside posts are tried again every
# LOCKED_RETRY_SECS and fail with ``busy`` after STORE_LOCKED_GIVE_UP_SECS. Other
# processes' writers hold a room only for one batch.
LOCKED_RETRY_SECS = 1.0
#: Longest username stored with a message: ``Message.username``'s max_length.
USERNAME_MAX_CHARS = 150


@dataclass(frozen=True, kw_only=True, slots=True)
class StoredMessage:
    """A message as stored: its room, its seq in the room's stream and its wire frame."""

    room: str
    seq: int
    frame: str
    #: True when ``client_id`` matched a message already stored in the room: this is that
    #: message, and nothing new was stored or is to be published.
    duplicate: bool = False


_numbers = itertools.count()


@dataclass(slots=True)
class _Post:
    """One message to store: its row's values (see ``_store_statements``) and bookkeeping."""

    room: str
    text: str
    kind: str
    user_id: Any
    username: str
    client_id: str
    created_at: datetime = field(default_factory=timezone.now)
    #: time.monotonic() when it was first set aside, its room locked (STORE_LOCK_TIMEOUT_MS).
    locked_since: float | None = None
    #: Arrival number: posts set aside for one room are kept and retried in this order.
    number: int = field(default_factory=lambda: next(_numbers))


class RoomLocked(Exception):
    """A post's room is locked by another transaction: set aside, to be tried again."""


def new_post(
    room: str,
    text: str,
    *,
    user: Any = None,
    kind: str = Message.Kind.CHAT,
    client_id: str = "",
    username: str = "",
) -> _Post:
    """A message to store (arguments as :func:`store_message`), for
    :meth:`StreamWriter.store` or :meth:`StreamWriter.submit`."""
    authenticated = user is not None and user.is_authenticated
    return _Post(
        room=room,
        text=text,
        kind=kind,
        user_id=user.pk if authenticated else None,
        # A guest's name (guest-3fa9c1) is kept as the message's username: its posts show
        # who said them, in history too, without an account behind them.
        username=user.get_username() if authenticated else username[:USERNAME_MAX_CHARS],
        client_id=client_id,
    )


# -- storing one message ----------------------------------------------------------------------


def store_message(
    room: str,
    text: str,
    *,
    user: Any = None,
    kind: str = Message.Kind.CHAT,
    client_id: str = "",
    username: str = "",
) -> StoredMessage:
    """Store ``text`` as the room's next message (creating the room) and return it.

    ``username`` is the name shown for a poster without an account (a guest); a user's
    own name is taken from ``user``.

    Runs in its own transaction, or joins the caller's. Does not publish: see
    ``services.post_message``.

    Idempotent per ``client_id``: a client that sends again after a reconnect, not
    knowing whether its message was stored, gets the stored one back (``duplicate``)
    instead of a second copy. Checked in the storing statement itself, and backed by a
    unique index on (room, client_id) for two sends racing each other.
    """
    return _store_one(
        new_post(room, text, user=user, kind=kind, client_id=client_id, username=username)
    )


def _store_one(post: _Post) -> StoredMessage:
    using = router.db_for_write(Message)
    connection = connections[using]
    # The ingest hot path, in raw SQL: the ORM's get_or_create + save cost more than the
    # database work itself (profiled: about two thirds of the time on SQLite).
    statements = _store_statements(connection, post)
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
                if post.client_id and (stored := _stored_with_client_id(post, using)):
                    return stored
                Room.objects.using(using).get_or_create(name=post.room)
    except IntegrityError:
        # Two sends with one client_id raced past the check; the index kept one. Inside
        # the caller's own transaction (not the ingest path) the error is theirs to see.
        if not post.client_id or connection.in_atomic_block:
            raise
        stored = _stored_with_client_id(post, using)
        if stored is None:
            raise
        return stored
    return _stored(post, int(result[0]))


def _stored(post: _Post, seq: int) -> StoredMessage:
    frame = _frame(
        post.room, post.text, post.kind, post.username, post.created_at, seq, post.client_id
    )
    return StoredMessage(room=post.room, seq=seq, frame=frame)


def _stored_with_client_id(post: _Post, using: str) -> StoredMessage | None:
    message = (
        Message.objects.using(using)
        .filter(room__name=post.room, client_id=post.client_id)
        .exclude(client_id="")  # the unique index's condition: SQLite then uses it
        .only(*FRAME_FIELDS)
        .first()
    )
    if message is None:
        return None
    return StoredMessage(
        room=post.room, seq=message.seq, frame=message_frame(message, post.room), duplicate=True
    )


# -- storing a batch --------------------------------------------------------------------------


def store_batch(posts: Sequence[_Post]) -> list[StoredMessage | BaseException]:
    """Store ``posts`` in one transaction; per post, its stored message or its error.

    Posts to one room keep their order (their seqs ascend in the order given). Rooms
    are written in name order, so that two batches (of this process or another) that
    share rooms take the rooms' row locks in the same order and cannot deadlock. A post
    the batch statement stores nothing for (its room's first message, or a duplicate
    ``client_id``) is stored alone after the batch commits, by :func:`_store_one`,
    which handles both.

    If the batch fails, its transaction rolled back, and each post is stored alone, so
    that one bad post fails only itself; except when the commit itself failed with the
    connection lost: the batch may have committed, so its posts fail (a client resends
    with its ``client_id``, which finds the stored message) rather than risk storing
    them twice.
    """
    if len(posts) == 1:
        return _each_alone(posts)
    using = router.db_for_write(Message)
    connection = connections[using]
    # sorted() is stable: posts to one room stay in the order given.
    order = sorted(range(len(posts)), key=lambda i: posts[i].room)
    executed = False
    try:
        with transaction.atomic(using=using):
            seqs = _execute_batch(connection, [posts[i] for i in order])
            executed = True  # from here on, only the commit can fail
    except Exception as exc:
        lost = isinstance(exc, InterfaceError | OperationalError) and not _usable(connection)
        if lost:
            connection.close()  # the thread's next store opens a new connection
        if executed and lost:
            logger.error("The commit of a batch of %d posts was cut off: %s", len(posts), exc)
            return [exc] * len(posts)
        logger.warning(
            "Storing a batch of %d posts failed (%s); storing each alone", len(posts), exc
        )
        return _each_alone(posts)
    results: list[StoredMessage | BaseException | None] = [None] * len(posts)
    for i, seq in zip(order, seqs, strict=True):
        if seq is not None:
            results[i] = _stored(posts[i], seq)
    alone = [i for i, result in enumerate(results) if result is None]  # in the order given
    for i, result in zip(alone, _each_alone([posts[i] for i in alone]), strict=True):
        results[i] = result
    return results  # type: ignore[return-value]


def _each_alone(posts: Sequence[_Post]) -> list[StoredMessage | BaseException]:
    """Store each post alone, in order. Once a room's lock wait times out, that room's
    later posts are not tried: all are set aside (``RoomLocked``), keeping their order.
    After two connection-level failures in a row (the second on a new connection), the
    rest fail with the same error without waiting on the database again."""
    locked: set[str] = set()
    results: list[StoredMessage | BaseException] = []
    down: BaseException | None = None  # the database is unreachable: fail the rest fast
    lost_in_a_row = 0
    for post in posts:
        result: StoredMessage | BaseException
        if down is not None:
            result = down
        elif post.room in locked:
            result = RoomLocked(post.room)
        else:
            result = _attempt(post)
            if _is_lock_timeout(result):
                locked.add(post.room)
                result = RoomLocked(post.room)
            elif (
                isinstance(result, InterfaceError | OperationalError)
                and connections[router.db_for_write(Message)].connection is None  # closed
            ):
                lost_in_a_row += 1
                if lost_in_a_row == 2:  # a new connection failed too: no use trying more
                    down = result
            else:
                lost_in_a_row = 0
        results.append(result)
    return results


def _is_lock_timeout(result: object) -> bool:
    """A PostgreSQL lock_timeout (SQLSTATE 55P03, lock_not_available)."""
    return isinstance(result, OperationalError) and (
        getattr(result.__cause__, "sqlstate", None) == "55P03"
    )


def _execute_batch(connection: Any, posts: list[_Post]) -> list[int | None]:
    """Run the storing statements of ``posts``: each post's seq, or None for no row."""
    params = [_store_statements(connection, post) for post in posts]
    seqs: list[int | None] = []
    if connection.vendor == "postgresql":
        # One round trip for the whole batch: psycopg pipelines executemany and keeps
        # each statement's RETURNING row as a result set of its own.
        connection.ensure_connection()
        # The raw psycopg cursor: Django's executemany() has no ``returning``. Its errors
        # wrapped as Django's, as Django's own cursor would.
        with connection.wrap_database_errors, connection.connection.cursor() as cursor:
            cursor.executemany(params[0][0][0], [p[0][1] for p in params], returning=True)
            while True:
                row = cursor.fetchone()
                seqs.append(int(row[0]) if row else None)
                if not cursor.nextset():
                    break
        return seqs
    # SQLite: the driver's own cursor, the statements' placeholders turned into its ``?``
    # once. Django's cursor turns them with a regex per statement and wraps each call
    # (timing, error translation): more than SQLite's own work on these two statements
    # (cProfile of a 50-post batch: 27 of 55 µs a statement). Errors are Django's, as
    # its cursor would raise them.
    connection.ensure_connection()
    with connection.wrap_database_errors:
        cursor = connection.connection.cursor()
        try:
            for statements in params:
                for sql, args in statements:
                    cursor.execute(_qmark(sql), args)
                row = cursor.fetchone()
                seqs.append(int(row[0]) if row else None)
        finally:
            cursor.close()
    return seqs


@functools.cache
def _qmark(sql: str) -> str:
    """``sql`` with sqlite3's placeholders (the store statements have no literal ``%``)."""
    return sql.replace("%s", "?")


def _attempt(post: _Post, *, again: bool = True) -> StoredMessage | BaseException:
    try:
        return _store_one(post)
    except Exception as exc:
        # A connection-level error: close the connection so that the thread's next store
        # opens a new one. The failed store is not retried (it may have committed) unless
        # the server said it had ended the session (see _session_was_ended).
        if isinstance(exc, InterfaceError | OperationalError):
            connection = connections[router.db_for_write(Message)]
            if not _usable(connection):
                connection.close()
                if again and _session_was_ended(exc):
                    return _attempt(post, again=False)
        return exc


def _session_was_ended(exc: BaseException) -> bool:
    """PostgreSQL ended the session (SQLSTATE 57P01-57P05: terminated by an administrator,
    a restart, a crash) and said so. This is how a writer's idle connection meets a
    database restart: the statement never ran, and is run again on a new connection.
    (Only a session ended in the instant between committing and answering would store a
    message twice; with a ``client_id``, the second store finds the first.)"""
    return str(getattr(exc.__cause__, "sqlstate", "") or "").startswith("57P")


def _usable(connection: Any) -> bool:
    try:
        return connection.connection is not None and bool(connection.is_usable())
    except Exception:
        return False


# -- the statements ---------------------------------------------------------------------------


def _store_statements(connection: Any, post: _Post) -> list[tuple[str, list[Any]]]:
    """The statements that store a message: the last returns its seq, or no row when the
    room does not exist yet or already has a message with this client_id.

    The UPDATE takes the room's row lock and its next seq, so concurrent posters to one
    room queue there, and seqs are dense and commit in order. PostgreSQL does it all in
    one statement, one round trip (a data-modifying CTE); SQLite has no such CTE, so
    there it is an UPDATE, then an INSERT ... SELECT ... RETURNING (SQLite >= 3.35).
    """
    vendor = connection.vendor
    sql = _STORE_SQL.get(vendor) or _STORE_SQL.setdefault(vendor, _build_store_sql(connection))
    fields = [
        post.kind,
        post.user_id,
        post.username,
        post.text,
        post.client_id,
        connection.ops.adapt_datetimefield_value(post.created_at),
    ]
    if vendor == "postgresql":
        return [(sql[0], [post.room, post.client_id, *fields])]
    return [(sql[0], [post.room, post.client_id]), (sql[1], [*fields, post.room])]


_STORE_SQL: dict[str, tuple[str, ...]] = {}


def _build_store_sql(connection: Any) -> tuple[str, ...]:
    q = connection.ops.quote_name
    rooms, messages = q(Room._meta.db_table), q(Message._meta.db_table)
    names = ("room", "seq", "kind", "user", "username", "text", "client_id", "created_at")
    column = {field.name: field.column for field in Message._meta.concrete_fields}
    columns = ", ".join(q(column[name]) for name in names)
    values = ", ".join(["%s"] * 6)  # kind, user, username, text, client_id, created_at
    update = _take_seq_sql(connection)
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


def _take_seq_sql(connection: Any) -> str:
    """The UPDATE that takes a room's next seq (and its row lock), with parameters (room
    name, client_id). It changes no row when the room does not exist or already has a
    message with this client_id ('' is no client_id): a taken seq with no message would
    be a gap in the stream."""
    q = connection.ops.quote_name
    rooms, messages = q(Room._meta.db_table), q(Message._meta.db_table)
    column = {field.name: field.column for field in Message._meta.concrete_fields}
    room_id, client_id = q(column["room"]), q(column["client_id"])
    return (
        f"UPDATE {rooms} SET last_seq = last_seq + 1 WHERE name = %s AND NOT EXISTS "
        f"(SELECT 1 FROM {messages} m WHERE m.{room_id} = {rooms}.id "
        # NOT (... = ''), the unique index's own condition word for word: SQLite uses a
        # partial index only for a query whose WHERE contains the index's condition as
        # written, and with ``<> ''`` it searched the room's messages one by one, a cost
        # growing with the room (3.40: ~0.8 ms a post at 1,800 messages a room, measured).
        f"AND m.{client_id} = %s AND NOT (m.{client_id} = ''))"
    )


def take_seq(connection: Any, room: str, client_id: str) -> tuple[int, int] | None:
    """Take ``room``'s next seq as posting does: ``(room id, seq)``, or None when the room
    does not exist or has a message with ``client_id`` already.

    The room's row stays locked until the caller's transaction ends: call it inside
    ``transaction.atomic()``, and store the message of that seq before it commits.
    """
    sql = f"{_take_seq_sql(connection)} RETURNING id, last_seq"
    with connection.cursor() as cursor:
        cursor.execute(sql, [room, client_id])
        row = cursor.fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


# -- frames -------------------------------------------------------------------------------------


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message_frame(message: Message, room: str) -> str:
    """The wire frame of a stored message: the same bytes live and when read back.

    A message in its final state (``"edited": TS``, or a tombstone without its text), an
    edit or delete event as ``edit`` / ``delete``, a message of a user's own channel as
    ``user_message``.
    """
    kind = message.kind
    if kind in _EVENT_KINDS and not is_user_room(room):
        target = int(message.target_seq or 0)
        user = message.username or None
        ts = _timestamp(message.created_at)
        client_id = message.client_id or None
        if kind == Message.Kind.EDIT:
            event: stream_events.StreamEvent = stream_events.edit_event(
                room=room,
                seq=message.seq,
                target=target,
                text=message.text,
                user=user,
                ts=ts,
                client_id=client_id,
                deleted=message.deleted_at is not None,
            )
        else:
            event = stream_events.delete_event(
                room=room, seq=message.seq, target=target, user=user, ts=ts, client_id=client_id
            )
        return stream_events.encode(event)
    edited, deleted = message.edited_at, message.deleted_at
    if edited is None and deleted is None:
        return _frame(
            room,
            message.text,
            kind,
            message.username,
            message.created_at,
            message.seq,
            message.client_id,
        )
    return stream_events.encode(
        stream_events.final_message_event(
            room=room,
            text=message.text,
            kind=kind,  # type: ignore[arg-type]
            user=message.username or None,
            ts=_timestamp(message.created_at),
            seq=message.seq,
            client_id=message.client_id or None,
            edited=None if edited is None else _timestamp(edited),
            deleted=deleted is not None,
        )
    )


_EVENT_KINDS = frozenset((Message.Kind.EDIT, Message.Kind.DELETE))

#: The columns :func:`message_frame` reads (for ``.only()``).
FRAME_FIELDS = (
    "seq",
    "kind",
    "username",
    "text",
    "client_id",
    "created_at",
    "target_seq",
    "edited_at",
    "deleted_at",
)


def _frame(
    room: str, text: str, kind: str, username: str, created_at: datetime, seq: int, client_id: str
) -> str:
    """One encoding for a new message, from a post being stored or a row read back."""
    if is_user_room(room):
        ts = _timestamp(created_at)
        if kind == Message.Kind.DATA:
            return stream_events.encode(
                stream_events.user_message_event(seq=seq, ts=ts, data_json=text)
            )
        return stream_events.encode(stream_events.user_message_event(seq=seq, ts=ts, text=text))
    return codec.encode(
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


# -- the writer threads -------------------------------------------------------------------------


_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[StoredMessage]"]


class StreamWriter:
    """Stores posts from async code in batches, on threads that keep their connections.

    Not ``database_sync_to_async``: its ``close_old_connections()`` around each call
    makes Django health-check the connection at its next use, a ``SELECT 1`` round trip
    per stored message (half of PostgreSQL ingest, measured). A connection that fails is
    closed instead, so the thread's next store opens a new one.

    Rooms found locked (see ``STORE_LOCK_TIMEOUT_MS``) are kept in ``_locked``: room ->
    ``_LockedRoom``. New posts to such a room join its list instead of a batch, one
    thread at a time retries a due room (its first post alone), and the other threads
    store everything else. All of ``_locked`` is read and changed under ``_lock``.
    """

    def __init__(self, threads: int = WRITER_THREADS, batch_max: int = BATCH_MAX) -> None:
        self.threads = threads
        self.batch_max = batch_max
        # Units of posts (see submit), and how many posts they hold in all.
        self._queue: queue.SimpleQueue[list[tuple[_Post, _Waiter]]] = queue.SimpleQueue()
        self._waiting = 0
        self._started = 0
        self._lock = threading.Lock()
        self._locked: dict[str, _LockedRoom] = {}
        self._retrying = False
        self._local = threading.local()  # .raw: the connection given the lock timeout
        #: Batches stored, and posts in them (for tests and for watching the batch size).
        self.batches = 0
        self.posts = 0
        # A child process does not have the parent's threads: start afresh there.
        ref = weakref.ref(self)

        def after_fork_in_child() -> None:
            if (writer := ref()) is not None:
                writer._reset()

        os.register_at_fork(after_in_child=after_fork_in_child)

    async def store(self, post: _Post) -> StoredMessage:
        """Store one message (made by :func:`new_post`) on a writer thread."""
        (future,) = self.submit([post])
        return await future

    def submit(self, posts: list[_Post]) -> list[asyncio.Future[StoredMessage]]:
        """Queue ``posts`` (made by :func:`new_post`) for a writer thread now, as one unit:
        they go into one batch together, in this order. One future per post, its stored
        message or its error. Raises StoreBusyError at once, for all of them, when
        ``STORE_QUEUE_LIMIT`` posts are waiting.

        A unit is how a socket keeps the order of its own posts with several writer
        threads: it has one unit at a time in the queue (``post_line.PostLine``), so
        two of its posts are never in two batches stored side by side.
        """
        waiting = self._waiting
        if self._locked:
            with self._lock:
                waiting += sum(len(entry.posts) for entry in self._locked.values())
        limit = roomcast_settings.STORE_QUEUE_LIMIT
        if waiting >= limit:
            raise StoreBusyError(f"{limit} messages are waiting to be stored; send again shortly.")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[StoredMessage]] = [loop.create_future() for _ in posts]
        with self._lock:
            self._waiting += len(posts)
        metrics.STORE_QUEUE.set(waiting + len(posts))
        unit = [(post, (loop, future)) for post, future in zip(posts, futures, strict=True)]
        self._queue.put(unit)
        if self._started < self.threads:
            self._start_threads()
        return futures

    def _reset(self) -> None:
        self._queue = queue.SimpleQueue()
        self._waiting = 0
        self._started = 0
        self._lock = threading.Lock()
        self._locked = {}
        self._retrying = False

    def _start_threads(self) -> None:
        with self._lock:
            if connections[router.db_for_write(Message)].vendor == "sqlite":
                self.threads = 1
            while self._started < self.threads:
                self._started += 1
                threading.Thread(
                    target=self._run, name=f"roomcast-writer-{self._started}", daemon=True
                ).start()

    def start(self) -> None:
        """Start the writer threads now, each opening its database connection, so that
        the first posts do not wait for connections (called at server start-up)."""
        if self._started < self.threads:
            self._start_threads()

    def _run(self) -> None:
        self._connect()
        while True:
            try:
                batch, room = self._next_batch()
                if room is not None:
                    try:
                        self._store(batch, retry=room)
                    finally:
                        self._retry_done(room)
                elif batch:
                    self._store(batch)
            except Exception:  # a bug: keep the thread, which the posts depend on
                logger.exception("The roomcast writer thread failed")
                time.sleep(0.1)

    def _next_batch(self) -> tuple[list[tuple[_Post, _Waiter]], str | None]:
        """The next posts to store, and the room when they are a locked room's posts due
        to be tried again (one thread at a time does that). Empty when this thread woke
        only because a locked room is due soon."""
        now = time.monotonic()
        next_due = None
        with self._lock:
            if not self._retrying and self._locked:
                room, entry = min(self._locked.items(), key=lambda kv: kv[1].due)
                if entry.due <= now:
                    self._retrying = True
                    entry.due = math.inf  # being retried: posts still join its list
                    posts, entry.posts = entry.posts, []
                    return posts, room
                next_due = entry.due
        try:
            timeout = None if next_due is None else max(0.0, next_due - now)
            batch = self._queue.get(timeout=timeout)
        except queue.Empty:
            return [], None
        with contextlib.suppress(queue.Empty):
            while len(batch) < self.batch_max:  # a unit stays whole: may pass it by one unit
                batch += self._queue.get_nowait()
        with self._lock:
            self._waiting -= len(batch)
        return batch, None

    def _retry_done(self, room: str) -> None:
        with self._lock:
            self._retrying = False
            entry = self._locked.get(room)
            if entry is not None and entry.due == math.inf:  # nothing was set aside again
                if entry.posts:  # joined meanwhile: try them now, the lock may be gone
                    entry.due = time.monotonic()
                else:
                    del self._locked[room]

    def _store(self, batch: list[tuple[_Post, _Waiter]], retry: str | None = None) -> None:
        now = time.monotonic()
        if retry is None and self._locked:
            with self._lock:  # posts to a room known to be locked join its list
                kept = []
                for item in batch:
                    entry = self._locked.get(item[0].room)
                    if entry is None:
                        kept.append(item)
                    else:
                        entry.add([item], now)
            batch = kept
            if not batch:
                return
        with self._lock:
            self.batches += 1
            self.posts += len(batch)
        metrics.STORE_QUEUE.set(self._waiting)
        self._limit_lock_waits()
        try:
            posts = [post for post, _ in batch]
            # A locked room's posts are tried alone, in order: _each_alone stops at the
            # first one that still meets the lock.
            results = _each_alone(posts) if retry else store_batch(posts)
        except Exception as exc:  # a bug: fail these posts, keep the thread
            logger.exception("The roomcast writer thread failed to store a batch")
            results = [exc] * len(batch)
        metrics.batch_stored(posts, results)
        now = time.monotonic()
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        set_aside: dict[str, list[tuple[_Post, _Waiter]]] = {}
        give_up = roomcast_settings.STORE_LOCKED_GIVE_UP_SECS
        for (post, waiter), result in zip(batch, results, strict=True):
            if isinstance(result, RoomLocked):
                if post.locked_since is None or now - post.locked_since < give_up:
                    set_aside.setdefault(post.room, []).append((post, waiter))
                    continue
                result = StoreBusyError(
                    f"The room has been locked by another transaction for {give_up:g} s; "
                    "send again later."
                )
            by_loop.setdefault(waiter[0], []).append((waiter[1], result))
        if set_aside:
            with self._lock:
                for room, items in set_aside.items():
                    entry = self._locked.setdefault(room, _LockedRoom())
                    entry.add(items, now)
                    entry.due = now + LOCKED_RETRY_SECS
        for loop, settled in by_loop.items():  # one wake-up per loop per batch
            with contextlib.suppress(RuntimeError):  # that loop has closed
                loop.call_soon_threadsafe(_settle, settled)

    def _connect(self) -> None:
        """Open this thread's connection ahead of its first post (a cold connection cost
        the first post after start-up tens of milliseconds on PostgreSQL, measured)."""
        try:
            connections[router.db_for_write(Message)].ensure_connection()
        except Exception:  # the database is down: the first batch will say so
            logger.debug("Could not connect ahead of the first post", exc_info=True)
        self._limit_lock_waits()

    def _limit_lock_waits(self) -> None:
        """Give this thread's PostgreSQL connection ``STORE_LOCK_TIMEOUT_MS`` (once per
        connection: the setting lasts for its session)."""
        connection = connections[router.db_for_write(Message)]
        if connection.vendor != "postgresql":
            return
        try:
            connection.ensure_connection()
            if self._local.__dict__.get("raw") is not connection.connection:
                timeout = int(roomcast_settings.STORE_LOCK_TIMEOUT_MS)
                with connection.cursor() as cursor:
                    cursor.execute(f"SET lock_timeout = {timeout}")
                    # Told apart in pg_stat_activity (and by the tests).
                    cursor.execute("SET application_name = 'roomcast-writer'")
                self._local.raw = connection.connection
        except Exception:  # the database is down: the batch will fail and say so
            logger.debug("Could not set lock_timeout", exc_info=True)


class _LockedRoom:
    """A room found locked: its posts set aside, in arrival order, and when to retry."""

    __slots__ = ("due", "posts")

    def __init__(self) -> None:
        self.due = 0.0
        self.posts: list[tuple[_Post, _Waiter]] = []

    def add(self, items: list[tuple[_Post, _Waiter]], now: float) -> None:
        for post, _ in items:
            if post.locked_since is None:
                post.locked_since = now  # its give-up clock starts when it is set aside
        self.posts = sorted(self.posts + items, key=lambda item: item[0].number)


def _settle(settled: list[tuple[asyncio.Future[StoredMessage], Any]]) -> None:
    for future, result in settled:
        if future.done():  # cancelled: the poster went away (its message is stored)
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


#: The process's writer.
writer = StreamWriter()
