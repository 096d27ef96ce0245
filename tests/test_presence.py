"""roomcast.presence: tallies, batches and frames on one process, and the Redis mirror
between processes (real Redis, real channel layers).

Each "process" here is a :class:`LayerHub`: the part of ``roomcast.hub.Hub`` a tracker
uses (``members``, ``start_task``, ``layer``) plus the routing the hub does for it (each
room's group and the control group, ``presence.*`` messages to the tracker), on a layer
of its own, so two of them in one event loop talk through Redis as two processes do.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from channels.layers import InMemoryChannelLayer
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer

from roomcast import access, fanout, presence
from roomcast import hub as hub_module
from roomcast.presence import tracker as presence_tracker

#: How long a test waits for something that must happen (a frame, a state) before it
#: fails; never a bound on how fast it happens.
PATIENCE_SECS = 20.0


class Sock:
    """A subscription as the tracker sees one (``hub.Member``'s presence attributes),
    keeping the frames it is sent."""

    def __init__(self, room: str, identity: access.Identity, *, live_state: bool = True) -> None:
        self.room = room
        self.identity = identity
        self.live_state = live_state
        self.present = False  # the hub sets it before telling the tracker
        self.closed = False
        self.frames: list[dict[str, Any]] = []
        self.read = 0  # frames already taken by next()
        self._arrived = asyncio.Event()
        # What a client makes of the frames: who is there, and any frame that does not
        # fit what came before (a join of someone listed, a leave of someone not).
        self.users: set[str] | None = None  # None until the first presence frame
        self.count = self.anonymous = 0
        self.misfits: list[dict[str, Any]] = []

    def send_frame(self, frame: str) -> None:
        event = json.loads(frame)
        assert next(iter(event)) == "type" and event["room"] == self.room, event
        self.frames.append(event)
        self._arrived.set()
        kind = event["type"]
        if kind == "presence":
            self.users = {u["user"] for u in event["users"]}
            self.count, self.anonymous = event["count"], event["anonymous"]
        elif kind == "presence_count":
            self.count, self.anonymous = event["count"], event["anonymous"]
        elif self.users is None or (kind == "join") == (event["user"] in self.users):
            self.misfits.append(event)
        elif kind == "join":
            self.users.add(event["user"])
        else:
            self.users.discard(event["user"])

    async def next(self) -> dict[str, Any]:
        """The next frame not yet taken."""
        async with asyncio.timeout(PATIENCE_SECS):
            while self.read >= len(self.frames):
                self._arrived.clear()
                await self._arrived.wait()
        self.read += 1
        return self.frames[self.read - 1]

    async def frames_until(self, done: Callable[[list[dict[str, Any]]], bool]) -> list[dict]:
        """Frames taken one by one until ``done(taken)``."""
        taken: list[dict[str, Any]] = []
        while not done(taken):
            taken.append(await self.next())
        return taken


def user(user_id: int, name: str) -> access.Identity:
    return access.Identity(user_id=user_id, name=name, via="token")


class LayerHub:
    """One process's hub, reduced to what presence needs, on a real channel layer."""

    def __init__(self, layer: Any, *, node: str | None = None) -> None:
        self.layer = layer
        self.rooms: dict[str, list[Sock]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.receivers: dict[str, asyncio.Task[None]] = {}  # channel -> its receive task
        self.deaf = False  # drop presence messages, as a pub/sub connection loses them
        self.control_ready = asyncio.Event()
        self.tracker = presence.Tracker(self, layer, node=node)
        self.start_task(self._receive_control())

    # What presence.Tracker uses of roomcast.hub.Hub:
    def members(self, room: str) -> list[Sock]:
        return list(self.rooms.get(room, ()))

    def start_task(self, coro: Any) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # What the hub does around it:
    async def join(self, sock: Sock) -> Sock:
        if sock.room not in self.rooms:
            self.rooms[sock.room] = []
            channel = await self.layer.new_channel("presence-test.")
            await self.layer.group_add(fanout.room_group(sock.room), channel)
            self.receivers[channel] = self.start_task(self._receive(sock.room, channel))
        self.rooms[sock.room].append(sock)
        sock.present = True
        self.tracker.added(sock)
        return sock

    def leave(self, sock: Sock) -> None:
        self.rooms[sock.room].remove(sock)
        sock.closed = True
        self.tracker.removed(sock)

    async def _receive(self, room: str, channel: str) -> None:
        while True:
            try:
                message = await self.layer.receive(channel)
            except Exception:  # Redis restarting: the hub retries the same way
                await asyncio.sleep(0.1)
                continue
            if message.get("type") == "test.stop":
                return
            if str(message.get("type", "")).startswith("presence.") and not self.deaf:
                self.tracker.handle(room, message)

    async def _receive_control(self) -> None:
        # One prefix for all the process's channels: channels_redis core receives them
        # under one lock, blocking on one prefix's list at a time (receive_single loops
        # until a message comes), so a second prefix would starve the first.
        channel = await self.layer.new_channel("presence-test.")
        await self.layer.group_add(hub_module.CONTROL_GROUP, channel)
        self.receivers[channel] = asyncio.current_task()  # type: ignore[assignment]
        self.control_ready.set()
        while True:
            try:
                message = await self.layer.receive(channel)
            except Exception:
                await asyncio.sleep(0.1)
                continue
            if message.get("type") == "test.stop":
                return
            if message.get("type") == "presence.down":
                presence_tracker._on_down(self, message)

    async def kill(self) -> None:
        """Stop as a process killed with SIGKILL does: no goodbye, entries left in Redis."""
        # Receivers are stopped by a message, not cancelled: a receive of channels_redis
        # core cancelled while another waits for its receive lock can hang.
        for channel in self.receivers:
            await self.layer.send(channel, {"type": "test.stop"})
        await asyncio.gather(*self.receivers.values(), return_exceptions=True)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.tracker._store is not None:
            await self.tracker._store.aclose()

    async def close(self) -> None:
        await self.tracker.close()
        await self.kill()


@pytest.fixture
def fast(settings: Any) -> None:
    """Short batches and a short TTL, so that tests wait little."""
    settings.ROOMCAST = {
        **settings.ROOMCAST,
        "PRESENCE_BATCH_SECS": 0.05,
        "PRESENCE_TTL_SECS": 1.5,
    }


@pytest.fixture
async def hubs(fast: None) -> AsyncIterator[Callable[..., Any]]:
    """``await hubs(layer)`` makes a LayerHub; all are closed at the end."""
    made: list[LayerHub] = []

    async def make(layer: Any, **kwargs: Any) -> LayerHub:
        hub = LayerHub(layer, **kwargs)
        made.append(hub)
        await hub.control_ready.wait()
        if hub.tracker._store is not None:
            async with asyncio.timeout(PATIENCE_SECS):
                await hub.tracker.registered.wait()
        return hub

    yield make
    for hub in made:
        await hub.close()
        await hub.layer.flush()


def names(frames: list[dict[str, Any]], kind: str) -> list[str]:
    return sorted(f["user"] for f in frames if f["type"] == kind)


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(PATIENCE_SECS):
        while not condition():  # noqa: ASYNC110 (state changes on timers; no event to wait on)
            await asyncio.sleep(0.01)


def present(hub: LayerHub, room: str) -> dict[str, int]:
    return {u["user"]: u["connections"] for u in hub.tracker.snapshot(room)["users"]}


async def sees(sock: Sock, users: set[str]) -> None:
    """Wait until ``sock``'s client-side list is ``users``; every frame fitted the last."""
    await until(lambda: sock.users == users)
    assert sock.misfits == []


PRESENCE = {"type": "presence", "room": "lobby"}


# -- one process (the in-memory layer) --------------------------------------------------------


async def test_presence_counts_each_user_once_and_guests_apart(hubs):
    """A snapshot lists each user once with their connection count; guests are only counted."""
    hub = await hubs(InMemoryChannelLayer())
    await hub.join(Sock("lobby", user(1, "alice")))
    await hub.join(Sock("lobby", user(1, "alice")))
    await hub.join(Sock("lobby", user(2, "bob"), live_state=False))
    for _ in range(3):
        await hub.join(Sock("lobby", access.anonymous()))
    await until(lambda: hub.tracker.snapshot("lobby")["anonymous"] == 3)
    assert hub.tracker.snapshot("lobby") == {
        **PRESENCE,
        "users": [{"user": "alice", "connections": 2}, {"user": "bob", "connections": 1}],
        "count": 2,
        "anonymous": 3,
        "truncated": False,
    }
    assert json.loads(hub.tracker.snapshot_frame("lobby")) == hub.tracker.snapshot("lobby")


async def test_a_new_member_gets_the_list_then_the_changes(hubs):
    """A live member's first frame is the list as its batch ends (itself included); then
    joins and leaves, nothing of its own arrival."""
    hub = await hubs(InMemoryChannelLayer())
    await hub.join(Sock("lobby", user(1, "alice")))
    watcher = await hub.join(Sock("lobby", user(9, "watcher")))
    assert await watcher.next() == {
        **PRESENCE,
        "users": [{"user": "alice", "connections": 1}, {"user": "watcher", "connections": 1}],
        "count": 2,
        "anonymous": 0,
        "truncated": False,
    }
    await hub.join(Sock("lobby", user(2, "bob")))
    assert await watcher.next() == {"type": "join", "room": "lobby", "user": "bob"}


async def test_join_and_leave_follow_a_users_first_and_last_connection(hubs):
    """A second tab sends no join and closing one of two sends no leave; the last one does."""
    hub = await hubs(InMemoryChannelLayer())
    watcher = await hub.join(Sock("lobby", user(9, "watcher")))
    assert (await watcher.next())["type"] == "presence"
    tab1 = await hub.join(Sock("lobby", user(1, "alice")))
    assert await watcher.next() == {"type": "join", "room": "lobby", "user": "alice"}
    tab2 = await hub.join(Sock("lobby", user(1, "alice")))
    hub.leave(tab1)
    await hub.join(Sock("lobby", user(2, "bob")))  # a marker: the next batch's frame
    assert await watcher.next() == {"type": "join", "room": "lobby", "user": "bob"}
    assert present(hub, "lobby") == {"alice": 1, "bob": 1, "watcher": 1}
    hub.leave(tab2)
    assert await watcher.next() == {"type": "leave", "room": "lobby", "user": "alice"}
    assert watcher.misfits == []


async def test_a_user_who_comes_and_goes_within_a_batch_sends_nothing(hubs):
    """Joined and left before the batch ended: no join, no leave."""
    hub = await hubs(InMemoryChannelLayer())
    watcher = await hub.join(Sock("lobby", user(9, "watcher")))
    await watcher.next()
    flicker = await hub.join(Sock("lobby", user(1, "alice")))
    hub.leave(flicker)
    await hub.join(Sock("lobby", user(2, "bob")))
    assert await watcher.next() == {"type": "join", "room": "lobby", "user": "bob"}
    assert "alice" not in present(hub, "lobby")
    assert flicker.frames == []  # gone before its first presence frame was due


async def test_guests_give_presence_count_and_chat_sockets_get_no_frames(hubs):
    """A change in guests alone is a presence_count; a /ws/chat/ socket counts but hears nothing."""
    hub = await hubs(InMemoryChannelLayer())
    watcher = await hub.join(Sock("lobby", user(9, "watcher")))
    await watcher.next()
    chat = await hub.join(Sock("lobby", user(3, "carol"), live_state=False))
    assert await watcher.next() == {"type": "join", "room": "lobby", "user": "carol"}
    guest = await hub.join(Sock("lobby", access.anonymous()))
    assert await watcher.next() == {
        "type": "presence_count",
        "room": "lobby",
        "count": 2,
        "anonymous": 1,
    }
    hub.leave(guest)
    assert (await watcher.next())["anonymous"] == 0
    assert chat.frames == []


async def test_a_large_room_gets_presence_count_then_a_snapshot_when_it_shrinks(hubs, settings):
    """Above PRESENCE_LIVE_MAX users: presence_count instead of join/leave;
    back at the limit, one presence frame so that clients have the list again."""
    settings.ROOMCAST = {**settings.ROOMCAST, "PRESENCE_LIVE_MAX": 3, "PRESENCE_COUNT_SECS": 0.2}
    hub = await hubs(InMemoryChannelLayer())
    watcher = await hub.join(Sock("big", user(100, "watcher")))
    await watcher.next()
    socks = [await hub.join(Sock("big", user(i, f"user{i}"))) for i in range(1, 5)]
    frame = await watcher.next()
    assert frame == {"type": "presence_count", "room": "big", "count": 5, "anonymous": 0}
    hub.leave(socks[0])
    assert await watcher.next() == {**frame, "count": 4}
    hub.leave(socks[1])
    snapshot = await watcher.next()
    assert snapshot["type"] == "presence" and snapshot["count"] == 3
    assert watcher.users == {"user3", "user4", "watcher"}
    hub.leave(socks[2])
    assert await watcher.next() == {"type": "leave", "room": "big", "user": "user3"}


async def test_a_large_room_gets_one_presence_count_per_count_interval(hubs, settings):
    """Changes in a large room within PRESENCE_COUNT_SECS of its last presence_count give
    one frame when the interval is over, with the count then; a newcomer meanwhile gets
    its presence snapshot at the batch's end as usual."""
    interval = 1.0
    settings.ROOMCAST = {
        **settings.ROOMCAST,
        "PRESENCE_LIVE_MAX": 2,
        "PRESENCE_COUNT_SECS": interval,
    }
    hub = await hubs(InMemoryChannelLayer())
    watcher = await hub.join(Sock("big", user(100, "watcher")))
    await watcher.next()
    socks = [await hub.join(Sock("big", user(i, f"user{i}"))) for i in range(1, 4)]
    first = await watcher.next()
    assert first == {"type": "presence_count", "room": "big", "count": 4, "anonymous": 0}
    counted_at = asyncio.get_running_loop().time()
    hub.leave(socks[0])
    newcomer = await hub.join(Sock("big", user(50, "newcomer")))
    snapshot = await newcomer.next()  # at its batch's end, not held for the count
    assert snapshot["type"] == "presence"
    assert watcher.read == len(watcher.frames)  # the count frame is not due yet
    hub.leave(socks[1])
    second = await watcher.next()
    assert asyncio.get_running_loop().time() >= counted_at + interval - 0.01
    # user1 and user2 gone, the newcomer here: one frame, the count as it is now.
    assert second == {**first, "count": 3}
    assert watcher.read == len(watcher.frames)  # nothing else came in between


async def test_many_changes_in_one_batch_become_one_presence_frame(hubs):
    """More than MAX_DIFFS_PER_BATCH joins in one batch: one presence frame, not one each."""
    hub = await hubs(InMemoryChannelLayer())
    watcher = await hub.join(Sock("busy", user(1000, "watcher")))
    await watcher.next()
    for i in range(presence.MAX_DIFFS_PER_BATCH + 1):
        await hub.join(Sock("busy", user(i, f"u{i:03}"), live_state=False))
    frame = await watcher.next()
    assert frame["type"] == "presence" and frame["count"] == presence.MAX_DIFFS_PER_BATCH + 2


async def test_a_snapshot_lists_at_most_presence_list_max_users(hubs, settings):
    """Past PRESENCE_LIST_MAX users the list is cut (by name) and says so."""
    settings.ROOMCAST = {**settings.ROOMCAST, "PRESENCE_LIST_MAX": 2}
    hub = await hubs(InMemoryChannelLayer())
    for i, name in enumerate(("carol", "alice", "bob")):
        await hub.join(Sock("lobby", user(i, name)))
    await until(lambda: hub.tracker.snapshot("lobby")["count"] == 3)
    assert hub.tracker.snapshot("lobby") == {
        **PRESENCE,
        "users": [{"user": "alice", "connections": 1}, {"user": "bob", "connections": 1}],
        "count": 3,
        "anonymous": 0,
        "truncated": True,
    }


async def test_a_snapshot_asked_mid_batch_shows_the_last_batch(hubs):
    """Asked for before the batch ends, the list is the last batch's: the changes that
    follow are exactly the frames after it."""
    hub = await hubs(InMemoryChannelLayer())
    watcher = await hub.join(Sock("lobby", user(9, "watcher")))
    await watcher.next()
    await hub.join(Sock("lobby", user(1, "alice")))
    assert present(hub, "lobby") == {"watcher": 1}  # the batch has not ended
    assert await watcher.next() == {"type": "join", "room": "lobby", "user": "alice"}
    assert present(hub, "lobby") == {"alice": 1, "watcher": 1}


async def test_user_streams_are_not_tracked_and_empty_rooms_are_forgotten(hubs):
    """A user's own stream has no presence; a room's state goes with its last member."""
    hub = await hubs(InMemoryChannelLayer())
    hub.tracker.added(Sock(fanout.user_room(1), user(1, "alice")))
    assert fanout.user_room(1) not in hub.tracker._rooms
    watcher = await hub.join(Sock("lobby", user(1, "alice")))
    await watcher.next()
    hub.leave(watcher)
    await until(lambda: "lobby" not in hub.tracker._rooms)
    assert hub.tracker.snapshot("lobby")["count"] == 0


async def test_members_answers_from_this_process_with_the_in_memory_layer(hubs):
    """roomcast.presence.members(room) from async code and from a thread (sync)."""
    hub = await hubs(InMemoryChannelLayer())
    hub_module.get_hub(lambda: hub)  # this loop's hub, as services makes it
    fanout.set_server_loop(asyncio.get_running_loop())
    await hub.join(Sock("lobby", user(1, "alice")))
    await hub.join(Sock("lobby", access.anonymous()))
    expected = {
        "room": "lobby",
        "users": [{"user": "alice", "connections": 1}],
        "count": 1,
        "anonymous": 1,
        "truncated": False,
    }
    assert await presence.amembers("lobby") == expected  # now, not as of the last batch
    assert await asyncio.to_thread(presence.members, "lobby") == expected
    assert (await presence.amembers("elsewhere"))["count"] == 0


# -- several processes through Redis ----------------------------------------------------------


def host(url: str) -> dict[str, Any]:
    """A Redis host as roomcast serve configures one (see server/settings.py: RESP2, and
    a socket timeout above the core layer's 5 s blocking read)."""
    return {"address": url, "protocol": 2, "socket_timeout": 15, "socket_connect_timeout": 5}


LAYERS = {
    "pubsub": lambda url, prefix: RedisPubSubChannelLayer(hosts=[host(url)], prefix=prefix),
    "core": lambda url, prefix: RedisChannelLayer(hosts=[host(url)], prefix=prefix),
}


@pytest.fixture(params=["pubsub", "core"])
def redis_layer(request, redis_server, redis_prefix) -> Callable[[], Any]:
    """``redis_layer()``: a new layer (a process's) on the private Redis, one prefix per test."""
    return lambda: LAYERS[request.param](redis_server.url, redis_prefix)


@pytest.mark.redis
async def test_two_processes_see_each_others_users(hubs, redis_layer):
    """Users on two processes: one list, connections summed, joins and leaves on both."""
    room = "技术 café"
    a, b = await hubs(redis_layer()), await hubs(redis_layer())
    watcher_a = await a.join(Sock(room, user(9, "watcher")))
    watcher_b = await b.join(Sock(room, user(8, "viewer")))
    alice_a = await a.join(Sock(room, user(1, "alice")))
    await b.join(Sock(room, user(2, "bob")))
    for watcher in (watcher_a, watcher_b):
        await sees(watcher, {"alice", "bob", "viewer", "watcher"})
    alice_b = await b.join(Sock(room, user(1, "alice")))
    await until(lambda: present(a, room).get("alice") == 2)
    assert present(a, room) == present(b, room)
    a.leave(alice_a)
    await until(lambda: present(b, room).get("alice") == 1)
    b.leave(alice_b)
    for watcher in (watcher_a, watcher_b):
        await sees(watcher, {"bob", "viewer", "watcher"})
        assert [f for f in watcher.frames if f["type"] == "leave"] == [
            {"type": "leave", "room": room, "user": "alice"}
        ]


@pytest.mark.redis
async def test_a_process_where_a_room_is_new_lists_who_is_there(hubs, redis_layer):
    """The first member of a room on a process is sent the list with the users of the
    other processes (the room is loaded from Redis first)."""
    a = await hubs(redis_layer())
    await a.join(Sock("lobby", user(1, "alice")))
    await a.join(Sock("lobby", access.anonymous()))
    await until(lambda: present(a, "lobby") == {"alice": 1})
    b = await hubs(redis_layer())
    newcomer = await b.join(Sock("lobby", user(2, "bob")))
    first = await newcomer.next()
    assert first == {
        **PRESENCE,
        "users": [{"user": "alice", "connections": 1}, {"user": "bob", "connections": 1}],
        "count": 2,
        "anonymous": 1,
        "truncated": False,
    }


@pytest.mark.redis
async def test_members_reads_redis_where_no_hub_runs(
    hubs, redis_layer, settings, redis_server, redis_prefix
):
    """roomcast.presence.members from code with no hub (a shell, a worker) sees every process."""
    a, b = await hubs(redis_layer()), await hubs(redis_layer())
    layer = a.layer
    backend = f"{type(layer).__module__}.{type(layer).__name__}"
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": backend,
            "CONFIG": {"hosts": [host(redis_server.url)], "prefix": redis_prefix},
        }
    }
    watcher = await a.join(Sock("lobby", user(1, "alice")))
    await b.join(Sock("lobby", user(1, "alice")))
    await b.join(Sock("lobby", user(2, "bob")))
    await b.join(Sock("lobby", access.anonymous()))
    await sees(watcher, {"alice", "bob"})
    await until(lambda: watcher.anonymous == 1)
    assert hub_module.running_hub() is None
    try:
        assert await presence.amembers("lobby") == {
            "room": "lobby",
            "users": [{"user": "alice", "connections": 2}, {"user": "bob", "connections": 1}],
            "count": 2,
            "anonymous": 1,
            "truncated": False,
        }
    finally:
        await presence.aclose_shared()


