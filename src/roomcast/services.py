"""Domain: rooms, posting to a room's stream, history, joining and leaving.

Layer: services. Uses the models and ``fanout``/``hub``; never touches a socket (the
consumer hands in its ASGI ``send`` and gets a :class:`~roomcast.hub.Member` back).

Storing comes before publishing, always: a message gets its room's next seq in the
transaction that stores it, and is published after that transaction commits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.db import router

from . import access, cursors, fanout, presence
from .conf import roomcast_settings
from .exceptions import PermissionDeniedError, RefusedError
from .hub import CatchUp, Connection, Hub, Member, Send, connection_origin, get_hub
from .models import Message, Room
from .protocol import CloseCode, codec
from .stream import StoredMessage as StoredMessage
from .stream import message_frame, new_post, writer
from .stream import store_message as store_message

logger = logging.getLogger(__name__)


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


async def apost_message(room: str, text: str, **kwargs: Any) -> StoredMessage:
    """Store a message, then publish it (async twin of :func:`post_message`)."""
    stored = await writer.store(new_post(room, text, **kwargs))
    await apublish(stored)
    return stored


async def apublish(stored: StoredMessage) -> None:
    """Publish a message just stored (nothing for a duplicate: it was published when
    it was first stored). Never raises (see ``fanout.publish_stored``)."""
    if not stored.duplicate:
        await fanout.publish_stored(stored.room, layer_message(stored))


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
    made = Hub(
        fanout.get_layer(),
        DatabaseLoader(),
        fanout.room_group,
        position_check_secs=roomcast_settings.POSITION_CHECK_SECS,
        recent_count=roomcast_settings.HISTORY_COUNT,
        linger_secs=roomcast_settings.ROOM_LINGER_SECS,
    )
    made.presence = presence.Tracker(made, made.layer)
    return made


def hub() -> Hub:
    """This event loop's hub (made on first use)."""
    return get_hub(_make_hub)


#: What a socket is asked about when it joins; the answers are kept on ``Member.rights``
#: (posts and history frames read them there, not from the database).
SOCKET_ACTIONS: tuple[access.Action, ...] = ("join", "read", "post")

#: Close reasons for 4403 (docs/protocol.md): refused at join, and lost while connected.
NOT_ALLOWED_REASON = "not allowed in this room"
REVOKED_REASON = "not allowed in this room any more"

# A member's rights while its join decides them: no action (so nothing is allowed), and
# told apart from a decision by identity (see join_room).
_UNDECIDED: frozenset[str] = frozenset({"undecided"})

_rights = access.rights_from


def decide_rights(identity: access.Identity, room: str) -> frozenset[str]:
    """The actions of :data:`SOCKET_ACTIONS` that ``identity`` may do in ``room`` (sync;
    asks the access policy, so it may read the database)."""
    return _rights(access.check_many(identity, room, SOCKET_ACTIONS))


async def arights(identity: access.Identity, room: str) -> frozenset[str]:
    """Async twin of :func:`decide_rights` (one thread hop for all the actions)."""
    return _rights(await access.acheck_many(identity, room, SOCKET_ACTIONS))


def _fresh_identity(identity: access.Identity) -> access.Identity | None:
    """``identity`` as the database has it now: None if its user is gone or inactive."""
    if identity.user_id is None:
        return identity
    user = get_user_model()._default_manager.filter(pk=identity.user_id).first()
    if user is None or not user.is_active:
        return None
    return access.identity_for(
        user,
        via=identity.via,
        expires_at=identity.expires_at,
        session_key=identity.session_key,
    )


async def arecheck(member: Member) -> bool:
    """Decide again what ``member`` may do in its room: its rights may have changed.

    Reloads the member's user (a deactivated or deleted user loses everything, a user
    no longer staff loses what staff alone had), asks the policy again and replaces
    ``member.identity`` and ``member.rights``. A member that may no longer join is closed
    with 4403 :data:`REVOKED_REASON`. Returns whether the member is still in the room.
    For ``roomcast.revocation``; one thread hop, so call it per affected member only.
    """
    if member.closed:
        return False

    def decide() -> tuple[access.Identity | None, frozenset[str]]:
        identity = _fresh_identity(member.identity)
        if identity is None:
            return None, frozenset()
        return identity, decide_rights(identity, member.room)

    identity, rights = await database_sync_to_async(decide)()
    if identity is not None:
        member.identity = identity
    member.rights = rights
    if "join" not in rights:
        member.close(CloseCode.FORBIDDEN, REVOKED_REASON)
        return False
    return True


