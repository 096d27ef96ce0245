"""Presence: who is in each room, on every process, and the join/leave frames.

Layer: fan-out (delivery), beside the hub. Imports Channels' layer API, redis-py's asyncio
client (only with a channels_redis layer: it is an optional dependency), ``conf``,
``fanout``, ``hub`` and ``protocol``; never models, services or consumers.

Ownership. Each process (each hub) has one :class:`Tracker`, the only writer of that
process's tallies: per room, user id -> (connections, name) and the number of guests. The
hub calls :meth:`Tracker.added` / :meth:`Tracker.removed` for each subscription (O(1), no
I/O). A room's view is the sum of every node's tally ("node": one tracker, a random id
made at start, so a restarted process is a new node, as Phoenix.Tracker names a replica by
name *and* a start-time version, ``{name, vsn}``).

With the in-memory layer there is one node: the view is the local tally. With Redis each
node mirrors its tallies (Centrifugo keeps presence in a Redis hash per channel, entries
expiring unless refreshed; Phoenix replicates per-node state and declares a node down
when its heartbeats stop; roomcast takes the hash from the first and the node heartbeat
from the second), under ``<layer prefix>:presence:``:

``r:<group>``  hash, one field per (node, user): ``<node>:<user id>`` -> ``<count>:<name>``,
               and ``<node>:-`` -> guests; ``v:<group>`` hash, ``<node>`` -> the version
               of that node's entries in the room. Both written in one MULTI with each
               change and kept by EXPIRE ``PRESENCE_TTL_SECS`` (refreshed by every node
               with entries in the room every TTL/3), so a room nobody serves vanishes.
``alive:<node>`` a key that expires 2/3 TTL after the node's last heartbeat (every TTL/3).
               Redis's own clock decides, so process clocks may disagree.

A node's entries count only while its ``alive`` key exists: readers (other nodes,
:func:`amembers` in a shell) skip the rest, and nodes that see a dead node's entries in
their rooms drop them (``leave`` frames) and delete them. Every TTL/6 each node checks the
nodes it has entries of; one that stopped beating is dropped at most 2/3 TTL + TTL/6 =
5/6 TTL after its last beat (30 s setting: 25 s), plus one batch for the frames.

Changes travel as layer messages on the room's group (ephemeral, no seq):
``{"type": "presence.diff", "node", "v", "users": [[id, count, name], ...], "anonymous",
"full", "gone"}`` with the node's absolute counts for the users that changed (so a
duplicate does no harm), after the Redis write. ``v`` counts per (node, room); a receiver
that sees a gap, or whose versions lag behind ``v:<group>`` for a whole heartbeat (a diff
lost on the layer, as the hub's position check finds lost messages), reloads the room from
Redis, the way a Phoenix replica asks for a transfer when clocks show it is behind. A
process that subscribes a room loads it from Redis the same way. A node shutting down
deletes its entries and sends ``presence.down`` on the control group: leaves at once.

Bounds (docs/design.md, "Presence"):

* Frames: changes are gathered per room for ``PRESENCE_BATCH_SECS``; a user who comes and
  goes within a batch sends nothing. Per batch a live member gets at most
  :data:`MAX_DIFFS_PER_BATCH` ``join``/``leave`` frames (more becomes one ``presence``
  frame) and one ``presence_count``; a room above ``PRESENCE_LIVE_MAX`` users gets only
  ``presence_count``, at most one per batch.
* Snapshots list at most ``PRESENCE_LIST_MAX`` users (sorted by name) with ``count``,
  built at most once per batch per room (cached), showing the state as of the last
  batch, so the frames that follow one are exactly its changes.
* Memory per process: one entry per (room with local members, user present anywhere);
  rooms without local members cost nothing.
* Redis: per batch and room at most one MULTI with the changed fields; per heartbeat one
  EXPIRE pair per local room and one small version read per local room, pipelined.
* Redis down: sockets and local presence go on; writes wait (newest state kept, at most
  one pending entry per local user and room) and are retried with backoff up to
  :data:`MAX_RETRY_SECS`; failures are logged once per outage.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import weakref
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import fanout
from .conf import roomcast_settings
from .exceptions import RoomcastError
from .hub import CONTROL_GROUP, register_control, running_hub
from .protocol.codec import encode

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

__all__ = ["PresenceUnavailableError", "Tracker", "amembers", "members"]

#: More join/leave frames than this in one batch become one ``presence`` frame instead: a
#: client learns the same from one frame, and a burst costs each member one frame.
MAX_DIFFS_PER_BATCH = 50
#: Longest wait for one Redis round trip before it counts as failed.
REDIS_TIMEOUT_SECS = 5.0
#: Longest wait between retries while Redis fails.
MAX_RETRY_SECS = 5.0
#: Rooms per Redis round trip (writes, heartbeats, version checks).
ROOMS_PER_ROUND_TRIP = 200
#: Diffs kept per room while it loads from Redis (re-applied after the load); past this
#: the oldest are dropped, and the version check reloads the room if that lost anything.
MAX_BUFFERED_DIFFS = 1000


class PresenceUnavailableError(RoomcastError):
    """Presence could not be read: Redis did not answer and this process has no view of the
    room."""


# -- the tallies ------------------------------------------------------------------------------


class _NodeTally:
    """One node's share of a room: users (id -> (connections, name)) and guests."""

    __slots__ = ("anonymous", "users", "version")

    def __init__(self) -> None:
        self.users: dict[int, tuple[int, str]] = {}
        self.anonymous = 0
        self.version = 0


