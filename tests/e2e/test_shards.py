"""Two ``roomcast serve`` processes on two Redis shards (``ROOMCAST_REDIS_URL`` with two
URLs) and one PostgreSQL database: rooms on each shard, members on both processes,
messages and presence across them; then one shard dies and comes back (docs/deploy.md,
"Redis shards and Sentinel", has the figures this measures).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer

from roomcast import fanout
from roomcast.presence import redis_config
from tests.conftest import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgres]


@pytest.fixture
def shards(tmp_path: Path) -> Iterator[list[RedisServer]]:
    """Two private Redis servers, this test's own."""
    servers = []
    for n in range(2):
        workdir = tmp_path / f"redis{n}"
        workdir.mkdir()
        server = RedisServer(workdir)
        server.start()
        servers.append(server)
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def sharded(shards, serve, redis_prefix, postgres_database):
    """``sharded(layer)``: two roomcast serve processes on both shards."""

    def start(layer: str = "pubsub", **env: str) -> list[Any]:
        shared = {
            "ROOMCAST_DATABASE_URL": postgres_database,
            "ROOMCAST_REDIS_URL": ",".join(s.url for s in shards),
            "ROOMCAST_REDIS_PREFIX": redis_prefix,
            "ROOMCAST_LAYER": layer,
            "ROOMCAST_POST_RATE_PER_SOCKET": "0",
            "ROOMCAST_PRESENCE_BATCH_SECS": "0.05",
            **env,
        }
        return [serve(**shared) for _ in range(2)]

    return start


def rooms_on_shards(shards: list[RedisServer], prefix: str, layer: str) -> list[str]:
    """One new room name per shard, whose group the layer puts on that shard."""
    make = RedisPubSubChannelLayer if layer == "pubsub" else RedisChannelLayer
    config = redis_config(make(hosts=[s.url for s in shards], prefix=prefix))  # no I/O
    assert config is not None
    found: dict[int, str] = {}
    while len(found) < len(shards):
        name = f"shard room {uuid.uuid4().hex[:8]}"
        found.setdefault(config.shard(fanout.room_group(name)), name)
    return [found[n] for n in range(len(shards))]


#: Posts to the dead shard's room while it is down.
MISSED = 20
#: Posts after the shard's return, one per PACE_SECS; one that arrives within LIVE_SECS
#: came through the layer (a fill by the position check comes seconds late).
PACE_SECS = 0.25
LIVE_SECS = 1.0
#: How long to post after the return, waiting for live delivery, per layer: the core
#: layer's group memberships were on the restarted shard, so it stays on the position
#: check (test_shards_core.py shows it); this bounds that test's length.
PROBE_SECS = {"pubsub": 30.0, "core": 4.0}


def filled(servers: Any, room: str) -> list[tuple[int, int]]:
    """The seq ranges of ``room`` that the servers' position checks read from the
    database because they never came through the layer (their WARNING lines)."""
    pattern = re.compile(rf"Room {re.escape(repr(room))}: seqs (\d+)\.\.(\d+) never arrived")
    return [(int(m.group(1)), int(m.group(2))) for s in servers for m in pattern.finditer(s.log())]


