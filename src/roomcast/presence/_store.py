"""Presence in Redis: the keys, and one connection pool per event loop.

Layer: fan-out (part of :mod:`roomcast.presence`). Imports redis-py's asyncio client and
channels_redis's host decoding, which are optional dependencies: only when a
channels_redis layer is in use (nothing here runs with the in-memory layer).

Keys, under ``<layer prefix>:presence:`` (see :mod:`roomcast.presence`): ``r:<group>``
(a room's entries), ``v:<group>`` (each node's version in the room), ``alive:<node>``
(a node's heartbeat).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from roomcast import fanout

from ._state import Write

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

#: Longest wait for one Redis round trip before it counts as failed.
REDIS_TIMEOUT_SECS = 5.0
#: Rooms per Redis round trip (writes, heartbeats, version checks).
ROOMS_PER_ROUND_TRIP = 200


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


_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Store]] = (
    weakref.WeakKeyDictionary()
)


def shared_store(host: dict[str, Any], prefix: str, *, ttl: float) -> Store:
    """A store for :func:`amembers` where no tracker runs: one per event loop and host."""
    stores = _shared.setdefault(asyncio.get_running_loop(), {})
    key = repr(sorted(host.items())) + prefix
    if key not in stores:
        stores[key] = Store(host, prefix, ttl=ttl)
    return stores[key]


async def aclose_shared() -> None:
    """Close the Redis connections :func:`amembers` opened on this event loop."""
    for store in _shared.pop(asyncio.get_running_loop(), {}).values():
        await store.aclose()


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class Store:
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

    async def write(self, node: str, writes: list[Write]) -> None:
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