async def until_async(read: Callable[[], Any], done: Callable[[Any], bool]) -> None:
    async with asyncio.timeout(PATIENCE_SECS):
        while not done(await read()):  # noqa: ASYNC110 (polls Redis)
            await asyncio.sleep(0.05)


@pytest.mark.redis
async def test_a_killed_process_users_leave_everyone_elses_presence(hubs, redis_layer):
    """A process that stops beating (SIGKILL) drops out with leave frames: its entries are
    skipped by readers and deleted from Redis."""
    a, b = await hubs(redis_layer()), await hubs(redis_layer())
    watcher = await a.join(Sock("lobby", user(9, "watcher")))
    await b.join(Sock("lobby", user(2, "bob")))
    await b.join(Sock("lobby", user(3, "carol")))
    await b.join(Sock("lobby", access.anonymous()))
    await sees(watcher, {"bob", "carol", "watcher"})
    await until(lambda: watcher.anonymous == 1)
    await b.kill()
    await sees(watcher, {"watcher"})
    assert sorted(f["user"] for f in watcher.frames if f["type"] == "leave") == ["bob", "carol"]
    await until(lambda: watcher.anonymous == 0)
    store = a.tracker._store
    assert set(await store.read("lobby")) == {a.tracker.node}
    shard = store.shard_of("lobby")
    data_key, _ = shard._keys("lobby")
    await until_async(lambda: shard._client.hkeys(data_key), lambda keys: len(keys) == 1)


