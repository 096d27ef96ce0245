"""The shard outage of test_shards.py on the core layer (``--layer core``), in a file of
its own to keep each file short. See docs/deploy.md, "Redis shards and Sentinel"."""

from __future__ import annotations

import pytest

from tests.e2e.test_shards import MISSED, filled, outage, sharded, shards  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgres]


async def test_core_layer_shard_outage_loses_nothing_but_stays_polled(
    sharded,  # noqa: F811
    shards,  # noqa: F811
    redis_prefix,
    clients,
):
    """core layer. Every process's inbox is on one shard (channels_redis hashes its
    client prefix), so a dead shard delays rooms on the other shard too, for the
    processes whose inbox it held; still, every post reaches every member, in order,
    once, by the position check. The restarted shard has lost the groups' members (core
    keeps them in Redis; the hubs add their channel once, when a room's first local
    member joins), so its rooms stay on the position check (seconds late, nothing lost)
    until they empty out on a process and are joined again: run such Redis with
    persistence (appendonly), or use the pub/sub layer."""
    # Shorter checks than the defaults (5 s, 30 s), to keep the file short.
    figures = await outage(
        "core",
        sharded,
        shards,
        redis_prefix,
        clients,
        ROOMCAST_POSITION_CHECK_SECS="2",
        ROOMCAST_PRESENCE_TTL_SECS="9",
    )
    # Posts after the return were filled from the database too: delivery stayed on the
    # position check.
    _, doomed = figures["rooms"]
    fills = filled(figures["servers"], doomed)
    assert any(end > MISSED + 1 for _, end in fills), fills
