"""``roomcast serve --workers 2`` through Redis: /healthz, /readyz, and a /metrics that
sums both workers' counts (prometheus-client's multiprocess mode)."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgres]

#: Sockets opened at most while waiting for the kernel to hand some to each worker.
MAX_SOCKETS = 60


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(server, key: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = get(f"{server.http_url}/metrics", {"Authorization": f"Bearer {key}"})
    assert status == 200, body
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def connections_by_pid(directory: Path) -> dict[str, float]:
    """Each worker's own roomcast_connections value, read from its file."""
    found: dict[str, float] = {}
    for path in directory.glob("gauge_livesum_*.db"):
        pid = path.stem.rsplit("_", 1)[1]
        for key, value, *_rest in MmapedDict.read_all_values_from_file(str(path)):
            if json.loads(key)[0] == "roomcast_connections":
                found[pid] = found.get(pid, 0) + value
    return found


async def test_health_and_metrics_of_two_workers(serve, clients, redis_server, redis_prefix,
                                                 postgres_database):  # fmt: skip
    """Sockets spread over two workers: /metrics (from whichever worker answers) counts
    them all, and a post counts once as stored and once per member as deliveries."""
    server = serve(
        workers=2,
        ROOMCAST_DATABASE_URL=postgres_database,
        ROOMCAST_REDIS_URL=redis_server.url,
        ROOMCAST_REDIS_PREFIX=redis_prefix,
        ROOMCAST_POST_RATE_PER_SOCKET="0",
    )
    assert get(f"{server.http_url}/healthz") == (200, b'{"status": "ok"}')
    status, body = get(f"{server.http_url}/readyz")
    assert status == 200, body
    assert json.loads(body) == {"status": "ok", "database": "ok", "channel_layer": "ok"}
    assert get(f"{server.http_url}/metrics")[0] == 401
    key = (server.data_dir / "api_key").read_text().strip()
    directory = server.data_dir / f"metrics-{server.port}"
    before = await asyncio.to_thread(scrape, server, key)

    room = f"metered {uuid.uuid4().hex[:6]}"
    members = []
    while len(members) < MAX_SOCKETS:
        member = await clients(server.ws_url(room))
        await member.recv_type("joined")
        members.append(member)
        busy = [n for n in connections_by_pid(directory).values() if n > 0]
        if len(members) >= 4 and len(busy) == 2:
            break
    per_worker = connections_by_pid(directory)
    assert len([n for n in per_worker.values() if n > 0]) == 2, per_worker
    assert sum(per_worker.values()) == len(members)

    posts = 3
    for i in range(posts):
        await members[0].send({"message": f"m{i}"})
    for member in members:
        await member.messages(posts)
    # Stored and delivered are counted before the frames are written: they are in.
    for _ in range(4):  # each scrape is answered by either worker: all agree
        after = await asyncio.to_thread(scrape, server, key)
        assert after[("roomcast_connections", (("endpoint", "room"),))] == len(members)
        stored = ("roomcast_messages_stored_total", ())
        assert after[stored] == before[stored] + posts
        deliveries = ("roomcast_deliveries_total", ())
        assert after[deliveries] == before[deliveries] + posts * len(members)