class _Room:
    """A room with local members: every node's tally, their sum, and the batch under way."""

    __slots__ = (
        "anon_changed",
        "anonymous",
        "buffer",
        "cache",
        "changed",
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
        self.local = _NodeTally()
        self.nodes: dict[str, _NodeTally] = {node: self.local}
        self.totals: dict[int, list[Any]] = {}  # user id -> [connections, name], summed
        self.anonymous = 0
        # The batch: each changed user's (connections, name) and the guest count as they
        # were at the last flush; the flushed view is totals patched with these.
        self.prior: dict[int, tuple[int, str]] = {}
        self.prior_anonymous: int | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.cache: tuple[dict[str, Any], str] | None = None  # flushed snapshot, its frame
        self.large = False  # over PRESENCE_LIVE_MAX at the last flush
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


def _view(
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
class _Write:
    room: _Room
    version: int
    users: list[tuple[int, int, str]]  # (id, local connections, name); 0 deletes
    anonymous: int
    anon_changed: bool
    full: bool
    gone: bool  # no local member left: the node's entries in the room go


# -- the tracker ------------------------------------------------------------------------------

_trackers: weakref.WeakKeyDictionary[Any, Tracker] = weakref.WeakKeyDictionary()


class Tracker:
    """Presence for one hub (one process's event loop).

    Made with the hub (``services``); the hub calls :meth:`added` and :meth:`removed` for
    each subscription, :meth:`snapshot` for a ``presence`` frame, and :meth:`handle` for
    each ``presence.*`` layer message of a room's group. After use, ``await close()``
    (before the hub's own ``close()``: it publishes on the layer).
    """

    def __init__(self, hub: Any, layer: Any, *, node: str | None = None) -> None:
        self.hub = hub
        self.layer = layer
        self.node = node or secrets.token_hex(6)
        settings = roomcast_settings
        self.ttl = float(settings.PRESENCE_TTL_SECS)
        self.batch = float(settings.PRESENCE_BATCH_SECS)
        self.live_max = int(settings.PRESENCE_LIVE_MAX)
        self.list_max = int(settings.PRESENCE_LIST_MAX)
        self._loop = asyncio.get_running_loop()
        self._rooms: dict[str, _Room] = {}
        config = redis_config(layer)
        self._store = _Store(*config, ttl=self.ttl) if config is not None else None
        self._dirty: dict[str, _Room] = {}  # rooms whose local tally Redis lacks
        self._wake = asyncio.Event()
        self._heard: dict[str, float] = {}  # node -> monotonic time of its last diff
        self._failing = False
        self._closed = False
        # Until then (monotonic), missing heartbeats and entries are not taken for dead
        # nodes: Redis lost its data (a restart) and the others are writing theirs again.
        self._grace_until = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        # Set once this node's heartbeat is in Redis: it writes no entry before that, so
        # no reader can take its entries for a dead node's.
        self.registered = asyncio.Event()
        _trackers[hub] = self
        if self._store is not None:
            logger.info("Presence node %s (Redis prefix %s)", self.node, self._store.prefix)
            self._tasks = [
                hub.start_task(self._beat_loop(self._store)),
                hub.start_task(self._write_loop(self._store)),
            ]

    # -- what the hub calls --------------------------------------------------------------

    def added(self, member: Any) -> None:
        """A subscription entered ``member.room`` (after its catch-up was queued).

        A live one (``member.live_state``) is sent its first ``presence`` frame by the
        tracker, when the batch it arrived in ends (once the room is loaded from Redis,
        on a process where it is new): the list as it is then, itself included; the
        frames after it are exactly the changes since.
        """
        if self._closed or fanout.is_user_room(member.room):
            return
        room = self._rooms.get(member.room)
        if room is None:
            room = self._rooms[member.room] = _Room(member.room, self.node)
            if self._store is not None:
                self._start_load(room)
        user_id, name = _who(member)
        local = room.local
        if user_id is None:
            local.anonymous += 1
            room.anon_changed = True
            self._add_anonymous(room, 1)
        else:
            count = local.users.get(user_id, (0, name))[0] + 1
            local.users[user_id] = (count, name)
            room.changed.add(user_id)
            self._add_user(room, user_id, 1, name)
        if member.live_state:
            room.waiting.append(member)  # its presence frame comes with the batch's end
        self._schedule(room)

    def removed(self, member: Any) -> None:
        """A subscription left ``member.room`` (closed, unsubscribed, revoked)."""
        room = self._rooms.get(member.room)
        if room is None or self._closed:
            return
        user_id, name = _who(member)
        local = room.local
        if user_id is None:
            if local.anonymous <= 0:
                logger.warning("Presence: a guest left room %r that had none", room.name)
                return
            local.anonymous -= 1
            room.anon_changed = True
            self._add_anonymous(room, -1)
        else:
            entry = local.users.get(user_id)
            if entry is None:
                logger.warning("Presence: user %s left room %r without joining", user_id, room.name)
                return
            count, name = entry
            if count > 1:
                local.users[user_id] = (count - 1, name)
            else:
                del local.users[user_id]
            room.changed.add(user_id)
            self._add_user(room, user_id, -1, name)
        self._schedule(room)

    def snapshot(self, room: str) -> dict[str, Any]:
        """The ``presence`` frame of ``room`` as a dict (shared: do not modify it)."""
        return self._snapshot(room)[0]

    def snapshot_frame(self, room: str) -> str:
        """:meth:`snapshot`, encoded (cached until the room's next batch changes it)."""
        return self._snapshot(room)[1]

    def view(self, room: str) -> dict[str, Any]:
        """Who is in ``room`` now as this process sees it (the answer of :func:`amembers`)."""
        state = self._rooms.get(room)
        if state is None:
            return _view(room, (), 0, self.list_max)
        users = ((entry[1], entry[0]) for entry in state.totals.values())
        return _view(room, users, state.anonymous, self.list_max)

    def handle(self, room: str, message: dict[str, Any]) -> None:
        """A ``presence.*`` layer message that came on ``room``'s group."""
        state = self._rooms.get(room)
        if state is None or self._closed:
            return  # no local member any more: nobody to tell
        if message.get("type") != "presence.diff":
            logger.warning("Ignoring presence message of unknown type %r", message.get("type"))
            return
        node = message.get("node")
        if node == self.node or not isinstance(node, str):
            return
        self._heard[node] = time.monotonic()
        if state.loading:
            state.buffer.append(message)
        try:
            self._apply_diff(state, message)
        except (KeyError, TypeError, ValueError):
            logger.exception("Malformed presence message for room %r: %r", room, message)

    def node_down(self, node: str) -> None:
        """Drop ``node``'s entries everywhere (it shut down or stopped beating)."""
        if node == self.node:
            return
        self._heard.pop(node, None)
        for room in self._rooms.values():
            if node in room.nodes:
                self._drop_node(room, node)

    async def close(self) -> None:
        """Delete this node's entries everywhere, so others see its users leave at once."""
        if self._closed:
            return
        self._closed = True
        _trackers.pop(self.hub, None)
        for room in self._rooms.values():
            if room.timer is not None:
                room.timer.cancel()
        store, rooms = self._store, list(self._rooms.values())
        self._rooms.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if store is None:
            return
        try:
            if self.registered.is_set():
                await store.forget(self.node, [(room.name, room.local.users) for room in rooms])
                await self.layer.group_send(
                    CONTROL_GROUP, {"type": "presence.down", "node": self.node}
                )
        except Exception:
            logger.warning("Presence: could not remove node %s's entries", self.node, exc_info=True)
        finally:
            await store.aclose()

    # -- the view and its batches --------------------------------------------------------

    def _add_user(self, room: _Room, user_id: int, delta: int, name: str) -> None:
        entry = room.totals.get(user_id)
        old = entry[0] if entry is not None else 0
        if user_id not in room.prior:
            room.prior[user_id] = (old, entry[1] if entry is not None else name)
        new = old + delta
        if new > 0:
            if entry is None:
                room.totals[user_id] = [new, name]
            else:
                entry[0] = new
                if delta > 0:
                    entry[1] = name  # the name the user came with last
        elif entry is not None:
            del room.totals[user_id]

    def _add_anonymous(self, room: _Room, delta: int) -> None:
        if room.prior_anonymous is None:
            room.prior_anonymous = room.anonymous
        room.anonymous = max(0, room.anonymous + delta)

    def _set_node(
        self, room: _Room, tally: _NodeTally, users: dict[int, tuple[int, str]], anonymous: int
    ) -> None:
        """Make ``tally`` hold ``users`` (absolute; count 0 removes) and ``anonymous``."""
        for user_id, (count, name) in users.items():
            old, old_name = tally.users.get(user_id, (0, name))
            if count > 0:
                tally.users[user_id] = (count, name)
            else:
                tally.users.pop(user_id, None)
                name = old_name  # a removal carries no name
            if count != old:
                self._add_user(room, user_id, count - old, name)
        if anonymous != tally.anonymous:
            self._add_anonymous(room, anonymous - tally.anonymous)
            tally.anonymous = anonymous

    def _drop_node(self, room: _Room, node: str) -> None:
        tally = room.nodes.pop(node)
        for user_id, (count, name) in tally.users.items():
            self._add_user(room, user_id, -count, name)
        if tally.anonymous:
            self._add_anonymous(room, -tally.anonymous)
        self._schedule(room)

    def _apply_diff(self, room: _Room, message: dict[str, Any]) -> None:
        node, version = message["node"], int(message["v"])
        tally = room.nodes.get(node)
        if tally is not None and version <= tally.version:
            return  # a duplicate, or older than what a load brought
        if message.get("gone"):
            if tally is not None:
                self._drop_node(room, node)
            return
        full = bool(message.get("full"))
        if tally is None:
            tally = room.nodes[node] = _NodeTally()
            if not full:
                self._request_reload(room)  # its earlier changes never came
        elif not full and version != tally.version + 1:
            self._request_reload(room)
        users = {int(uid): (int(count), str(name)) for uid, count, name in message["users"]}
        if full:
            for user_id, (_, name) in tally.users.items():
                users.setdefault(user_id, (0, name))
        self._set_node(room, tally, users, int(message["anonymous"]))
        tally.version = version
        self._schedule(room)

    def _schedule(self, room: _Room) -> None:
        if room.timer is None and not self._closed:
            room.timer = self._loop.call_later(self.batch, self._flush, room)

    def _flush(self, room: _Room) -> None:
        room.timer = None
        if self._rooms.get(room.name) is not room:
            return
        frames = self._frames(room)
        waiting = room.waiting
        if not room.hold:
            room.waiting = []
        if frames:
            skip = set(waiting)
            for member in self.hub.members(room.name):
                # present: counted here, so started (a member still joining has not
                # been sent its joined frame yet: these must not come before it).
                if (
                    member.live_state
                    and member.present
                    and not member.closed
                    and member not in skip
                ):
                    for frame in frames:
                        member.send_frame(frame)
        if waiting and not room.hold:
            frame = self.snapshot_frame(room.name)
            for member in waiting:
                if not member.closed:
                    member.send_frame(frame)
        if self._store is None:
            if room.empty():
                del self._rooms[room.name]
        elif room.changed or room.anon_changed or room.full or room.empty():
            self._dirty[room.name] = room
            self._wake.set()

    def _frames(self, room: _Room) -> list[str]:
        """The frames for the batch that ends now; afterwards the flushed view is current."""
        prior, room.prior = room.prior, {}
        prior_anonymous, room.prior_anonymous = room.prior_anonymous, None
        if not prior and prior_anonymous is None:
            return []
        room.cache = None
        joins, leaves = [], []
        for user_id, (old, old_name) in prior.items():
            entry = room.totals.get(user_id)
            if not old and entry is not None:
                joins.append(entry[1])
            elif old and entry is None:
                leaves.append(old_name)
        guests = prior_anonymous is not None and prior_anonymous != room.anonymous
        was_large, room.large = room.large, len(room.totals) > self.live_max
        if room.large:
            return [self._count_frame(room)] if joins or leaves or guests else []
        if was_large or len(joins) + len(leaves) > MAX_DIFFS_PER_BATCH:
            return [self.snapshot_frame(room.name)]
        frames = [encode({"type": "leave", "room": room.name, "user": n}) for n in leaves]
        frames += [encode({"type": "join", "room": room.name, "user": n}) for n in joins]
        if guests:
            frames.append(self._count_frame(room))
        return frames

    def _count_frame(self, room: _Room) -> str:
        return encode(
            {
                "type": "presence_count",
                "room": room.name,
                "count": len(room.totals),
                "anonymous": room.anonymous,
            }
        )

    def _snapshot(self, name: str) -> tuple[dict[str, Any], str]:
        room = self._rooms.get(name)
        if room is None:
            frame = {"type": "presence", **_view(name, (), 0, self.list_max)}
            return frame, encode(frame)
        if room.cache is None:
            prior = room.prior
            users = [(e[1], e[0]) for uid, e in room.totals.items() if uid not in prior]
            users += [(name, count) for count, name in prior.values() if count > 0]
            anonymous = room.anonymous if room.prior_anonymous is None else room.prior_anonymous
            frame = {"type": "presence", **_view(room.name, users, anonymous, self.list_max)}
            room.cache = (frame, encode(frame))
        return room.cache

    # -- Redis ---------------------------------------------------------------------------

    def _start_load(self, room: _Room) -> None:
        if self._store is not None:
            room.loading = room.hold = True
            self.hub.start_task(self._load(room, self._store))

    def _flush_now(self, room: _Room) -> None:
        room.hold = False
        if room.timer is not None:
            room.timer.cancel()
        self._flush(room)

    def _request_reload(self, room: _Room) -> None:
        # While a load is under way the diffs are buffered and applied again after it,
        # which finds any gap that remains.
        if not room.loading:
            self._start_load(room)

    async def _load(self, room: _Room, store: _Store) -> None:
        """Replace the room's remote tallies with Redis's, then re-apply newer diffs."""
        delay = 0.1
        while self._rooms.get(room.name) is room and not self._closed:
            room.buffer.clear()  # from here on, diffs are newer than or as new as the read
            try:
                loaded = await store.read(room.name)
            except Exception:
                self._failed("loading room %r", room.name)
                if room.hold:
                    self._flush_now(room)  # members waiting for a list get this process's
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_SECS)
                continue
            self._recovered()
            if self._rooms.get(room.name) is not room:
                return
            loaded.pop(self.node, None)
            if not self._in_grace():
                for node in [n for n in room.nodes if n != self.node and n not in loaded]:
                    self._drop_node(room, node)
            for node, (version, users, anonymous) in loaded.items():
                tally = room.nodes.get(node)
                if tally is None:
                    tally = room.nodes[node] = _NodeTally()
                for user_id, (_, name) in tally.users.items():
                    users.setdefault(user_id, (0, name))
                self._set_node(room, tally, users, anonymous)
                tally.version = version
            room.loading = False
            for message in room.buffer:
                self._apply_diff(room, message)
            room.buffer.clear()
            self._flush_now(room)
            return

    async def _write_loop(self, store: _Store) -> None:
        """Write changed local tallies to Redis, then publish them (one task per tracker)."""
        await self.registered.wait()
        delay = 0.1
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty and not self._closed:
                names = list(self._dirty)[:ROOMS_PER_ROUND_TRIP]
                writes = [self._take_write(self._dirty.pop(name)) for name in names]
                try:
                    await store.write(self.node, writes)
                except Exception:
                    self._failed("writing %d rooms", len(writes))
                    for write in writes:
                        self._restore(write)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_RETRY_SECS)
                    continue
                self._recovered()
                delay = 0.1
                for write in writes:
                    await self._publish(write)

    def _take_write(self, room: _Room) -> _Write:
        room.version += 1
        local = room.local.users
        # A whole write names the users that left too, so that their fields go.
        user_ids = room.changed | set(local) if room.full else room.changed
        users = [(uid, *local.get(uid, (0, ""))) for uid in user_ids]
        write = _Write(
            room=room,
            version=room.version,
            users=users,
            anonymous=room.local.anonymous,
            anon_changed=room.anon_changed or room.full,
            full=room.full,
            gone=room.empty(),
        )
        room.changed, room.anon_changed, room.full = set(), False, False
        return write

    def _restore(self, write: _Write) -> None:
        room = write.room
        if self._rooms.get(room.name) is not room:
            return
        # Not published: the next write may use its version (a receiver sees no gap).
        room.version = min(room.version, write.version - 1)
        room.changed.update(uid for uid, _, _ in write.users)
        room.anon_changed |= write.anon_changed
        room.full |= write.full
        self._dirty[room.name] = room

    async def _publish(self, write: _Write) -> None:
        room = write.room
        message = {
            "type": "presence.diff",
            "node": self.node,
            "v": write.version,
            "users": [[uid, count, name] for uid, count, name in write.users],
            "anonymous": write.anonymous,
            "full": write.full,
            "gone": write.gone,
        }
        try:
            await self.layer.group_send(fanout.room_group(room.name), message)
        except Exception:
            # Redis has it: the others' version check reloads the room within two beats.
            logger.warning("Presence: publishing room %r failed", room.name, exc_info=True)
        if write.gone and room.empty() and self._rooms.get(room.name) is room:
            if room.timer is not None:
                room.timer.cancel()
            del self._rooms[room.name]

    async def _beat_loop(self, store: _Store) -> None:
        """Heartbeat every TTL/3; every TTL/6, drop the nodes that stopped beating."""
        tick = self.ttl / 6
        beats = 0
        while not self._closed:
            started = time.monotonic()
            try:
                if beats % 2 == 0:
                    await self._beat(store)
                await self._check_alive(store, started)
                if beats % 2 == 0:
                    await self._check_versions(store)
            except Exception:
                self._failed("the heartbeat")
            else:
                self._recovered()
            beats += 1
            await asyncio.sleep(max(0.0, tick - (time.monotonic() - started)))

    async def _beat(self, store: _Store) -> None:
        rooms = [room.name for room in self._rooms.values() if not room.empty()]
        existed = await store.beat(self.node, rooms)
        if not existed and self.registered.is_set():
            # Our key expired (Redis was unreachable longer than 2/3 TTL, or restarted
            # empty): others may have dropped our entries. Write every room whole again,
            # and judge no other node until they have had the time to do the same.
            logger.warning("Presence node %s lost its heartbeat; rewriting its entries", self.node)
            self._grace_until = time.monotonic() + self.ttl * 2 / 3
            for room in self._rooms.values():
                room.full = True
                self._dirty[room.name] = room
            self._wake.set()
        self.registered.set()

    async def _check_alive(self, store: _Store, started: float) -> None:
        nodes = {n for room in self._rooms.values() for n in room.nodes if n != self.node}
        for node in set(self._heard) - nodes:
            del self._heard[node]
        alive = await store.alive({*nodes, self.node})
        if self.node not in alive:
            await self._beat(store)  # Redis lost our heartbeat (restarted empty): see _beat
            return
        if not nodes or self._in_grace():
            return
        dead = [n for n in nodes if n not in alive and self._heard.get(n, 0.0) < started]
        if not dead:
            return
        stale: list[tuple[str, str, dict[int, tuple[int, str]]]] = []
        for node in dead:
            logger.info("Presence node %s stopped beating; its users leave", node)
            for room in self._rooms.values():
                if node in room.nodes:
                    stale.append((node, room.name, room.nodes[node].users))
            self.node_down(node)
        await store.forget_nodes(stale)

    async def _check_versions(self, store: _Store) -> None:
        """Reload the rooms whose Redis versions were ahead of what arrived a beat ago."""
        if self._in_grace():
            return
        rooms = [room for room in self._rooms.values() if not room.loading]
        for start in range(0, len(rooms), ROOMS_PER_ROUND_TRIP):
            chunk = rooms[start : start + ROOMS_PER_ROUND_TRIP]
            found = await store.versions([room.name for room in chunk])
            # A dead node's version stays until someone deletes it: count live ones only.
            alive = await store.alive({node for versions in found for node in versions})
            found = [{n: v for n, v in versions.items() if n in alive} for versions in found]
            for room, versions in zip(chunk, found, strict=True):
                versions.pop(self.node, None)
                expected, room.expected = room.expected, versions
                if self._rooms.get(room.name) is not room or room.loading:
                    continue
                behind = any(
                    node in versions
                    and (node not in room.nodes or room.nodes[node].version < version)
                    for node, version in expected.items()
                )
                gone = any(
                    node != self.node and node not in versions and node not in expected
                    for node in room.nodes
                )
                if behind or gone:
                    logger.info("Presence: room %r missed changes; reloading it", room.name)
                    self._start_load(room)

    def _in_grace(self) -> bool:
        return time.monotonic() < self._grace_until

    def _failed(self, what: str, *args: Any) -> None:
        if not self._failing:
            self._failing = True
            logger.warning("Presence: Redis failed " + what + "; retrying", *args, exc_info=True)

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            logger.warning("Presence: Redis answers again")


