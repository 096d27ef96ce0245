"""Presence state: each node's tally of a room, their sum, and the batch under way.

Layer: fan-out (part of :mod:`roomcast.presence`). Pure data; imports nothing of roomcast.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: Diffs kept per room while it loads from Redis (re-applied after the load); past this
#: the oldest are dropped, and the version check reloads the room if that lost anything.
MAX_BUFFERED_DIFFS = 1000


class NodeTally:
    """One node's share of a room: users (id -> (connections, name)) and guests."""

    __slots__ = ("anonymous", "users", "version")

    def __init__(self) -> None:
        self.users: dict[int, tuple[int, str]] = {}
        self.anonymous = 0
        self.version = 0


class Room:
    """A room with local members: every node's tally, their sum, and the batch under way."""

    __slots__ = (
        "anon_changed",
        "anonymous",
        "buffer",
        "cache",
        "changed",
        "count_due",
        "expected",
        "full",
        "hold",
        "large",
        "loading",
        "local",
        "name",
        "nodes",
        "prior",
        "prior_anonymous",
        "timer",
        "totals",
        "version",
        "waiting",
    )

    def __init__(self, name: str, node: str) -> None:
        self.name = name
        self.local = NodeTally()
        self.nodes: dict[str, NodeTally] = {node: self.local}
        self.totals: dict[int, list[Any]] = {}  # user id -> [connections, name], summed
        self.anonymous = 0
        # The batch: each changed user's (connections, name) and the guest count as they
        # were at the last flush; the flushed view is totals patched with these.
        self.prior: dict[int, tuple[int, str]] = {}
        self.prior_anonymous: int | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.cache: tuple[dict[str, Any], str] | None = None  # flushed snapshot, its frame
        self.large = False  # over PRESENCE_LIVE_MAX at the last flush
        self.count_due = 0.0  # loop time before which a large room sends no presence_count
        # The Redis mirror: local users Redis has not got yet, and the version of the
        # next write (microseconds at creation, so a later incarnation counts higher).
        self.changed: set[int] = set()
        self.anon_changed = False
        self.full = True  # the next write carries the whole local tally
        self.version = time.time_ns() // 1000
        self.loading = False
        self.buffer: deque[dict[str, Any]] = deque(maxlen=MAX_BUFFERED_DIFFS)
        self.expected: dict[str, int] = {}  # remote versions in Redis at the last check
        # Live members not yet sent their first presence frame (the batch's end sends
        # it), and whether to hold them (not the others' frames) until a load ends.
        self.waiting: list[Any] = []
        self.hold = False

    def empty(self) -> bool:
        return not self.local.users and not self.local.anonymous


def view(
    room: str, users: Iterable[tuple[str, int]], anonymous: int, list_max: int
) -> dict[str, Any]:
    """The presence answer for ``users`` ((name, connections) pairs)."""
    everyone = sorted(users)
    return {
        "room": room,
        "users": [{"user": name, "connections": n} for name, n in everyone[:list_max]],
        "count": len(everyone),
        "anonymous": anonymous,
        "truncated": len(everyone) > list_max,
    }


@dataclass(slots=True)
class Write:
    room: Room
    version: int
    users: list[tuple[int, int, str]]  # (id, local connections, name); 0 deletes
    anonymous: int
    anon_changed: bool
    full: bool
    gone: bool  # no local member left: the node's entries in the room go
