"""Revocation: rights taken away reach live sockets within a second, on every process.

Layer: services. Uses ``access``, the user model, ``fanout`` and ``hub``; never touches a
socket except through :class:`~roomcast.hub.Member`.

Access is checked when a socket joins and remembered on its member (``Member.rights``),
not asked per post or per delivered frame. A change that takes rights away is an event,
not a poll: it publishes one control message on the control group
(:data:`roomcast.hub.CONTROL_GROUP`), which every process's hub has joined once, and each
hub acts on its own sockets:

* ``access.recheck`` (``room``, ``user_id``, either may be None but not both): the hub
  re-asks the access policy for the affected local members: those of the room, of the
  user, or of the user in the room. Members that lost ``join`` are closed with 4403
  "not allowed in this room any more"; the others get their ``rights`` replaced, so a
  member that lost only ``post`` keeps its socket and has its next post refused. Sent for
  :data:`roomcast.signals.access_changed` (a room made private, a member removed or an
  admin demoted, by ``roomcast.rooms``; a project's own ``access_changed.send``) and for
  a user who lost ``is_staff`` or ``is_superuser``.
* ``access.revoke`` (``user_id``, ``reason``, ``session``): the hub closes the user's
  local sockets with 4403 and the reason, without asking anything: for a user
  deactivated (``is_active`` False: "account deactivated"), deleted ("account
  deleted") or whose password changed ("password changed"), and, only those that came
  with one session, for a logout ("logged out"; ``session`` is a hash of the session
  key, which is a login and so never crosses
  Redis). With ``room``, only the user's subscriptions of that room end (a one-room
  socket closes; a ``/ws/`` subscription ends with ``unsubscribed`` 4403 and the socket
  goes on). With ``ban`` set, every process also forgets which users it knew to be
  ban-free (``access.forget_bans``): a ban saved (``roomcast.models.Ban``, active) sends
  one, for the room ("banned from this room") or for every socket of the user ("banned
  from this site"), with " until <time>" when it ends by itself (:func:`ban_reason`).

Bounded work. A hub queues re-checks by room (a room-wide re-check swallows the user
ones for that room) and one task per hub works through them: per room, one thread hop
asks the policy for up to :data:`RECHECK_BATCH` members, and only once per distinct user
(guests share one answer: a policy sees ``AnonymousUser`` for each of them), with the
users read again from the database in one query, so a demoted staff member or a
deactivated user is seen as they are now, not as they were at connect. Rooms and users
with no socket on a process cost that process a dictionary lookup.

What is not covered: a change made with ``QuerySet.update()`` (no model signals: send
``access_changed`` yourself), permissions and groups changed through their many-to-many
tables (the same), and a control message lost because a process was cut off from Redis
at that moment (its sockets keep what they had until they reconnect; the publisher
retries for :data:`PUBLISH_RETRY_SECS` when Redis itself is down).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import time
import weakref
from dataclasses import replace
from functools import partial
from typing import Any

from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model, user_logged_out
from django.db import router, transaction
from django.db.models.signals import post_delete, post_init, post_save

from . import access, fanout
from .hub import Hub, Member, register_control
from .models import Ban
from .protocol import CloseCode
from .protocol.room_names import is_user_room
from .signals import access_changed

logger = logging.getLogger(__name__)

__all__ = [
    "BANNED_FROM_ROOM",
    "BANNED_FROM_SITE",
    "DEACTIVATED",
    "DELETED",
    "LOGGED_OUT",
    "NO_LONGER_ALLOWED",
    "RECHECK",
    "REVOKE",
    "ban_reason",
    "check_rights",
    "connect_receivers",
    "publish_recheck",
    "publish_revoke",
    "session_digest",
]

#: Control message types (dotted, like layer messages).
RECHECK = "access.recheck"
REVOKE = "access.revoke"

#: Close reasons (all with 4403 FORBIDDEN: do not reconnect).
NO_LONGER_ALLOWED = "not allowed in this room any more"
LOGGED_OUT = "logged out"
DEACTIVATED = "account deactivated"
DELETED = "account deleted"
#: A password changed: the tokens issued before no longer verify (``auth``), and the
#: sockets they opened are closed; a session kept by ``update_session_auth_hash``
#: reconnects at once.
PASSWORD_CHANGED = "password changed"
BANNED_FROM_ROOM = "banned from this room"
BANNED_FROM_SITE = "banned from this site"

#: What a re-check asks: join (else the socket closes), read and post (kept on the member).
RECHECK_ACTIONS: tuple[access.Action, ...] = ("join", "read", "post")
#: Members of one room checked per thread hop: a room of thousands is checked in several
#: hops, so other work waiting for the database thread (joins, history pages) gets in
#: between them.
RECHECK_BATCH = 500
#: Attempts, and the first wait between them, when a re-check's database read fails.
RECHECK_ATTEMPTS = 5
RECHECK_RETRY_SECS = 0.2
#: How long a control message that could not be published (Redis down) is retried in the
#: background before it is given up (logged as an error), and how many may wait.
PUBLISH_RETRY_SECS = 60.0
MAX_PENDING_PUBLISHES = 1000

_DENIED: dict[str, bool] = dict.fromkeys(RECHECK_ACTIONS, False)


def session_digest(session_key: str) -> str:
    """What a logout publishes instead of the session key: a hash that names it."""
    digest = hashlib.blake2b(session_key.encode(), digest_size=16, person=b"roomcast-logout")
    return digest.hexdigest()


# -- deciding (sync, in a worker thread) ------------------------------------------------------


def check_rights(room: str, identities: list[access.Identity]) -> list[dict[str, bool]]:
    """The rights (:data:`RECHECK_ACTIONS`) of each identity in ``room``, as of now.

    Users are read again from the database, in one query: a user who is gone or inactive
    gets nothing, and a user's staff flags are the current ones. The policy is asked once
    per distinct user (and once for all guests); identities of one user share the
    answer's dict, which callers must not mutate. A policy that raises counts as a
    refusal (logged): when in doubt, a revocation closes.
    """
    user_ids = {identity.user_id for identity in identities if identity.user_id is not None}
    users = get_user_model()._default_manager.in_bulk(user_ids) if user_ids else {}
    answers: dict[int | None, dict[str, bool]] = {}
    rights = []
    for identity in identities:
        answer = answers.get(identity.user_id)
        if answer is None:
            answer = answers[identity.user_id] = _rights(identity, room, users)
        rights.append(answer)
    return rights


def _rights(identity: access.Identity, room: str, users: dict[Any, Any]) -> dict[str, bool]:
    if identity.user_id is not None:
        user = users.get(identity.user_id)
        if user is None or not getattr(user, "is_active", True):
            return _DENIED
        identity = replace(
            identity,
            is_staff=bool(getattr(user, "is_staff", False)),
            is_superuser=bool(getattr(user, "is_superuser", False)),
            user=user,
        )
    try:
        return access.check_many(identity, room, RECHECK_ACTIONS)
    except Exception:
        logger.exception("The access policy failed re-checking %r in room %r", identity, room)
        return _DENIED


# -- acting, in each hub ------------------------------------------------------------------------


class _Rechecks:
    """One hub's queue of re-checks and the task that works through it."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.rooms: dict[str, set[int] | None] = {}  # room -> user ids, or None: everyone
        self.users: set[int] = set()  # every room of these users
        self.task: asyncio.Task[None] | None = None

    def add(self, room: str | None, user_id: int | None) -> None:
        hub = self.hub
        if room is None:
            if user_id is None or not hub.user_members(user_id):
                return
            self.users.add(user_id)
        elif not hub.members(room):
            return
        elif user_id is None:
            self.rooms[room] = None
        elif (wanted := self.rooms.setdefault(room, set())) is not None:
            wanted.add(user_id)
        if self.task is None or self.task.done():
            self.task = hub.start_task(self.run())

    async def run(self) -> None:
        hub = self.hub
        while self.rooms or self.users:
            rooms, users = self.rooms, self.users
            self.rooms, self.users = {}, set()
            for user_id in users:
                for member in hub.user_members(user_id):
                    wanted = rooms.setdefault(member.room, set())
                    if wanted is not None:
                        wanted.add(user_id)
            for room, wanted in rooms.items():
                if is_user_room(room):
                    continue  # a user's own stream: theirs whatever their rights
                members = [
                    member
                    for member in hub.members(room)
                    if not member.closed
                    and member.identity is not None
                    and (wanted is None or member.user_id in wanted)
                ]
                for start in range(0, len(members), RECHECK_BATCH):
                    await _recheck(room, members[start : start + RECHECK_BATCH])


