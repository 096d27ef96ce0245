"""Presence in Redis: the keys, their shards, and one connection pool per shard and loop.

Layer: fan-out (part of :mod:`roomcast.presence`). Imports redis-py's asyncio client and
channels_redis's host decoding, which are optional dependencies: only when a
channels_redis layer is in use (nothing here runs with the in-memory layer).

Keys, under ``<layer prefix>:presence:`` (see :mod:`roomcast.presence`): ``r:<group>``
(a room's entries), ``v:<group>`` (each node's version in the room), ``alive:<node>``
(a node's heartbeat).

Shards. With several Redis hosts (``ROOMCAST_REDIS_URL`` with several URLs) a room's two
keys live on the shard the channel layer uses for the room's group, found with the
layer's own hash (channels_redis: CRC32 of the group's name for the core layer, of the
group's pub/sub channel name for the pub/sub layer). So a room's messages and presence
depend on the same Redis: a shard that dies takes both away for its rooms and nothing
from the others, and a presence read is one round trip to one server (its two keys in
one MULTI, which Redis only runs on one server). Each node beats on every shard, since a
room's entries are judged by the heartbeat on the room's shard; a node counts as alive
while any shard that answers has its heartbeat. A shard that fails does not stop the
others: its rooms' writes wait and are retried, and it is logged once per outage.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from roomcast import fanout

from ._state import Write

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

#: Longest wait for one Redis round trip before it counts as failed.
REDIS_TIMEOUT_SECS = 5.0
#: Rooms per Redis round trip (writes, heartbeats, version checks).
ROOMS_PER_ROUND_TRIP = 200

T = TypeVar("T")


class ShardsDownError(ConnectionError):
    """No Redis shard answered (the first shard's error is the cause)."""


@dataclass(frozen=True, eq=False)
class RedisConfig:
    """The Redis side of a channels_redis layer: its hosts (as channels_redis decodes
    them), its key prefix, and how it picks a group's shard."""

    hosts: tuple[dict[str, Any], ...]
    prefix: str
    #: The pub/sub layer hashes a group's channel name (``<prefix>__group__<group>``),
    #: the core layer the group's name.
    pubsub: bool

    def shard(self, group: str) -> int:
        """The index of the host that the layer uses for ``group``."""
        if len(self.hosts) == 1:
            return 0
        # channels_redis's own function (a private one, so tests/test_redis_urls.py
        # checks it against each layer's choice), so that presence follows the layer.
        from channels_redis.utils import _consistent_hash

        name = f"{self.prefix}__group__{group}" if self.pubsub else group
        return int(_consistent_hash(name, len(self.hosts)))

    def key(self) -> str:
        """A key telling configs apart (for :func:`shared_store`)."""
        return repr([sorted(h.items()) for h in self.hosts]) + self.prefix


def redis_config(layer: Any) -> RedisConfig | None:
    """The Redis hosts of ``layer``, or None for a layer without Redis (presence is then
    this process's alone)."""
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
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "asgi")
    return RedisConfig(
        tuple(dict(h) for h in hosts), str(prefix), pubsub=module != "channels_redis.core"
    )


_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Store]] = (
    weakref.WeakKeyDictionary()
)


def shared_store(config: RedisConfig, *, ttl: float) -> Store:
    """A store for :func:`amembers` where no tracker runs: one per event loop and config."""
    stores = _shared.setdefault(asyncio.get_running_loop(), {})
    key = config.key()
    if key not in stores:
        stores[key] = Store(config, ttl=ttl)
    return stores[key]