def new_connection(send: Send, *, v1: bool, identity: access.Identity, mux: bool) -> Connection:
    """A socket's connection, with the buffer bounds of the settings."""
    connection = Connection(
        send,
        max_frames=roomcast_settings.OUTBOUND_BUFFER_FRAMES,
        max_bytes=roomcast_settings.OUTBOUND_BUFFER_BYTES,
        v1=v1,
        identity=identity,
        mux=mux,
    )
    if mux:
        connection.on_end = leave_room
    return connection


async def join_room(
    room: str,
    *,
    send: Send | None = None,
    since: int | None,
    v1: bool = True,
    user: Any = None,
    identity: access.Identity | None = None,
    connection: Connection | None = None,
) -> Member:
    """Make ``send``'s socket a member of ``room`` and queue its catch-up.

    ``identity`` is who the socket is (made from ``user`` when not given). What it may
    do is decided here, once (``member.rights``, see :class:`~roomcast.hub.Member`):
    without ``join`` nothing is sent and :class:`PermissionDeniedError` is raised;
    without ``read`` the socket gets the live stream only (no history, no ``since``
    replay: ``recovered`` is false).

    The decision is made after the member is registered with the hub (it holds live
    frames until its catch-up is sent), so a change of rights committed while it joins
    either is seen by the decision or finds the member to re-check (:func:`arecheck`).

    Raises:
        PermissionDeniedError: ``identity`` may not join ``room``.

    After calling this, you must call :func:`leave_room` when the socket closes.
    """
    if connection is None:
        if identity is None:
            identity = access.identity_for(user)
        assert send is not None, "join_room needs a send or a connection"
        connection = new_connection(send, v1=v1, identity=identity, mux=False)
    identity = connection.identity
    v1 = connection.v1
    member = Member(connection=connection, room=room)
    connection.subs[room] = member
    member.rights = _UNDECIDED
    cursors_wanted = connection.mux and identity.authenticated

    the_hub = hub()
    replay_limit = roomcast_settings.REPLAY_LIMIT

    def decide_and_read() -> tuple[frozenset[str], Any]:
        rights = decide_rights(identity, room)
        return rights, (read_catch_up(room, since) if "join" in rights else None)

    read_state: dict[str, Any] = {}

    async def catch_up() -> CatchUp:
        # One thread hop when the hub's recent frames cannot answer: the decision and
        # the read together. When they can, the decision's hop comes first, and recent()
        # is asked after it: between recent() and the member's start, no await.
        cached = None
        known = access.known_rights(identity, room)  # a public room: no database at all
        if known is not None:
            rights = known
        elif the_hub.recent(room, since, replay_limit=replay_limit) is None:
            rights, cached = await database_sync_to_async(decide_and_read)()
        else:
            rights = await arights(identity, room)
        if member.rights is _UNDECIDED:
            member.rights = rights
        # else a re-check (arecheck) ran while this decision was on its way, for a change
        # this decision may have read before: the re-check's answer stands.
        if "join" in member.rights and cached is None:
            cached = await _read_catch_up(the_hub, room, since)
        rights = member.rights  # the latest answer, after every await
        if "join" not in rights or cached is None:
            raise PermissionDeniedError(await _refusal(identity, room))
        last_seq, frames, recovered = cached
        if "read" not in rights:
            frames, recovered = [], (None if since is None else False)
        joined: dict[str, Any] = dict(
            codec.joined_event(room=room, seq=last_seq, recovered=recovered)
        )
        if cursors_wanted and "read" in rights:
            read_seq, unread = read_state.get(room, (0, 0))
            joined["read_seq"], joined["unread"] = read_seq, unread
        preface = [codec.encode(joined)]
        return CatchUp(preface=preface if v1 else [], frames=frames, last_seq=last_seq)

    if cursors_wanted:
        read_state = await cursors.aread_state(identity, [room])
    try:
        await the_hub.join(member, catch_up)
    except BaseException:
        if connection.subs.get(room) is member:
            del connection.subs[room]
        raise
    return member