async def _recheck(room: str, members: list[Member]) -> None:
    identities = [member.identity for member in members]
    delay = RECHECK_RETRY_SECS
    for attempt in range(1, RECHECK_ATTEMPTS + 1):
        try:
            answers = await database_sync_to_async(check_rights)(room, identities)
            break
        except Exception:
            if attempt == RECHECK_ATTEMPTS:
                logger.exception(
                    "Re-checking %d sockets of room %r failed %d times; they keep their "
                    "rights until they reconnect",
                    len(members),
                    room,
                    attempt,
                )
                return
            logger.warning("Re-checking room %r failed; retrying", room, exc_info=True)
            await asyncio.sleep(delay)
            delay *= 2
    for member, rights in zip(members, answers, strict=True):
        if member.closed:
            continue
        if rights.get("join"):
            member.rights = access.rights_from(rights)
        else:
            member.close(CloseCode.FORBIDDEN, NO_LONGER_ALLOWED)


_rechecks: weakref.WeakKeyDictionary[Hub, _Rechecks] = weakref.WeakKeyDictionary()


def _on_recheck(hub: Hub, message: dict[str, Any]) -> None:
    room, user_id = message.get("room"), message.get("user_id")
    if room is not None:  # its visibility may have changed: joins read it again
        access.forget_visibility(str(room))
    queue = _rechecks.get(hub)
    if queue is None:
        queue = _rechecks[hub] = _Rechecks(hub)
    queue.add(
        None if room is None else str(room),
        None if user_id is None else int(user_id),
    )