def _who(member: Any) -> tuple[int | None, str]:
    identity = member.identity
    if identity is None:
        return None, ""
    return identity.user_id, identity.name


def _on_down(hub: Any, message: dict[str, Any]) -> None:
    tracker = _trackers.get(hub)
    node = message.get("node")
    if tracker is not None and isinstance(node, str):
        tracker.node_down(node)


register_control("presence.down", _on_down)


# -- reading from anywhere --------------------------------------------------------------------


async def amembers(room: str) -> dict[str, Any]:
    """Who is in ``room``, on every process: ``{"room", "users": [{"user", "connections"}],
    "count", "anonymous", "truncated"}`` (at most ``PRESENCE_LIST_MAX`` users, by name).

    With Redis this reads Redis, so it works in any process (a shell, a worker); with the
    in-memory layer it is this process's hub's view (empty where no hub runs).

    Raises:
        PresenceUnavailableError: Redis did not answer and this process has no view of
            the room.
    """
    hub = running_hub()
    tracker = _trackers.get(hub) if hub is not None else None
    list_max = int(roomcast_settings.PRESENCE_LIST_MAX)
    if tracker is not None and tracker._store is None:
        return tracker.view(room)
    config = redis_config(fanout.get_layer())
    if config is None:
        return _view(room, (), 0, list_max)
    if tracker is not None and tracker._store is not None:
        store = tracker._store
    else:
        store = _shared_store(*config)
    try:
        loaded = await store.read(room)
    except Exception as exc:
        if tracker is not None and room in tracker._rooms:
            logger.warning("Presence: Redis failed; answering from this process's view")
            return tracker.view(room)
        raise PresenceUnavailableError(f"Redis did not answer: {exc}") from exc
    totals: dict[int, list[Any]] = {}
    anonymous = 0
    for _, users, guests in loaded.values():
        anonymous += guests
        for user_id, (count, name) in users.items():
            entry = totals.setdefault(user_id, [0, name])
            entry[0] += count
    return _view(room, ((e[1], e[0]) for e in totals.values()), anonymous, list_max)