async def aclose_shared() -> None:
    """Close the Redis connections :func:`amembers` opened on this event loop."""
    for store in _shared.pop(asyncio.get_running_loop(), {}).values():
        await store.aclose()


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class Store:
    """Presence's keys in Redis: one :class:`_Shard` per host, each room on its group's
    shard (see the module docstring)."""

    def __init__(self, config: RedisConfig, *, ttl: float) -> None:
        self.config = config
        self.prefix = f"{config.prefix}:presence"
        self.shards = [_Shard(host, self.prefix, ttl=ttl) for host in config.hosts]

    def shard_of(self, room: str) -> _Shard:
        """The shard holding ``room``'s keys (the one its group's messages go through)."""
        return self.shards[self.config.shard(fanout.room_group(room))]

    def _by_shard(self, items: Iterable[T], room: Callable[[T], str]) -> dict[_Shard, list[T]]:
        grouped: dict[_Shard, list[T]] = {}
        for item in items:
            grouped.setdefault(self.shard_of(room(item)), []).append(item)
        return grouped

    async def _each(self, calls: Mapping[_Shard, Awaitable[T]], what: str) -> dict[_Shard, T]:
        """Await one call per shard at once; the results of those that answered (the
        others are logged, once per outage, by their shard)."""
        shards = list(calls)
        results = await asyncio.gather(
            *(shard.guard(calls[shard], what) for shard in shards), return_exceptions=True
        )
        out: dict[_Shard, T] = {}
        for shard, result in zip(shards, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if not isinstance(result, BaseException):
                out[shard] = result
        return out

    async def aclose(self) -> None:
        for shard in self.shards:
            await shard.aclose()

    async def beat(self, node: str, rooms: list[str]) -> bool:
        """Renew the node's heartbeat (on every shard) and its rooms' keys; whether the
        heartbeat was there on every shard that answered.

        Raises:
            ShardsDownError: no shard answered.
        """
        grouped = self._by_shard(rooms, lambda room: room)
        calls = {shard: shard.beat(node, grouped.get(shard, [])) for shard in self.shards}
        found = await self._each(calls, "the heartbeat")
        if not found:
            raise ShardsDownError("no Redis shard answered the presence heartbeat")
        return all(found.values())

    async def alive(self, nodes: Iterable[str]) -> set[str]:
        """Those of ``nodes`` whose heartbeat has not expired on some shard that answers.

        Raises:
            ShardsDownError: no shard answered.
        """
        nodes = list(nodes)
        calls = {shard: shard.alive(nodes) for shard in self.shards}
        found = await self._each(calls, "a heartbeat check")
        if not found:
            raise ShardsDownError("no Redis shard answered the presence heartbeat check")
        return set().union(*found.values())

    async def write(self, node: str, writes: list[Write]) -> list[Write]:
        """Mirror the local tallies of ``writes`` (one MULTI per shard); the writes whose
        shard did not answer (to be tried again)."""
        grouped = self._by_shard(writes, lambda write: write.room.name)
        calls = {shard: shard.write(node, grouped[shard]) for shard in grouped}
        done = await self._each(calls, "writing presence")
        return [write for shard, chunk in grouped.items() if shard not in done for write in chunk]

    async def read(self, room: str) -> dict[str, tuple[int, dict[int, tuple[int, str]], int]]:
        """Each live node's entries in ``room``: node -> (version, users, guests).

        Raises:
            Exception: the room's shard did not answer (logged once per outage).
        """
        shard = self.shard_of(room)
        return await shard.guard(shard.read(room), "reading presence")

    async def versions(self, rooms: list[str]) -> list[dict[str, int] | None]:
        """Each room's live node versions (node -> version), None where its shard did
        not answer."""
        grouped = self._by_shard(rooms, lambda room: room)
        calls = {shard: shard.versions(grouped[shard]) for shard in grouped}
        found = await self._each(calls, "a version check")
        by_room: dict[str, dict[str, int] | None] = {}
        for shard, chunk in grouped.items():
            answered = found.get(shard)
            for n, room in enumerate(chunk):
                by_room[room] = None if answered is None else answered[n]
        return [by_room[room] for room in rooms]

    async def forget(self, node: str, rooms: list[tuple[str, dict[int, tuple[int, str]]]]) -> None:
        """Delete ``node``'s entries in ``rooms`` ((room, its users there)) and its
        heartbeat, on the shards that answer (expiry removes the rest)."""
        await self.forget_nodes([(node, room, users) for room, users in rooms])
        calls = {shard: shard.delete_alive(node) for shard in self.shards}
        await self._each(calls, "removing a heartbeat")

    async def forget_nodes(
        self, entries: list[tuple[str, str, dict[int, tuple[int, str]]]]
    ) -> None:
        """Delete each (node, room, users)'s fields, on the shards that answer."""
        grouped = self._by_shard(entries, lambda entry: entry[1])
        calls = {shard: shard.forget_nodes(grouped[shard]) for shard in grouped}
        await self._each(calls, "removing entries")


class _Shard:
    """Presence's keys on one Redis host, through one connection pool (redis-py's
    asyncio client)."""

    def __init__(self, host: dict[str, Any], prefix: str, *, ttl: float) -> None:
        from channels_redis.utils import create_pool  # optional dependency, see above
        from redis.asyncio import Redis

        self.prefix = prefix
        self.ttl_ms = max(1, int(ttl * 1000))
        self.alive_ms = max(1, int(ttl * 2000 / 3))
        self._client: Redis = Redis(connection_pool=create_pool(host))
        self.where = _where(host)
        self._failing = False

    async def guard(self, call: Awaitable[T], what: str) -> T:
        """``await call``, logging this shard's first failure and its recovery."""
        try:
            result = await call
        except Exception:
            if not self._failing:
                self._failing = True
                logger.warning(
                    "Presence: Redis at %s failed %s; retrying", self.where, what, exc_info=True
                )
            raise
        if self._failing:
            self._failing = False
            logger.warning("Presence: Redis at %s answers again", self.where)
        return result

    def _keys(self, room: str) -> tuple[str, str]:
        group = fanout.room_group(room)
        return f"{self.prefix}:r:{group}", f"{self.prefix}:v:{group}"

    def _alive_key(self, node: str) -> str:
        return f"{self.prefix}:alive:{node}"

    async def aclose(self) -> None:
        await self._client.aclose(close_connection_pool=True)

    async def delete_alive(self, node: str) -> None:
        async with asyncio.timeout(REDIS_TIMEOUT_SECS):
            await self._client.delete(self._alive_key(node))

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


def _where(host: dict[str, Any]) -> str:
    """A host spec for logs, without its password."""
    if "address" in host:
        return re.sub(r"(//[^:@/]*):[^@/]*@", r"\1:***@", str(host["address"]))
    sentinels = ",".join(f"{h}:{p}" for h, p in host.get("sentinels", ()))
    return f"sentinel {host.get('master_name')} at {sentinels}"
