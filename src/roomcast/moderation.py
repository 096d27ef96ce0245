"""Moderation from Python: ban a user from a room or the site, lift a ban, and count who is
connected to rooms now. The Django admin (``roomcast.admin``) does the same through these.

Layer: services. Uses the models, ``access``, ``presence`` and ``rooms``; never touches a
socket: a ban reaches live sockets through ``roomcast.revocation``::

    from datetime import timedelta
    from roomcast import moderation
    moderation.ban("mallory", room="lobby", duration=timedelta(hours=1))
    moderation.ban("mallory")                     # the whole site, until lifted
    moderation.unban("mallory")                   # every ban of the user, now

Where a ban is checked (docs/design.md, "Moderation and bans"): every access decision
(``access.check``: joins, history, posts, edits, the room list), a socket's connection
(``security``: a user banned from the site is refused with 4401 "banned from this site"),
and the HTTP token endpoint (403 ``banned``). Saving an active ban closes the user's
sockets on every process at once: for a room ban, the user's sockets in that room (4403
"banned from this room", a ``/ws/`` subscription ends with ``unsubscribed`` 4403 and its
other rooms go on); for a site ban, every socket of the user (4403 "banned from this
site"). A ban ends by itself when ``until`` passes: decisions compare it with the time,
so nothing needs to run then, and the user may simply come back.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db import router, transaction
from django.db.models import QuerySet
from django.utils import timezone

from . import access, fanout, presence, rooms
from .conf import roomcast_settings
from .exceptions import RoomcastError
from .models import Ban, Room
from .protocol import codec

logger = logging.getLogger(__name__)

__all__ = [
    "Connected",
    "ban",
    "banned",
    "connected",
    "end_bans",
    "unban",
]

#: Longest text kept as a ban's reason (the model's field).
REASON_MAX_CHARS = 200
#: Rooms whose connected counts one :func:`connected` call reads at most (the admin's
#: page is 100 rooms): each is a Redis read, run together.
CONNECTED_MAX_ROOMS = 500


def ban(
    user: Any,
    *,
    room: str | None = None,
    until: datetime.datetime | None = None,
    duration: datetime.timedelta | float | None = None,
    reason: str = "",
    by: Any = None,
) -> Ban:
    """Ban ``user`` from ``room`` (from the whole site if None), until ``until`` or for
    ``duration`` (a timedelta or seconds); neither: until lifted (:func:`unban`).

    Args:
        user: a user object, a username or a primary key.
        room: the room's name; it is created (public) if it has no row yet, as rooms come
            into being when first used.
        until: when the ban ends (an aware datetime, or naive in the current time zone).
        duration: how long from now; not with ``until``.
        reason: for moderators (at most :data:`REASON_MAX_CHARS`); not sent to the user.
        by: the moderator (a user object), recorded on the ban.

    Returns:
        The saved ban. The user's sockets close on every process once the transaction
        commits (at once outside one).

    Raises:
        UserNotFoundError: no such user.
        InvalidRoomNameError: ``room`` cannot name a chat room (a user's own channel
            cannot be banned from: ban from the site instead).
        ValueError: both ``until`` and ``duration``, an end not in the future, or a
            reason too long.
    """
    target = rooms.get_user(user)
    end = _end(until, duration)
    if not isinstance(reason, str) or len(reason) > REASON_MAX_CHARS:
        raise ValueError(f"A ban's reason is text of at most {REASON_MAX_CHARS} characters.")
    with transaction.atomic(using=router.db_for_write(Ban)):
        room_row = None
        if room is not None:
            name = codec.validate_room_name(room, max_chars=roomcast_settings.ROOM_NAME_MAX_CHARS)
            room_row, _ = Room.objects.get_or_create(name=name)
        return Ban.objects.create(
            user=target,
            room=room_row,
            until=end,
            reason=reason,
            created_by=by if getattr(by, "pk", None) is not None else None,
        )


def unban(user: Any, *, room: str | None = None) -> int:
    """End ``user``'s bans in force now: from ``room`` (given), or every ban of the user
    (no ``room``). They end now (``until`` becomes now; the rows stay, as records).

    Returns:
        How many bans were ended.

    Raises:
        UserNotFoundError: no such user.
    """
    target = rooms.get_user(user)
    bans = Ban.objects.filter(user=target)
    if room is not None:
        bans = bans.filter(room__name=room)
    return len(end_bans(bans))


def end_bans(bans: QuerySet[Ban]) -> list[Ban]:
    """End the bans of ``bans`` in force now, in one transaction: ``until`` becomes now
    (each saved, so its signal runs; the rows stay, as records). Returns them."""
    ended = []
    now = timezone.now()
    with transaction.atomic(using=router.db_for_write(Ban)):
        for found in access.in_force(bans).select_related("user", "room"):
            found.until = now
            found.save(update_fields=["until"])
            ended.append(found)
    return ended


def banned(user: Any, room: str | None = None) -> Ban | None:
    """The ban in force that keeps ``user`` out of ``room`` (of the site, if None), or
    None. A site ban keeps a user out of every room."""
    return access.banned(rooms.get_user(user).pk, room)


def _end(
    until: datetime.datetime | None, duration: datetime.timedelta | float | None
) -> datetime.datetime | None:
    if until is not None and duration is not None:
        raise ValueError("Give a ban's end (until) or its duration, not both.")
    now = timezone.now()
    if duration is not None:
        if isinstance(duration, bool) or not isinstance(duration, datetime.timedelta | int | float):
            raise ValueError(f"A ban's duration is a timedelta or seconds, not {duration!r}.")
        if not isinstance(duration, datetime.timedelta):
            duration = datetime.timedelta(seconds=duration)
        until = now + duration
    if until is None:
        return None
    if timezone.is_naive(until):
        until = timezone.make_aware(until)
    if until <= now:
        raise ValueError("A ban's end must be in the future.")
    return until


# -- who is connected ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Connected:
    """Who is connected to a room now, on every process (``roomcast.presence``'s view).

    ``users``: distinct signed-in users with at least one subscription of the room (a
    ``/ws/chat/<room>/`` socket or a ``/ws/`` subscription), however many tabs each has;
    ``guests``: guests' subscriptions (guests cannot be told apart, so each counts);
    ``total``: their sum, what the admin shows. ``names``: the users' names with their
    subscriptions, at most ``PRESENCE_LIST_MAX`` (``truncated`` says if more).
    """

    users: int
    guests: int
    names: tuple[tuple[str, int], ...] = ()
    truncated: bool = False

    @property
    def total(self) -> int:
        return self.users + self.guests


def connected(names: Iterable[str]) -> dict[str, Connected | None]:
    """Who is connected now to each of ``names`` (at most :data:`CONNECTED_MAX_ROOMS`),
    read together (sync). None for a room presence could not answer for (Redis down and
    no local view): unknown, not zero.

    With Redis, every process's presence counts (entries of a process that died vanish
    within ``PRESENCE_TTL_SECS``); with the in-memory layer, this process's own sockets.
    """
    wanted = list(dict.fromkeys(names))[:CONNECTED_MAX_ROOMS]
    if not wanted:
        return {}
    try:
        answers = fanout.run_sync(_aconnected, wanted)
    except Exception:
        logger.warning("Could not read who is connected to %d rooms", len(wanted), exc_info=True)
        return dict.fromkeys(wanted)
    return dict(zip(wanted, answers, strict=True))


async def _aconnected(names: list[str]) -> list[Connected | None]:
    found = await asyncio.gather(*(presence.amembers(n) for n in names), return_exceptions=True)
    out: list[Connected | None] = []
    for name, view in zip(names, found, strict=True):
        if isinstance(view, BaseException):
            if not isinstance(view, RoomcastError):
                logger.warning("Presence of room %r failed: %r", name, view)
            out.append(None)
            continue
        out.append(
            Connected(
                users=int(view["count"]),
                guests=int(view["anonymous"]),
                names=tuple((u["user"], int(u["connections"])) for u in view["users"]),
                truncated=bool(view["truncated"]),
            )
        )
    return out