def members(room: str) -> dict[str, Any]:
    """:func:`amembers` from sync code (a view, a shell, a management command)."""
    return fanout.run_sync(amembers, room)


# -- the Redis side ---------------------------------------------------------------------------


def redis_config(layer: Any) -> tuple[dict[str, Any], str] | None:
    """The first Redis host of ``layer`` (as channels_redis decodes it) and its key prefix,
    or None for a layer without Redis (presence is then this process's alone)."""
    module = type(layer).__module__
    if not module.startswith("channels_redis."):
        return None
    # channels_redis is an optional dependency: imported only when its layer is in use.
    from channels_redis.utils import decode_hosts

    if module == "channels_redis.core":
        hosts, prefix = layer.hosts, layer.prefix
    else:
        # The pub/sub layer is a proxy making one layer per event loop from the arguments
        # it keeps (channels_redis 4.x), so read them there rather than make one.
        args, kwargs = layer._args, layer._kwargs
        hosts = decode_hosts(kwargs.get("hosts", args[0] if args else None))
        prefix = kwargs.get("prefix", "asgi")
    return dict(hosts[0]), str(prefix)


_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Store]] = (
    weakref.WeakKeyDictionary()
)


def _shared_store(host: dict[str, Any], prefix: str) -> _Store:
    """A store for :func:`amembers` where no tracker runs: one per event loop and host."""
    stores = _shared.setdefault(asyncio.get_running_loop(), {})
    key = repr(sorted(host.items())) + prefix
    if key not in stores:
        stores[key] = _Store(host, prefix, ttl=float(roomcast_settings.PRESENCE_TTL_SECS))
    return stores[key]