def _on_revoke(hub: Hub, message: dict[str, Any]) -> None:
    user_id = int(message["user_id"])
    reason = str(message.get("reason") or NO_LONGER_ALLOWED)
    session = message.get("session")
    room = message.get("room")
    if message.get("ban"):
        access.forget_bans()
    for member in hub.user_members(user_id):
        if session is not None:
            key = getattr(member.identity, "session_key", None)
            if not key or session_digest(key) != session:
                continue
        if room is None:
            member.connection.close(CloseCode.FORBIDDEN, reason)  # the whole socket
        elif member.room == room:
            member.close(CloseCode.FORBIDDEN, reason)  # a /ws/ socket keeps its others


register_control(RECHECK, _on_recheck)
register_control(REVOKE, _on_revoke)


# -- publishing -----------------------------------------------------------------------------------


def publish_recheck(*, room: str | None = None, user_id: int | None = None) -> None:
    """Have every process re-check its sockets in ``room``, of ``user_id``, or both (sync).

    What the ``access_changed`` receiver does; never raises (a failure is logged).
    """
    if room is None and user_id is None:
        raise ValueError("A re-check needs a room, a user_id or both.")
    _publish({"type": RECHECK, "room": room, "user_id": user_id})


def publish_revoke(
    user_id: int,
    *,
    reason: str,
    session_key: str | None = None,
    room: str | None = None,
    ban: bool = False,
) -> None:
    """Have every process close ``user_id``'s sockets (only those of ``session_key``, if
    given) with 4403 and ``reason``; with ``room``, end only the user's subscriptions of
    that room; ``ban``: a ban was saved (sync; never raises)."""
    message: dict[str, Any] = {"type": REVOKE, "user_id": user_id, "reason": reason}
    if session_key is not None:
        message["session"] = session_digest(session_key)
    if room is not None:
        message["room"] = room
    if ban:
        message["ban"] = True
    _publish(message)


def ban_reason(ban: Ban) -> str:
    """The close reason of a ban: "banned from this room" or "banned from this site",
    with " until 2026-11-30T03:15Z" (UTC, to the minute) when it ends by itself."""
    reason = BANNED_FROM_SITE if ban.room_id is None else BANNED_FROM_ROOM
    if ban.until is None:
        return reason
    until = ban.until.astimezone(datetime.UTC)
    if until.second or until.microsecond:  # rounded up: never earlier than the real end
        until = until.replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)
    return f"{reason} until {until:%Y-%m-%dT%H:%MZ}"


def _publish(message: dict[str, Any]) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:  # sent from async code (not through sync_to_async): publish in the background
        task = loop.create_task(_apublish(message))
        _background.add(task)
        task.add_done_callback(_background.discard)
        return
    try:
        fanout.run_sync(_apublish, message)
    except Exception:
        logger.exception("Publishing %r failed: live sockets keep their rights", message)


async def _apublish(message: dict[str, Any]) -> None:
    """Publish ``message``; if the layer fails, retry in the background."""
    try:
        await fanout.publish_control(message)
    except Exception:
        logger.warning("Publishing %r failed; retrying in the background", message, exc_info=True)
        if len(_background) >= MAX_PENDING_PUBLISHES:
            logger.error("Too many revocations waiting to be published; dropping %r", message)
            return
        task = asyncio.get_running_loop().create_task(_retry(message))
        _background.add(task)
        task.add_done_callback(_background.discard)


