"""Who a client is, and what it may do in a room: the one place access is decided.

Layer: services (domain). Reads the models; never touches a socket or the channel layer.

A connection's identity is resolved once, when it connects (session cookie, a token in
the ``Authorization`` header, or a token in its first frame: ``roomcast.security``),
into an :class:`Identity`. Every decision then goes through :func:`check` /
:func:`acheck`: "may this identity do ``action`` in ``room``". Transports ask on join
and remember the answer for posts; a change that takes rights away publishes a re-check
(``roomcast.revocation``), so a live socket loses what it lost within a second, without
a database read per delivered frame or per post.

The built-in policy (``ROOMCAST["ACCESS_POLICY"] = None``):

==============  =====================  ==========================================
room            join / read            post
==============  =====================  ==========================================
public          everyone               logged-in users; guests if ALLOW_ANONYMOUS
private         members, staff         members, staff
read-only       everyone               staff, room admins, holders of the
                                       ``roomcast.post_in_read_only`` permission
==============  =====================  ==========================================

``moderate`` (edit or delete others' messages, manage members) is for staff and room
admins everywhere. A room that does not exist yet is public: the seed's rooms come into
being when they are first used. Inactive users get nothing (they cannot connect either).

Bans come first, whatever the policy (the built-in one or a project's): a user banned
from a room (``roomcast.models.Ban``) may do nothing there, and one banned from the site
nothing anywhere, staff included, until the ban's end time passes, which is compared
with the clock when deciding (no job lifts it).

A project replaces the policy with one callable, ``ROOMCAST["ACCESS_POLICY"] =
"myapp.access.check"``, called as ``check(user, room, action)`` with the Django user
(``AnonymousUser`` for guests), the room name and one of :data:`ACTIONS`, returning True
or False. It runs in a worker thread and may use the ORM.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.db.models import F, Q
from django.utils import timezone
from django.utils.module_loading import import_string

from .conf import roomcast_settings
from .models import Ban, Room, RoomMember

__all__ = [
    "ACTIONS",
    "Action",
    "Identity",
    "abanned",
    "acheck",
    "active_bans",
    "anonymous",
    "ban_free",
    "banned",
    "check",
    "check_many",
    "forget_bans",
    "forget_visibility",
    "identity_for",
    "in_force",
    "known_rights",
    "policy",
]

Action = Literal["join", "read", "post", "moderate"]
#: What :func:`check` is asked about: ``join`` (subscribe, get the live stream and the
#: catch-up), ``read`` (history pages, ``since`` replays, the HTTP history), ``post``,
#: ``moderate``.
ACTIONS: tuple[Action, ...] = ("join", "read", "post", "moderate")

#: A guest's name: "guest-" and this many hex digits (enough that two guests in a room
#: rarely share one; the name is for reading, not for telling accounts apart).
GUEST_SUFFIX_HEX = 6


@dataclass(frozen=True, kw_only=True, slots=True)
class Identity:
    """Who a connection is, resolved once when it connects.

    ``user_id`` is None for a guest. ``expires_at`` is the token's expiry (Unix time) for
    a connection that authenticated with a token, else None. ``session_key`` is the
    Django session it came with (so a logout can close it).
    """

    user_id: int | None
    name: str
    is_staff: bool = False
    is_superuser: bool = False
    via: Literal["session", "token", "anonymous"] = "anonymous"
    expires_at: float | None = None
    session_key: str | None = None
    # The Django user behind it, for a project's policy; not compared or shown.
    user: Any = field(default=None, compare=False, repr=False)

    @property
    def authenticated(self) -> bool:
        """True for a user account, False for a guest."""
        return self.user_id is not None

    def django_user(self) -> Any:
        """The Django user (``AnonymousUser`` for a guest), loaded if not at hand."""
        if self.user is not None:
            return self.user
        if self.user_id is None:
            return AnonymousUser()
        return get_user_model()._default_manager.get(pk=self.user_id)


def anonymous(name: str | None = None) -> Identity:
    """A guest: ``name``, or a new ``guest-xxxxxx``."""
    return Identity(user_id=None, name=name or f"guest-{secrets.token_hex(GUEST_SUFFIX_HEX // 2)}")


def identity_for(
    user: Any,
    *,
    via: Literal["session", "token", "anonymous"] = "session",
    expires_at: float | None = None,
    session_key: str | None = None,
    guest_name: str | None = None,
) -> Identity:
    """The identity of a Django user (``AnonymousUser`` or None: a guest)."""
    if user is None or not getattr(user, "is_authenticated", False):
        return anonymous(guest_name)
    return Identity(
        user_id=user.pk,
        name=user.get_username(),
        is_staff=bool(user.is_staff),
        is_superuser=bool(user.is_superuser),
        via=via,
        expires_at=expires_at,
        session_key=session_key,
        user=user,
    )


# -- the policy ---------------------------------------------------------------------------


# -- what this process knows of rooms' visibility ------------------------------------------
#
# Most joins are to public rooms, and the built-in policy answers those from the room's
# visibility alone: guests and users may join and read, users post, guests post while
# ALLOW_ANONYMOUS. Asking the database per join cost a thread hop and a query each, and
# brought connections accepted per second from 1,381 to 339 in benchmark (c). So each
# process remembers which rooms it last read as public, for VISIBILITY_CACHE_SECS at most;
# a visibility change forgets the room at once, here (access_changed) and on every other
# process (the re-check it publishes, roomcast.revocation). The epoch keeps a read that
# was under way during a change from remembering what it read before the change.

#: Longest a room is remembered as public without reading it again: bounds how long a
#: change made behind roomcast's back (a queryset update, no signal) goes unseen by joins.
VISIBILITY_CACHE_SECS = 5.0
#: Rooms remembered at most (the whole memory is dropped past it: simple, and rare).
VISIBILITY_CACHE_ROOMS = 10_000

_public: dict[str, float] = {}  # room -> when it was read as public (time.monotonic())
_epoch = 0


def forget_visibility(room: str | None = None) -> None:
    """Forget what this process read of ``room``'s visibility (of every room if None)."""
    global _epoch
    _epoch += 1
    if room is None:
        _public.clear()
    else:
        _public.pop(room, None)