@pytest.mark.redis
async def test_a_process_shutting_down_makes_its_users_leave_at_once(hubs, redis_layer, settings):
    """close() deletes the node's entries and tells every process: leaves without the TTL."""
    settings.ROOMCAST = {**settings.ROOMCAST, "PRESENCE_TTL_SECS": 600.0}
    a, b = await hubs(redis_layer()), await hubs(redis_layer())
    watcher = await a.join(Sock("lobby", user(9, "watcher")))
    await b.join(Sock("lobby", user(2, "bob")))
    await sees(watcher, {"bob", "watcher"})
    await b.close()
    await sees(watcher, {"watcher"})
    assert set(await a.tracker._store.read("lobby")) == {a.tracker.node}


@pytest.mark.redis
async def test_a_lost_presence_message_is_repaired_from_redis(hubs, redis_layer):
    """A process that missed a diff (pub/sub lost it) finds out from the versions in Redis
    within two heartbeats and reloads the room."""
    a, b = await hubs(redis_layer()), await hubs(redis_layer())
    watcher = await a.join(Sock("lobby", user(9, "watcher")))
    bob = await b.join(Sock("lobby", user(2, "bob")))
    await sees(watcher, {"bob", "watcher"})
    a.deaf = True
    b.leave(bob)
    await b.join(Sock("lobby", user(3, "carol")))
    await until(lambda: present(b, "lobby") == {"carol": 1, "watcher": 1})
    a.deaf = False
    await sees(watcher, {"carol", "watcher"})


@pytest.mark.redis
async def test_presence_survives_a_redis_restart(hubs, redis_server, redis_prefix, settings):
    """Redis down: local presence goes on and sockets are not touched; Redis back (empty):
    each process finds its heartbeat gone, writes its entries again, and both agree,
    without anyone leaving in between."""
    settings.ROOMCAST = {**settings.ROOMCAST, "PRESENCE_TTL_SECS": 3.0}
    a = await hubs(LAYERS["pubsub"](redis_server.url, redis_prefix))
    b = await hubs(LAYERS["pubsub"](redis_server.url, redis_prefix))
    watcher = await a.join(Sock("lobby", user(9, "watcher")))
    viewer = await b.join(Sock("lobby", user(2, "bob")))
    await sees(watcher, {"bob", "watcher"})
    redis_server.stop()
    try:
        await a.join(Sock("lobby", user(1, "alice")))
        await sees(watcher, {"alice", "bob", "watcher"})
    finally:
        redis_server.start()
    await sees(viewer, {"alice", "bob", "watcher"})
    await until(lambda: present(a, "lobby") == {"alice": 1, "bob": 1, "watcher": 1})
    assert [f for f in watcher.frames + viewer.frames if f["type"] == "leave"] == []