async def _retry(message: dict[str, Any]) -> None:
    deadline = time.monotonic() + PUBLISH_RETRY_SECS
    delay = 0.2
    while True:
        await asyncio.sleep(delay)
        try:
            await fanout.publish_control(message)
        except Exception:
            if time.monotonic() + delay > deadline:
                logger.error(
                    "Gave up publishing %r after %.0f s: live sockets keep their rights "
                    "until they reconnect",
                    message,
                    PUBLISH_RETRY_SECS,
                )
                return
            delay = min(delay * 2, 5.0)
        else:
            logger.info("Published %r after retrying", message)
            return


_background: set[asyncio.Task[None]] = set()


# -- receivers ------------------------------------------------------------------------------------

#: User flags whose loss takes rights away; remembered when a user is loaded.
_FLAGS = ("is_active", "is_staff", "is_superuser", "password")
_LOADED = "_roomcast_flags"


def _on_access_changed(
    sender: Any, room: str | None = None, user_id: int | None = None, **kwargs: Any
) -> None:
    if room is None and user_id is None:
        logger.warning("access_changed sent without room or user_id; ignored")
        return
    if room is not None:  # here at once; other processes when the re-check reaches them
        access.forget_visibility(room)
    publish_recheck(room=room, user_id=user_id)


def _flags(instance: Any) -> tuple[Any, ...]:
    # From __dict__: a deferred field is not loaded just for this (None: unknown).
    return tuple(instance.__dict__.get(name) for name in _FLAGS)


def _on_user_init(sender: Any, instance: Any, **kwargs: Any) -> None:
    instance.__dict__[_LOADED] = _flags(instance)


def _after_commit(func: Any, *args: Any, **kwargs: Any) -> None:
    # Model signals come inside the saving transaction: publish once it commits (a
    # re-check reads the database), and not at all if it rolls back.
    transaction.on_commit(
        partial(func, *args, **kwargs), using=router.db_for_write(get_user_model())
    )


def _on_user_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    before = instance.__dict__.get(_LOADED) or (None,) * len(_FLAGS)
    now = instance.__dict__[_LOADED] = _flags(instance)
    if created:
        return
    was_active, was_staff, was_superuser, had_password = before
    is_active, is_staff, is_superuser, password = now
    if is_active is False and was_active is not False:
        _after_commit(publish_revoke, instance.pk, reason=DEACTIVATED)
    elif had_password is not None and password is not None and password != had_password:
        _after_commit(publish_revoke, instance.pk, reason=PASSWORD_CHANGED)
    elif (was_staff is not False and is_staff is False) or (
        was_superuser is not False and is_superuser is False
    ):
        # Demoted (or not known to have been staff): what staff may do is asked again.
        _after_commit(publish_recheck, user_id=instance.pk)


def _on_user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    if instance.pk is not None:
        _after_commit(publish_revoke, instance.pk, reason=DELETED)


def _on_ban_saved(sender: Any, instance: Ban, **kwargs: Any) -> None:
    # Here at once (a join on this process must not go by the old set), and on every
    # process when the revoke reaches it, after the commit (a re-check reads the ban).
    access.forget_bans()
    if not instance.in_force:
        return  # ended (lifted, or saved with an end in the past): nothing to close
    room = instance.room.name if instance.room is not None else None
    _after_commit(_publish_ban, instance.user_id, reason=ban_reason(instance), room=room)


def _publish_ban(user_id: int, *, reason: str, room: str | None) -> None:
    access.forget_bans()  # again: a read of the bans may have run before the commit
    publish_revoke(user_id, reason=reason, room=room, ban=True)


def _on_logged_out(sender: Any, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if user is not None and getattr(user, "pk", None) is not None and session_key:
        publish_revoke(user.pk, reason=LOGGED_OUT, session_key=session_key)


def connect_receivers() -> None:
    """Connect the receivers (called by ``RoomcastConfig.ready``; idempotent)."""
    user_model = get_user_model()
    access_changed.connect(_on_access_changed, dispatch_uid="roomcast.revocation")
    post_init.connect(_on_user_init, sender=user_model, dispatch_uid="roomcast.revocation")
    post_save.connect(_on_user_saved, sender=user_model, dispatch_uid="roomcast.revocation")
    post_delete.connect(_on_user_deleted, sender=user_model, dispatch_uid="roomcast.revocation")
    user_logged_out.connect(_on_logged_out, dispatch_uid="roomcast.revocation")
    post_save.connect(_on_ban_saved, sender=Ban, dispatch_uid="roomcast.revocation.ban")