def presence_api(server: Any, room: str) -> dict[str, Any]:
    key = (server.data_dir / "api_key").read_text().strip()
    request = urllib.request.Request(
        f"{server.http_url}/api/rooms/{urllib.request.quote(room, safe='')}/presence",
        headers={"Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


async def until_guests(server: Any, room: str, count: int, timeout: float = 20) -> None:
    """Wait until ``server``'s presence view of ``room`` (read from Redis) has ``count``
    guests."""
    async with asyncio.timeout(timeout):
        while (await asyncio.to_thread(presence_api, server, room))["anonymous"] != count:  # noqa: ASYNC110 - another process's view, over HTTP
            await asyncio.sleep(0.05)


def presence_keys(shard: RedisServer, prefix: str) -> set[str]:
    with redis.Redis(port=shard.port, socket_timeout=5) as client:
        return {k.decode() for k in client.keys(f"{prefix}:presence:r:*")}


async def ack_of(client: Any, text: str) -> int:
    """Send ``text`` and return its seq from the ack (message frames in between skipped)."""
    cid = uuid.uuid4().hex
    await client.send({"type": "message", "message": text, "client_id": cid})
    while (frame := await client.recv(timeout=30))["type"] != "ack":
        assert frame["type"] == "message", frame
    assert frame["client_id"] == cid
    return int(frame["seq"])


@pytest.mark.parametrize("layer", ["pubsub", "core"])
async def test_rooms_on_both_shards_share_messages_and_presence(
    sharded, shards, redis_prefix, clients, layer
):
    """A room on each shard, members on both processes: every member gets every message
    in seq order, each process's presence counts the other's guests, and each room's
    presence keys are on its own shard only."""
    a, b = sharded(layer)
    rooms = rooms_on_shards(shards, redis_prefix, layer)
    members = {room: [await clients(s.ws_url(room)) for s in (a, b)] for room in rooms}
    for pair in members.values():
        for member in pair:
            await member.recv_type("joined")
    for room, (on_a, on_b) in members.items():
        for i in range(10):
            await (on_a if i % 2 else on_b).send({"message": f"{room} m{i}"})
    for room, pair in members.items():
        for member in pair:
            frames = await member.messages(10)
            assert [f["seq"] for f in frames] == list(range(1, 11))
            assert {f["message"] for f in frames} == {f"{room} m{i}" for i in range(10)}
    for room in rooms:
        for server in (a, b):
            await until_guests(server, room, 2)
    for n, room in enumerate(rooms):
        key = f"{redis_prefix}:presence:r:{fanout.room_group(room)}"
        assert key in presence_keys(shards[n], redis_prefix)
        assert key not in presence_keys(shards[1 - n], redis_prefix)


async def outage(layer: str, sharded, shards, redis_prefix, clients, **env: str) -> dict[str, Any]:
    """The scenario of the tests below; returns what it measured.

    Rooms ``healthy`` (shard 0) and ``doomed`` (shard 1), a member of each on both
    processes, a poster in ``doomed`` on the first. Shard 1 stops; 5 posts to
    ``healthy`` and ``MISSED`` to ``doomed`` (each acked, so stored); every member gets
    them all, in order, once (``doomed``'s from the database, by the position check);
    a member joining ``doomed`` then gets them too. Shard 1 starts again, empty (as
    after a crash without persistence); then a post every PACE_SECS, each member's
    frames timed, until one reaches both within LIVE_SECS (came through the layer) or
    ``PROBE_SECS``; every post arrives in order and once either way. ``env``: the
    servers' settings.
    """
    a, b = sharded(layer, **env)
    healthy, doomed = rooms_on_shards(shards, redis_prefix, layer)
    on = {room: [await clients(s.ws_url(room)) for s in (a, b)] for room in (healthy, doomed)}
    for pair in on.values():
        for member in pair:
            await member.recv_type("joined")
    poster = await clients(a.ws_url(doomed))
    await poster.recv_type("joined")
    for room in (healthy, doomed):
        await until_guests(a, room, 3 if room == doomed else 2)
    figures: dict[str, Any] = {"layer": layer, "servers": (a, b), "rooms": (healthy, doomed)}

    shards[1].stop()
    start = time.monotonic()
    for i in range(5):
        await on[healthy][0].send({"message": f"h{i}"})
    healthy_delays = []
    for member in on[healthy]:
        frames = await member.messages(5, timeout=30)
        assert [f["message"] for f in frames] == [f"h{i}" for i in range(5)]
        healthy_delays.append(time.monotonic() - start)
    figures["healthy_secs"] = healthy_delays
    seqs = [await ack_of(poster, f"d{i}") for i in range(MISSED)]
    assert seqs == list(range(1, MISSED + 1))
    stored = time.monotonic()
    for member in on[doomed]:
        frames = await member.messages(MISSED, timeout=30)
        assert [f["seq"] for f in frames] == seqs
        assert [f["message"] for f in frames] == [f"d{i}" for i in range(MISSED)]
    figures["polled_secs"] = time.monotonic() - stored
    late = await clients(b.ws_url(doomed, since=0))
    assert (await late.recv_type("joined"))["seq"] == MISSED
    assert [f["seq"] for f in await late.messages(MISSED)] == seqs

    shards[1].start()
    back = time.monotonic()
    arrivals: list[list[tuple[int, float]]] = [[], []]
    last = 0
    caught_up = [asyncio.Event(), asyncio.Event()]

    async def read(member: Any, into: list[tuple[int, float]], done: asyncio.Event) -> None:
        while True:
            frame = await member.recv(timeout=60)
            if frame["type"] == "message":
                into.append((frame["seq"], time.monotonic()))
                if frame["seq"] == last:
                    done.set()

    readers = [
        asyncio.create_task(read(m, into, done))
        for m, into, done in zip(on[doomed], arrivals, caught_up, strict=True)
    ]
    sent: dict[int, float] = {}
    live_seq = None
    try:
        while live_seq is None and time.monotonic() - back < PROBE_SECS[layer]:
            seq = MISSED + 1 + len(sent)
            sent[seq] = time.monotonic()
            await poster.send({"message": f"live {seq}"})
            await asyncio.sleep(PACE_SECS)  # pacing the posts, not waiting for an event
            for q, t in sent.items():
                if all(any(g == q and at - t < LIVE_SECS for g, at in got) for got in arrivals):
                    live_seq = q
                    break
        last = max(sent)
        async with asyncio.timeout(30):
            for got, done in zip(arrivals, caught_up, strict=True):
                if not got or got[-1][0] < last:
                    await done.wait()
    finally:
        for reader in readers:
            reader.cancel()
    for got in arrivals:  # every post after the return, in order, once
        assert [q for q, _ in got] == list(range(MISSED + 1, last + 1))
    figures["last"] = last
    figures["live_after_secs"] = None if live_seq is None else sent[live_seq] - back
    figures["posts_before_live"] = len(sent) if live_seq is None else live_seq - MISSED - 1
    await until_guests(b, doomed, 4)  # presence of the room rebuilt on the empty shard
    figures["presence_after_secs"] = time.monotonic() - back
    shown = {k: v for k, v in figures.items() if k not in ("servers", "rooms")}
    print(f"\nshard outage figures: {shown}")
    return figures


async def test_a_dead_shard_degrades_its_rooms_to_database_polling_until_it_returns(
    sharded, shards, redis_prefix, clients
):
    """pubsub layer (the default). While shard 1 is down, the room on shard 0 stays live
    across processes; posts to the room on shard 1 are acked and stored and reach every
    member (sockets stay open) by the hubs' position check. When the shard comes back,
    delivery is live again (redis-py resubscribes) and presence is rebuilt, with no
    client reconnecting."""
    figures = await outage("pubsub", sharded, shards, redis_prefix, clients)
    healthy, doomed = figures["rooms"]
    assert filled(figures["servers"], healthy) == []  # live all along
    # The dead shard's room: its outage posts filled; after the return, live again
    # (the last posts came through the layer: no hub had to fill them).
    fills = filled(figures["servers"], doomed)
    assert any(first <= MISSED <= end for first, end in fills), fills
    assert all(end < figures["last"] for _, end in fills), fills
    assert figures["live_after_secs"] is not None