async def _refusal(identity: access.Identity, room: str) -> str:
    """Why ``identity`` may not join ``room``: its ban, if one keeps it out (the user
    learns it is banned and until when), else :data:`NOT_ALLOWED_REASON` (whether the
    room exists or not: that does not leak)."""
    ban = await access.abanned(identity.user_id, room)
    if ban is None:
        return NOT_ALLOWED_REASON
    from .revocation import ban_reason  # (revocation imports the hub, as this does)

    return ban_reason(ban)


async def _read_catch_up(
    the_hub: Hub, room: str, since: int | None
) -> tuple[int, list[tuple[int, str]], bool | None]:
    """A joining member's catch-up: from the hub's recent frames when they hold it, else
    from the database (:func:`read_catch_up`)."""
    cached = the_hub.recent(room, since, replay_limit=roomcast_settings.REPLAY_LIMIT)
    if cached is None:
        cached = await database_sync_to_async(read_catch_up)(room, since)
    return cached


async def join_user_stream(connection: Connection, since: int | None) -> Member:
    """Subscribe a /ws/ connection of a user to the user's own stream (``user/<id>``),
    queueing the ``connected`` frame and the catch-up after ``since`` first.

    No access check: a user may always read their own stream.
    """
    identity = connection.identity
    room = fanout.user_room(identity.user_id)
    member = Member(connection=connection, room=room, rights=frozenset({"join", "read"}))
    connection.subs[room] = member
    the_hub = hub()

    async def catch_up() -> CatchUp:
        last_seq, frames, recovered = await _read_catch_up(the_hub, room, since)
        connected = codec.connected_event(
            user=identity.name, user_seq=last_seq, recovered=recovered
        )
        return CatchUp(preface=[codec.encode(connected)], frames=frames, last_seq=last_seq)

    await the_hub.join(member, catch_up)
    return member


def presence_frame(room: str) -> str:
    """The encoded ``presence`` frame of ``room`` as this process knows it."""
    tracker = hub().presence
    if tracker is None:
        raise RefusedError("Presence is not available on this server.")
    return codec.encode(tracker.snapshot(room))


# -- typing -----------------------------------------------------------------------------------

#: When a typing frame was last forwarded, per (room, user id or guest name), in this
#: process. Bounded: past TYPING_MEMORY entries, those older than the interval go.
_typing: dict[tuple[str, Any], float] = {}
TYPING_MEMORY = 100_000


async def typing(member: Member) -> bool:
    """Forward ``member``'s user is typing to the room's other /ws/ members on every
    process, unless that user's last one in the room was under ``TYPING_INTERVAL_SECS``
    ago (then nothing happens). Returns whether it was forwarded."""
    identity = member.identity
    key = (member.room, identity.user_id if identity.authenticated else identity.name)
    now = time.monotonic()
    interval = roomcast_settings.TYPING_INTERVAL_SECS
    if now - _typing.get(key, -interval) < interval:
        return False
    if len(_typing) >= TYPING_MEMORY:
        for old in [k for k, at in _typing.items() if now - at >= interval]:
            del _typing[old]
        if len(_typing) >= TYPING_MEMORY:
            return False  # a flood of distinct typers: drop, it is ephemeral
    _typing[key] = now
    frame = codec.encode(codec.typing_event(room=member.room, user=identity.name))
    await fanout.publish(
        member.room,
        {
            "type": "room.typing",
            "frame": frame,
            "user_id": identity.user_id,
            "origin": connection_origin(member.connection),
        },
    )
    return True


def leave_room(member: Member) -> None:
    """Remove a member from its room (the socket closed)."""
    hub().leave(member)
