"""The tracker: one process's presence, its batches and frames, and its Redis mirror.

Layer: fan-out (part of :mod:`roomcast.presence`, whose docstring tells the design).
Imports ``conf``, ``fanout``, ``hub`` and ``protocol``; never models, services or
consumers.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import weakref
from typing import Any

from roomcast import fanout, metrics
from roomcast.conf import roomcast_settings
from roomcast.hub import CONTROL_GROUP, register_control
from roomcast.protocol.codec import encode

from ._state import NodeTally, Room, Write, view
from ._store import ROOMS_PER_ROUND_TRIP, ShardsDownError, Store, redis_config

logger = logging.getLogger(__name__)

#: More join/leave frames than this in one batch become one ``presence`` frame instead: a
#: client learns the same from one frame, and a burst costs each member one frame.
MAX_DIFFS_PER_BATCH = 50
#: Longest wait between retries while Redis fails.
MAX_RETRY_SECS = 5.0

#: Each hub's tracker (for control messages, and :func:`roomcast.presence.amembers`).
trackers: weakref.WeakKeyDictionary[Any, Tracker] = weakref.WeakKeyDictionary()


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
        self.count_interval = float(settings.PRESENCE_COUNT_SECS)
        self.list_max = int(settings.PRESENCE_LIST_MAX)
        self._loop = asyncio.get_running_loop()
        self._rooms: dict[str, Room] = {}
        config = redis_config(layer)
        self._store = Store(config, ttl=self.ttl) if config is not None else None
        self._dirty: dict[str, Room] = {}  # rooms whose local tally Redis lacks
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
        trackers[hub] = self
        if self._store is not None:
            logger.info("Presence node %s (Redis prefix %s)", self.node, self._store.prefix)
            self._tasks = [
                hub.start_task(self._beat_loop(self._store)),
                hub.start_task(self._write_loop(self._store)),
            ]

    @property
    def store(self) -> Store | None:
        """The Redis side (None with a layer without Redis)."""
        return self._store

    def tracks(self, room: str) -> bool:
        """Whether this process has a view of ``room`` (it has members there)."""
        return room in self._rooms

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
            room = self._rooms[member.room] = Room(member.room, self.node)
            if self._store is not None:
                self._start_load(room)
        user_id, name = _who(member)
        local = room.local
        if user_id is None:
            local.anonymous += 1
            metrics.PRESENCE_USERS.inc()
            room.anon_changed = True
            self._add_anonymous(room, 1)
        else:
            count = local.users.get(user_id, (0, name))[0] + 1
            local.users[user_id] = (count, name)
            if count == 1:  # a user's first socket here (as leaving decrements)
                metrics.PRESENCE_USERS.inc()
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
            metrics.PRESENCE_USERS.dec()
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
                metrics.PRESENCE_USERS.dec()
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
            return view(room, (), 0, self.list_max)
        users = ((entry[1], entry[0]) for entry in state.totals.values())
        return view(room, users, state.anonymous, self.list_max)

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
        trackers.pop(self.hub, None)
        for room in self._rooms.values():
            if room.timer is not None:
                room.timer.cancel()
        store, rooms = self._store, list(self._rooms.values())
        metrics.PRESENCE_USERS.dec(sum(len(r.local.users) + r.local.anonymous for r in rooms))
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

    def _add_user(self, room: Room, user_id: int, delta: int, name: str) -> None:
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

    def _add_anonymous(self, room: Room, delta: int) -> None:
        if room.prior_anonymous is None:
            room.prior_anonymous = room.anonymous
        room.anonymous = max(0, room.anonymous + delta)

    def _set_node(
        self, room: Room, tally: NodeTally, users: dict[int, tuple[int, str]], anonymous: int
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

    def _drop_node(self, room: Room, node: str) -> None:
        tally = room.nodes.pop(node)
        for user_id, (count, name) in tally.users.items():
            self._add_user(room, user_id, -count, name)
        if tally.anonymous:
            self._add_anonymous(room, -tally.anonymous)
        self._schedule(room)

    def _apply_diff(self, room: Room, message: dict[str, Any]) -> None:
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
            tally = room.nodes[node] = NodeTally()
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

    def _schedule(self, room: Room) -> None:
        if room.timer is None and not self._closed:
            room.timer = self._loop.call_later(self.batch, self._flush, room)

    def _flush(self, room: Room) -> None:
        room.timer = None
        if self._rooms.get(room.name) is not room:
            return
        now = self._loop.time()
        if room.large and now < room.count_due:
            # A large room's next presence_count is not due: the batch stays open (its
            # changes are kept in prior) until then. Members waiting for their first
            # frame still get the flushed view's snapshot below. At 1,000 members with
            # 50 joins and leaves a second, per-batch counts were 3.8 frames per member
            # per second, 9% of the room's deliveries (benchmarks/churn.py).
            frames: list[str] = []
            if room.prior or room.prior_anonymous is not None:
                room.timer = self._loop.call_at(room.count_due, self._flush, room)
        else:
            frames = self._frames(room)
            if room.large and frames:
                room.count_due = now + self.count_interval
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

    def _frames(self, room: Room) -> list[str]:
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

    def _count_frame(self, room: Room) -> str:
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
            frame = {"type": "presence", **view(name, (), 0, self.list_max)}
            return frame, encode(frame)
        if room.cache is None:
            prior = room.prior
            users = [(e[1], e[0]) for uid, e in room.totals.items() if uid not in prior]
            users += [(name, count) for count, name in prior.values() if count > 0]
            anonymous = room.anonymous if room.prior_anonymous is None else room.prior_anonymous
            frame = {"type": "presence", **view(room.name, users, anonymous, self.list_max)}
            room.cache = (frame, encode(frame))
        return room.cache

    # -- Redis ---------------------------------------------------------------------------

    def _start_load(self, room: Room) -> None:
        if self._store is not None:
            room.loading = room.hold = True
            self.hub.start_task(self._load(room, self._store))

    def _flush_now(self, room: Room) -> None:
        room.hold = False
        if room.timer is not None:
            room.timer.cancel()
        self._flush(room)

    def _request_reload(self, room: Room) -> None:
        # While a load is under way the diffs are buffered and applied again after it,
        # which finds any gap that remains.
        if not room.loading:
            self._start_load(room)

    async def _load(self, room: Room, store: Store) -> None:
        """Replace the room's remote tallies with Redis's, then re-apply newer diffs."""
        delay = 0.1
        while self._rooms.get(room.name) is room and not self._closed:
            room.buffer.clear()  # from here on, diffs are newer than or as new as the read
            try:
                loaded = await store.read(room.name)
            except Exception:  # logged by the room's shard, once per outage
                if room.hold:
                    self._flush_now(room)  # members waiting for a list get this process's
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_SECS)
                continue
            if self._rooms.get(room.name) is not room:
                return
            loaded.pop(self.node, None)
            if not self._in_grace():
                for node in [n for n in room.nodes if n != self.node and n not in loaded]:
                    self._drop_node(room, node)
            for node, (version, users, anonymous) in loaded.items():
                tally = room.nodes.get(node)
                if tally is None:
                    tally = room.nodes[node] = NodeTally()
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

    async def _write_loop(self, store: Store) -> None:
        """Write changed local tallies to Redis, then publish them (one task per tracker)."""
        await self.registered.wait()
        delay = 0.1
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty and not self._closed:
                names = list(self._dirty)[:ROOMS_PER_ROUND_TRIP]
                writes = [self._take_write(self._dirty.pop(name)) for name in names]
                # The writes whose shard did not answer (logged there) wait and are tried
                # again; the others are published now, so one dead shard holds up only
                # its own rooms.
                failed = {id(write) for write in await store.write(self.node, writes)}
                for write in writes:
                    if id(write) in failed:
                        self._restore(write)
                for write in writes:
                    if id(write) not in failed:
                        await self._publish(write)
                if failed:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_RETRY_SECS)
                else:
                    delay = 0.1

    def _take_write(self, room: Room) -> Write:
        room.version += 1
        local = room.local.users
        # A whole write names the users that left too, so that their fields go.
        user_ids = room.changed | set(local) if room.full else room.changed
        users = [(uid, *local.get(uid, (0, ""))) for uid in user_ids]
        write = Write(
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

    def _restore(self, write: Write) -> None:
        room = write.room
        if self._rooms.get(room.name) is not room:
            return
        # Not published: the next write may use its version (a receiver sees no gap).
        room.version = min(room.version, write.version - 1)
        room.changed.update(uid for uid, _, _ in write.users)
        room.anon_changed |= write.anon_changed
        room.full |= write.full
        self._dirty[room.name] = room

    async def _publish(self, write: Write) -> None:
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
        if write.gone and self._rooms.get(room.name) is room:
            if room.empty():
                if room.timer is not None:
                    room.timer.cancel()
                del self._rooms[room.name]
            else:
                # Someone came while it was going: the others dropped this node's entries
                # in the room, so its next write is whole.
                room.full = True
                self._dirty[room.name] = room
                self._wake.set()

    async def _beat_loop(self, store: Store) -> None:
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
            except ShardsDownError:
                pass  # each shard logged its own failure, and will its recovery (Store)
            except Exception:
                self._failed("the heartbeat")
            else:
                self._recovered()
            beats += 1
            await asyncio.sleep(max(0.0, tick - (time.monotonic() - started)))

    async def _beat(self, store: Store) -> None:
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

    async def _check_alive(self, store: Store, started: float) -> None:
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

    async def _check_versions(self, store: Store) -> None:
        """Reload the rooms whose Redis versions were ahead of what arrived a beat ago."""
        if self._in_grace():
            return
        rooms = [room for room in self._rooms.values() if not room.loading]
        for start in range(0, len(rooms), ROOMS_PER_ROUND_TRIP):
            chunk = rooms[start : start + ROOMS_PER_ROUND_TRIP]
            answered = await store.versions([room.name for room in chunk])
            # A dead node's version stays until someone deletes it: count live ones only.
            alive = await store.alive({n for versions in answered if versions for n in versions})
            for room, found in zip(chunk, answered, strict=True):
                if found is None:  # its shard did not answer: judged at the next check
                    continue
                versions = {n: v for n, v in found.items() if n in alive}
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
    tracker = trackers.get(hub)
    node = message.get("node")
    if tracker is not None and isinstance(node, str):
        tracker.node_down(node)


register_control("presence.down", _on_down)