def _remember(room: str, visibility: str, epoch: int) -> None:
    if epoch != _epoch:  # a change came while this was read: what was read may be old
        return
    if visibility == Room.Visibility.PUBLIC:
        if len(_public) >= VISIBILITY_CACHE_ROOMS:
            _public.clear()
        _public[room] = time.monotonic()
    else:
        _public.pop(room, None)


# -- what this process knows of bans ----------------------------------------------------------
#
# Bans are rare, and most decisions are for users who have none: each process remembers
# which users had an active ban when it last read them all (one query, at most every
# BAN_CACHE_SECS, made by a decision that needed the database anyway), so a user absent
# from that set is known to be ban-free without a query, and a public room's join stays
# free of the database (known_rights). A user in the set is checked in the database each
# time (a ban that ended, or a room ban elsewhere, only costs that query). A ban saved
# anywhere forgets the set here at once and on every other process (the revoke it
# publishes, roomcast.revocation); the epoch keeps a read that was under way then from
# remembering what it read before.

#: Longest the set of banned users is trusted without reading it again: bounds how long a
#: ban made behind roomcast's back (a queryset update, no signal) goes unseen by joins.
BAN_CACHE_SECS = 5.0
#: Banned users remembered at most. Past it the set is not kept, and every decision for
#: a user account reads its bans from the database (correct, one query more).
BAN_CACHE_USERS = 10_000

_banned_users: tuple[float, frozenset[int]] | None = None  # (monotonic time read, user ids)
_ban_epoch = 0


def forget_bans() -> None:
    """Forget which users this process read as banned (a ban was saved somewhere)."""
    global _ban_epoch, _banned_users
    _ban_epoch += 1
    _banned_users = None


def ban_free(user_id: int | None) -> bool:
    """Whether ``user_id`` is known, without the database, to have no active ban (guests
    cannot be banned). False means "ask the database" (:func:`banned`)."""
    if user_id is None:
        return True
    known = _known_banned()
    return known is not None and user_id not in known


def _known_banned() -> frozenset[int] | None:
    """The users with an active ban, as last read, while that read is fresh enough."""
    known = _banned_users
    if known is None or time.monotonic() - known[0] > BAN_CACHE_SECS:
        return None
    return known[1]


def _refresh_banned_users() -> None:
    global _banned_users
    epoch = _ban_epoch
    ids = set(
        in_force(Ban.objects.all())
        .order_by()  # no ordering column in the DISTINCT
        .values_list("user_id", flat=True)
        .distinct()[: BAN_CACHE_USERS + 1]
    )
    if epoch == _ban_epoch and len(ids) <= BAN_CACHE_USERS:
        _banned_users = (time.monotonic(), frozenset(ids))


def in_force(bans: Any) -> Any:
    """The bans of the queryset ``bans`` that are in force now."""
    return bans.filter(Q(until__isnull=True) | Q(until__gt=timezone.now()))


def active_bans(user_id: int, room: str | None = None) -> list[Ban]:
    """``user_id``'s bans in force now: from the site, and from ``room`` (from the site
    only if None); the one that lasts longest first (permanent ones before all)."""
    bans = in_force(Ban.objects.filter(user_id=user_id)).select_related("room")
    where = Q(room__isnull=True) | Q(room__name=room) if room else Q(room__isnull=True)
    return list(bans.filter(where).order_by(F("until").desc(nulls_first=True), "-pk"))


