"""``ROOMCAST_REDIS_URL``: shards and Sentinel URLs (roomcast.server.redis_urls), their
one-line errors, and the presence mirror's choice of shard matching each layer's."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from channels_redis.core import RedisChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer

from roomcast import fanout
from roomcast.presence import redis_config
from roomcast.server import redis_urls
from roomcast.server.redis_urls import RedisURLError, parse
from tests.test_cli import one_line, run


def test_one_url_is_one_host_with_the_options() -> None:
    """One URL: one channels_redis host spec, the URL as its address, options added."""
    assert parse("redis://127.0.0.1:6379/0", protocol=2) == [
        {"address": "redis://127.0.0.1:6379/0", "protocol": 2}
    ]


def test_comma_separated_urls_are_shards_in_order() -> None:
    """Several URLs, commas with optional spaces: one shard each, in the order given."""
    hosts = parse("redis://a:6379/0, rediss://b:6380/1,unix:///run/redis.sock?db=2")
    assert [h["address"] for h in hosts] == [
        "redis://a:6379/0",
        "rediss://b:6380/1",
        "unix:///run/redis.sock?db=2",
    ]


def test_sentinel_url_lists_sentinels_master_and_db() -> None:
    """redis+sentinel://: the sentinels (default port 26379), the master's name, the db,
    the master's credentials, and the socket options for the sentinels too."""
    (host,) = parse(
        "redis+sentinel://me:p%40ss@s1:26379,s2,[::1]:26380/my%20master/3",
        socket_timeout=15,
        max_connections=10,
    )
    assert host == {
        "sentinels": [("s1", 26379), ("s2", 26379), ("::1", 26380)],
        "master_name": "my master",
        "db": 3,
        "username": "me",
        "password": "p@ss",
        "socket_timeout": 15,
        "max_connections": 10,
        "sentinel_kwargs": {"socket_timeout": 15},
    }


def test_sentinel_urls_and_plain_urls_mix_as_shards() -> None:
    """A comma before ``scheme://`` starts the next shard; others separate sentinels."""
    hosts = parse("redis+sentinel://s1,s2/m1,redis+sentinel://s1,s2/m2,redis://c:6379")
    assert [h.get("master_name") for h in hosts] == ["m1", "m2", None]
    assert hosts[0]["sentinels"] == [("s1", 26379), ("s2", 26379)]
    assert hosts[2]["address"] == "redis://c:6379"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("localhost:6379", "is not a Redis URL: use redis://"),
        ("http://h:6379", "is not a Redis URL: use redis://"),
        ("redis://a:6379,b:6379", "names several hosts: only a redis+sentinel:// URL"),
        ("redis://a:port/0", "the port is not a number"),
        ("redis://a:6379/zero", "the database 'zero' is not a number"),
        ("redis:///0", "has no host"),
        ("redis://a:6379/0,redis://a:6379/0", "is given twice"),
        ("redis+sentinel://s1:26379", "give the master's name"),
        ("redis+sentinel://s1:26379/m/1/2", "give the master's name"),
        ("redis+sentinel://s1:x/m", "sentinel 's1:x' is not HOST[:PORT]"),
        ("redis+sentinel:///m", "lists no sentinel"),
        (" , ", "no Redis URL given"),
        (",".join(f"redis://h{n}" for n in range(65)), "at most 64 shards"),
    ],
)
def test_bad_values_name_what_to_write(value: str, expected: str) -> None:
    """Each mistake gets a message naming it and the forms that work."""
    with pytest.raises(RedisURLError) as info:
        parse(value)
    assert expected in str(info.value), str(info.value)


def test_passwords_are_hidden_in_messages() -> None:
    """A URL quoted in an error or a log line shows no password."""
    with pytest.raises(RedisURLError) as info:
        parse("redis://u:secret@a:notaport/0")
    assert "secret" not in str(info.value) and "u:***@a" in str(info.value)
    assert redis_urls.where({"address": "rediss://:secret@h:6380/0"}) == "rediss://:***@h:6380/0"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("redis://a:6379,b:6379", "roomcast serve: --redis (or ROOMCAST_REDIS_URL): 'redis://"),
        ("redis+sentinel://s1/m,redis+sentinel://s1/m", "is given twice"),
    ],
)
def test_serve_refuses_a_bad_redis_flag_in_one_line(
    tmp_path: Path, value: str, expected: str
) -> None:
    """``roomcast serve --redis`` with a bad value: one line, exit 2, nothing started."""
    line = one_line(run(tmp_path, "serve", "--redis", value), 2)
    assert expected in line, line


def test_settings_refuse_a_bad_variable_in_one_line(tmp_path: Path) -> None:
    """The variable goes through the settings' check too (e.g. ``roomcast user``)."""
    result = run(tmp_path, "serve", env={"ROOMCAST_REDIS_URL": "redis://a:6379/0,h:6379/1"})
    line = one_line(result, 2)
    assert "ROOMCAST_REDIS_URL" in line and "names several hosts" in line, line


# -- presence keys follow the layer's shards ----------------------------------------------


def rooms() -> list[str]:
    return ["lobby", "技术交流", "café", *(f"room {n}" for n in range(60))]


def test_presence_shard_is_the_core_layers_shard_of_the_group() -> None:
    """With the core layer, a room's presence keys live where its group lives."""
    hosts = [f"redis://127.0.0.1:{6379 + n}/0" for n in range(3)]
    layer = RedisChannelLayer(hosts=hosts, prefix="rc")
    config = redis_config(layer)
    assert config is not None and len(config.hosts) == 3
    picked = [config.shard(fanout.room_group(room)) for room in rooms()]
    assert picked == [layer.consistent_hash(fanout.room_group(room)) for room in rooms()]
    assert set(picked) == {0, 1, 2}  # the test rooms cover every shard


async def test_presence_shard_is_the_pubsub_layers_shard_of_the_group() -> None:
    """With the pub/sub layer (which hashes the group's channel name, prefix included),
    a room's presence keys live on the shard its group's messages are published on."""
    hosts = [f"redis://127.0.0.1:{6379 + n}/0" for n in range(3)]
    prefix = f"rc{uuid.uuid4().hex[:6]}"
    layer = RedisPubSubChannelLayer(hosts=hosts, prefix=prefix)
    config = redis_config(layer)
    assert config is not None and config.prefix == prefix
    loop_layer = layer._get_layer()
    for room in rooms():
        group = fanout.room_group(room)
        channel = loop_layer._get_group_channel_name(group)
        shard = loop_layer._get_shard(channel)
        assert loop_layer._shards.index(shard) == config.shard(group), room