async def aclose_shared() -> None:
    """Close the Redis connections :func:`amembers` opened on this event loop."""
    for store in _shared.pop(asyncio.get_running_loop(), {}).values():
        await store.aclose()


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class _Store:
    """Presence's keys in Redis, through one connection pool (redis-py's asyncio client)."""

    def __init__(self, host: dict[str, Any], prefix: str, *, ttl: float) -> None:
        from channels_redis.utils import create_pool  # optional dependency, see above
        from redis.asyncio import Redis

        self.prefix = f"{prefix}:presence"
        self.ttl_ms = max(1, int(ttl * 1000))
        self.alive_ms = max(1, int(ttl * 2000 / 3))
        self._client: Redis = Redis(connection_pool=create_pool(host))

    def _keys(self, room: str) -> tuple[str, str]:
        group = fanout.room_group(room)
        return f"{self.prefix}:r:{group}", f"{self.prefix}:v:{group}"

    def _alive_key(self, node: str) -> str:
        return f"{self.prefix}:alive:{node}"

    async def aclose(self) -> None:
        await self._client.aclose(close_connection_pool=True)

    async def beat(self, node: str, rooms: list[str]) -> bool:
        """Renew the node's heartbeat and its rooms' keys; whether the heartbeat was there."""
        existed = False
        for start in range(0, max(1, len(rooms)), ROOMS_PER_ROUND_TRIP):
            pipe = self._client.pipeline(transaction=False)
            if start == 0:
                pipe.exists(self._alive_key(node))
                pipe.set(self._alive_key(node), str(time.time()), px=self.alive_ms)
            for room in rooms[start : start + ROOMS_PER_ROUND_TRIP]:
                for key in self._keys(room):
                    pipe.pexpire(key, self.ttl_ms)
            async with asyncio.timeout(REDIS_TIMEOUT_SECS):
                result = await pipe.execute()
            if start == 0:
                existed = bool(result[0])
        return existed

    async def alive(self, nodes: Iterable[str]) -> set[str]:
        """Those of ``nodes`` whose heartbeat has not expired."""
        nodes = list(nodes)
        async with asyncio.timeout(REDIS_TIMEOUT_SECS):
            found = await self._client.mget([self._alive_key(n) for n in nodes])
        return {node for node, value in zip(nodes, found, strict=True) if value is not None}

    async def write(self, node: str, writes: list[_Write]) -> None:
        """Mirror the local tallies of ``writes`` (one MULTI for them all)."""
        pipe = self._client.pipeline(transaction=True)
        for write in writes:
            data, versions = self._keys(write.room.name)
            present = {
                f"{node}:{uid}": f"{count}:{name}" for uid, count, name in write.users if count
            }
            absent = [f"{node}:{uid}" for uid, count, _ in write.users if not count]
            if write.anon_changed or write.gone:
                if write.anonymous and not write.gone:
                    present[f"{node}:-"] = str(write.anonymous)
                else:
                    absent.append(f"{node}:-")
            if present:
                pipe.hset(data, mapping=present)  # type: ignore[arg-type]
            if absent:
                pipe.hdel(data, *absent)
            if write.gone:
                pipe.hdel(versions, node)
            else:
                pipe.hset(versions, node, str(write.version))
                pipe.pexpire(data, self.ttl_ms)
                pipe.pexpire(versions, self.ttl_ms)
        async with asyncio.timeout(REDIS_TIMEOUT_SECS):
            await pipe.execute()

    async def read(self, room: str) -> dict[str, tuple[int, dict[int, tuple[int, str]], int]]:
        """Each live node's entries in ``room``: node -> (version, users, guests)."""
        data_key, versions_key = self._keys(room)
        pipe = self._client.pipeline(transaction=True)
        pipe.hgetall(data_key)
        pipe.hgetall(versions_key)
        async with asyncio.timeout(REDIS_TIMEOUT_SECS):
            data, versions = await pipe.execute()
        nodes: dict[str, tuple[int, dict[int, tuple[int, str]], int]] = {}
        for raw_node, raw_version in versions.items():
            try:
                nodes[_text(raw_node)] = (int(raw_version), {}, 0)
            except ValueError:
                continue
        if nodes:
            alive = await self.alive(nodes)
            dead = [node for node in nodes if node not in alive]
            for node in dead:
                del nodes[node]
        else:
            dead = []
        orphans = []  # fields of nodes that are dead or left the room
        for raw_field, raw_value in data.items():
            field = _text(raw_field)
            node, _, who = field.partition(":")
            if node not in nodes:
                orphans.append(field)
                continue
            value = _text(raw_value)
            try:
                if who == "-":
                    version, users, _ = nodes[node]
                    nodes[node] = (version, users, int(value))
                else:
                    count, _, name = value.partition(":")
                    nodes[node][1][int(who)] = (int(count), name)
            except ValueError:
                logger.warning("Presence: ignoring malformed field %r of room %r", field, room)
        if orphans or dead:
            # Delete them as Centrifugo's presence read deletes expired entries (best
            # effort: the key's expiry is the backstop).
            try:
                pipe = self._client.pipeline(transaction=False)
                if orphans:
                    pipe.hdel(data_key, *orphans)
                if dead:
                    pipe.hdel(versions_key, *dead)
                async with asyncio.timeout(REDIS_TIMEOUT_SECS):
                    await pipe.execute()
            except Exception:
                logger.debug("Presence: could not delete stale fields of %r", room, exc_info=True)
        return nodes

    async def versions(self, rooms: list[str]) -> list[dict[str, int]]:
        """Each room's node versions (node -> version)."""
        pipe = self._client.pipeline(transaction=False)
        for room in rooms:
            pipe.hgetall(self._keys(room)[1])
        async with asyncio.timeout(REDIS_TIMEOUT_SECS):
            found = await pipe.execute()
        out = []
        for versions in found:
            parsed = {}
            for node, version in versions.items():
                try:
                    parsed[_text(node)] = int(version)
                except ValueError:
                    continue
            out.append(parsed)
        return out

    async def forget(self, node: str, rooms: list[tuple[str, dict[int, tuple[int, str]]]]) -> None:
        """Delete ``node``'s entries in ``rooms`` ((room, its users there)) and its heartbeat."""
        await self.forget_nodes([(node, room, users) for room, users in rooms])
        async with asyncio.timeout(REDIS_TIMEOUT_SECS):
            await self._client.delete(self._alive_key(node))

    async def forget_nodes(
        self, entries: list[tuple[str, str, dict[int, tuple[int, str]]]]
    ) -> None:
        """Delete each (node, room, users)'s fields."""
        for start in range(0, len(entries), ROOMS_PER_ROUND_TRIP):
            pipe = self._client.pipeline(transaction=False)
            for node, room, users in entries[start : start + ROOMS_PER_ROUND_TRIP]:
                data, versions = self._keys(room)
                pipe.hdel(data, f"{node}:-", *(f"{node}:{uid}" for uid in users))
                pipe.hdel(versions, node)
            async with asyncio.timeout(REDIS_TIMEOUT_SECS):
                await pipe.execute()