def banned(user_id: int | None, room: str | None = None) -> Ban | None:
    """The ban that keeps ``user_id`` out of ``room`` now (out of the site when ``room``
    is None): the one that lasts longest, or None. Uses the database unless
    :func:`ban_free` already knows."""
    if user_id is None or ban_free(user_id):
        return None
    if _known_banned() is None:
        _refresh_banned_users()
        if ban_free(user_id):
            return None
    bans = active_bans(user_id, room)
    return bans[0] if bans else None


async def abanned(user_id: int | None, room: str | None = None) -> Ban | None:
    """Async :func:`banned`: no thread hop when :func:`ban_free` already knows."""
    if user_id is None or ban_free(user_id):
        return None
    return await database_sync_to_async(banned)(user_id, room)


def known_rights(identity: Identity, room: str) -> frozenset[str] | None:
    """A socket's rights (join, read, post) when they can be told without the database:
    the built-in policy, a user known to have no ban, and a room this process read as
    public lately. Else None."""
    if roomcast_settings.ACCESS_POLICY or not ban_free(identity.user_id):
        return None
    read_at = _public.get(room)
    if read_at is None or time.monotonic() - read_at > VISIBILITY_CACHE_SECS:
        return None
    post = (
        identity.authenticated
        or identity.is_staff
        or identity.is_superuser
        or bool(roomcast_settings.ALLOW_ANONYMOUS)
    )
    return rights_from({"join": True, "read": True, "post": post})


def builtin_policy(identity: Identity, room: str, action: Action) -> bool:
    """The built-in rules (the table in the module docstring)."""
    if identity.is_staff or identity.is_superuser:
        return True
    epoch = _epoch
    row = Room.objects.filter(name=room).values_list("id", "visibility").first()
    visibility = row[1] if row else Room.Visibility.PUBLIC
    _remember(room, visibility, epoch)
    role = None
    if identity.user_id is not None and row is not None:
        role = (
            RoomMember.objects.filter(room_id=row[0], user_id=identity.user_id)
            .values_list("role", flat=True)
            .first()
        )
    if action == "moderate":
        return role == RoomMember.Role.ADMIN
    if visibility == Room.Visibility.PRIVATE:
        return role is not None
    if action in ("join", "read"):
        return True
    if visibility == Room.Visibility.READ_ONLY:
        if role == RoomMember.Role.ADMIN:
            return True
        user = identity.django_user()
        return bool(user.is_active and user.has_perm("roomcast.post_in_read_only"))
    return identity.authenticated or bool(roomcast_settings.ALLOW_ANONYMOUS)


@functools.lru_cache(maxsize=8)  # imported once per path (settings may change in tests)
def _project_policy(path: str) -> Callable[[Identity, str, Action], bool]:
    function = import_string(path)

    def call(identity: Identity, room: str, action: Action) -> bool:
        return bool(function(identity.django_user(), room, action))

    return call


def policy() -> Callable[[Identity, str, Action], bool]:
    """The policy in force: the project's ``ACCESS_POLICY``, or :func:`builtin_policy`."""
    path = roomcast_settings.ACCESS_POLICY
    return builtin_policy if not path else _project_policy(path)


# One frozenset per combination of rights, shared by every member that has it: a set of
# its own per socket would cost about 200 bytes of each idle socket.
_RIGHTS: dict[frozenset[str], frozenset[str]] = {}


def rights_from(answers: dict[str, bool]) -> frozenset[str]:
    """The actions answered True, as the frozenset a socket keeps (``Member.rights``)."""
    allowed = frozenset(action for action, ok in answers.items() if ok)
    return _RIGHTS.setdefault(allowed, allowed)


def check(identity: Identity, room: str, action: Action) -> bool:
    """Whether ``identity`` may do ``action`` in ``room`` (sync; uses the database)."""
    return check_many(identity, room, (action,))[action]


def check_many(identity: Identity, room: str, actions: tuple[Action, ...]) -> dict[str, bool]:
    """:func:`check` for several actions: ``{action: allowed}``, the bans read once."""
    for action in actions:
        if action not in ACTIONS:
            raise ValueError(f"Unknown action {action!r}; expected one of {', '.join(ACTIONS)}.")
    if banned(identity.user_id, room) is not None:
        return dict.fromkeys(actions, False)
    decide = policy()
    return {action: decide(identity, room, action) for action in actions}


async def acheck(identity: Identity, room: str, action: Action) -> bool:
    """Async twin of :func:`check`."""
    return await database_sync_to_async(check)(identity, room, action)


async def acheck_many(
    identity: Identity, room: str, actions: tuple[Action, ...]
) -> dict[str, bool]:
    """:func:`check_many` in one thread hop."""
    return await database_sync_to_async(check_many)(identity, room, actions)
