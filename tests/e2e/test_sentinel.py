"""``roomcast serve`` through Redis Sentinel: one private Redis master, one private
sentinel watching it (``redis-server sentinel.conf --sentinel``, the same binary), and two
processes given ``redis+sentinel://127.0.0.1:PORT/MASTER``."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import RedisServer, free_port, wait_for_port
from tests.test_cli import one_line, run

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgres]

MASTER_NAME = "roomcast-master"


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[tuple[RedisServer, int]]:
    """A private Redis master and a sentinel watching it: (master, sentinel port)."""
    master_dir = tmp_path / "master"
    master_dir.mkdir()
    master = RedisServer(master_dir)
    master.start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"  # the sentinel rewrites it: a file of its own
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nlogfile {tmp_path / 'sentinel.log'}\n"
        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} 1\n"
        f"sentinel down-after-milliseconds {MASTER_NAME} 5000\n"
    )
    proc = subprocess.Popen(
        ["redis-server", str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc=proc)
        yield master, port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        master.stop()


async def test_messages_flow_through_a_sentinel_named_master(
    sentinel, serve, redis_prefix, postgres_database, clients
):
    """Two processes find the master through the sentinel: members on both get every
    message, ``roomcast push`` through Redis (which also asks the sentinel) reaches them,
    and the layer's keys are on the master the sentinel names."""
    master, sentinel_port = sentinel
    with redis.Redis(port=sentinel_port, socket_timeout=5, decode_responses=True) as client:
        assert client.sentinel_get_master_addr_by_name(MASTER_NAME) == ("127.0.0.1", master.port)
    url = f"redis+sentinel://127.0.0.1:{sentinel_port}/{MASTER_NAME}/0"
    env = {
        "ROOMCAST_DATABASE_URL": postgres_database,
        "ROOMCAST_REDIS_URL": url,
        "ROOMCAST_REDIS_PREFIX": redis_prefix,
        "ROOMCAST_LAYER": "pubsub",
    }
    a, b = serve(**env), serve(**env)
    room = "sentinel ☃"
    members = [await clients(server.ws_url(room)) for server in (a, b)]
    for member in members:
        await member.recv_type("joined")
    for i in range(6):
        await members[i % 2].send({"message": f"m{i}"})
    for member in members:
        assert [f["seq"] for f in await member.messages(6)] == list(range(1, 7))
    pushed = await asyncio.to_thread(a.cli, "push", room, "pushed via sentinel")
    assert pushed.returncode == 0, pushed.stderr
    for member in members:
        assert [(f["seq"], f["message"]) for f in await member.messages(1)] == [
            (7, "pushed via sentinel")
        ]
    with redis.Redis(port=master.port, socket_timeout=5) as client:
        assert client.get(f"{redis_prefix}:database") is not None  # announced by serve
        assert client.keys(f"{redis_prefix}:presence:*")


def test_push_says_when_the_sentinel_does_not_answer(tmp_path):
    """A sentinel URL whose sentinel is not there: push refuses in one line naming it."""
    url = f"redis+sentinel://127.0.0.1:{free_port()}/{MASTER_NAME}"
    line = one_line(run(tmp_path, "push", "lobby", "hi", "--redis", url), 1)
    assert f"cannot reach Redis at {url}/0 (no sentinel answered" in line, line
