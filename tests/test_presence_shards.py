"""The presence store over two Redis shards (real redis-servers): each room's keys on its
group's shard, heartbeats on both, and one shard down holding up only its own rooms."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from channels_redis.pubsub import RedisPubSubChannelLayer

from roomcast import fanout
from roomcast.presence import redis_config
from roomcast.presence._state import Room, Write
from roomcast.presence._store import RedisConfig, ShardsDownError, Store
from tests.conftest import RedisServer

pytestmark = [pytest.mark.redis]

TTL_SECS = 30.0


@pytest.fixture
def shards(tmp_path: Path) -> Iterator[list[RedisServer]]:
    servers = []
    for n in range(2):
        (tmp_path / f"r{n}").mkdir()
        server = RedisServer(tmp_path / f"r{n}")
        server.start()
        servers.append(server)
    yield servers
    for server in servers:
        server.stop()


def config_for(shards: list[RedisServer], prefix: str) -> RedisConfig:
    config = redis_config(RedisPubSubChannelLayer(hosts=[s.url for s in shards], prefix=prefix))
    assert config is not None
    return config


def rooms_per_shard(config: RedisConfig) -> list[str]:
    """A room on shard 0, then one on shard 1."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < 2:
        found.setdefault(config.shard(fanout.room_group(f"room {n}")), f"room {n}")
        n += 1
    return [found[0], found[1]]


def write(room: str, node: str, user: int) -> Write:
    return Write(
        room=Room(room, node),
        version=1,
        users=[(user, 1, f"user{user}")],
        anonymous=0,
        anon_changed=False,
        full=True,
        gone=False,
    )


async def test_each_room_on_its_shard_and_heartbeats_on_all(shards, redis_prefix):
    """A room's keys go to its group's shard only; a heartbeat goes to every shard."""
    config = config_for(shards, redis_prefix)
    store = Store(config, ttl=TTL_SECS)
    try:
        rooms = rooms_per_shard(config)
        assert await store.beat("n1", rooms) is False  # first beat: not there before
        assert await store.beat("n1", rooms) is True
        assert await store.write("n1", [write(room, "n1", 7) for room in rooms]) == []
        for n, room in enumerate(rooms):
            key = f"{redis_prefix}:presence:r:{fanout.room_group(room)}"
            with (
                redis.Redis(port=shards[n].port) as here,
                redis.Redis(port=shards[1 - n].port) as there,
            ):
                assert here.exists(key) and not there.exists(key)
                assert here.exists(f"{redis_prefix}:presence:alive:n1")
            assert (await store.read(room))["n1"][1] == {7: (1, "user7")}
        assert await store.versions(rooms) == [{"n1": 1}, {"n1": 1}]
    finally:
        await store.aclose()


async def test_a_dead_shard_holds_up_only_its_rooms(shards, redis_prefix):
    """Shard 1 down: writes to its room come back to be retried, the other room's are
    written; heartbeats and liveness go on through shard 0; its rooms' versions are
    unknown (None), not empty; reading its room raises. Both down: the heartbeat raises.
    Back (empty): the heartbeat reports it missing there, so the node rewrites."""
    config = config_for(shards, redis_prefix)
    store = Store(config, ttl=TTL_SECS)
    try:
        healthy, doomed = rooms_per_shard(config)
        await store.beat("n1", [healthy, doomed])
        shards[1].stop()
        writes = [write(healthy, "n1", 1), write(doomed, "n1", 2)]
        failed = await store.write("n1", writes)
        assert failed == [writes[1]]
        assert await store.beat("n1", [healthy, doomed]) is True
        assert await store.alive(["n1", "n2"]) == {"n1"}
        assert await store.versions([healthy, doomed]) == [{"n1": 1}, None]
        assert (await store.read(healthy))["n1"][1] == {1: (1, "user1")}
        with pytest.raises(redis.exceptions.ConnectionError):
            await store.read(doomed)
        shards[0].stop()
        with pytest.raises(ShardsDownError):
            await store.beat("n1", [healthy, doomed])
        shards[0].start()
        shards[1].start()
        assert await store.beat("n1", [healthy, doomed]) is False
        assert await store.write("n1", writes) == []
        assert (await store.read(doomed))["n1"][1] == {2: (1, "user2")}
    finally:
        await store.aclose()
