"""Presence: who is in each room, on every process, and the join/leave frames.

Layer: fan-out (delivery), beside the hub. Imports Channels' layer API, redis-py's asyncio
client (only with a channels_redis layer: it is an optional dependency), ``conf``,
``fanout``, ``hub`` and ``protocol``; never models, services or consumers.

Ownership. Each process (each hub) has one :class:`Tracker`, the only writer of that
process's tallies: per room, user id -> (connections, name) and the number of guests. The
hub calls :meth:`Tracker.added` / :meth:`Tracker.removed` for each subscription (O(1), no
I/O). A room's view is the sum of every node's tally ("node": one tracker, a random id
made at start, so a restarted process is a new node, as Phoenix.Tracker names a replica by
name *and* a start-time version, ``{name, vsn}``).

With the in-memory layer there is one node: the view is the local tally. With Redis each
node mirrors its tallies (Centrifugo keeps presence in a Redis hash per channel, entries
expiring unless refreshed; Phoenix replicates per-node state and declares a node down
when its heartbeats stop; roomcast takes the hash from the first and the node heartbeat
from the second), under ``<layer prefix>:presence:``:

``r:<group>``  hash, one field per (node, user): ``<node>:<user id>`` -> ``<count>:<name>``,
               and ``<node>:-`` -> guests; ``v:<group>`` hash, ``<node>`` -> the version
               of that node's entries in the room. Both written in one MULTI with each
               change and kept by EXPIRE ``PRESENCE_TTL_SECS`` (refreshed by every node
               with entries in the room every TTL/3), so a room nobody serves vanishes.
``alive:<node>`` a key that expires 2/3 TTL after the node's last heartbeat (every TTL/3).
               Redis's own clock decides, so process clocks may disagree.

A node's entries count only while its ``alive`` key exists: readers (other nodes,
:func:`amembers` in a shell) skip the rest, and nodes that see a dead node's entries in
their rooms drop them (``leave`` frames) and delete them. Every TTL/6 each node checks the
nodes it has entries of; one that stopped beating is dropped at most 2/3 TTL + TTL/6 =
5/6 TTL after its last beat (30 s setting: 25 s), plus one batch for the frames.

Changes travel as layer messages on the room's group (ephemeral, no seq):
``{"type": "presence.diff", "node", "v", "users": [[id, count, name], ...], "anonymous",
"full", "gone"}`` with the node's absolute counts for the users that changed (so a
duplicate does no harm), after the Redis write. ``v`` counts per (node, room); a receiver
that sees a gap, or whose versions lag behind ``v:<group>`` for a whole heartbeat (a diff
lost on the layer, as the hub's position check finds lost messages), reloads the room from
Redis, the way a Phoenix replica asks for a transfer when clocks show it is behind. A
process that subscribes a room loads it from Redis the same way. A node shutting down
deletes its entries and sends ``presence.down`` on the control group: leaves at once.

Bounds (docs/design.md, "Presence"):

* Frames: changes are gathered per room for ``PRESENCE_BATCH_SECS``; a user who comes and
  goes within a batch sends nothing. Per batch a live member gets at most
  :data:`MAX_DIFFS_PER_BATCH` ``join``/``leave`` frames (more becomes one ``presence``
  frame) and one ``presence_count``; a room above ``PRESENCE_LIVE_MAX`` users gets only
  ``presence_count``, at most one per batch.
* Snapshots list at most ``PRESENCE_LIST_MAX`` users (sorted by name) with ``count``,
  built at most once per batch per room (cached), showing the state as of the last
  batch, so the frames that follow one are exactly its changes.
* Memory per process: one entry per (room with local members, user present anywhere);
  rooms without local members cost nothing.
* Redis: per batch and room at most one MULTI with the changed fields; per heartbeat one
  EXPIRE pair per local room and one small version read per local room, pipelined.
* Redis down: sockets and local presence go on; writes wait (newest state kept, at most
  one pending entry per local user and room) and are retried with backoff up to
  :data:`tracker.MAX_RETRY_SECS`; failures are logged once per outage.
* Several Redis shards: a room's keys live on its group's shard (the layer's own hash),
  heartbeats on every shard; one shard down holds up only its own rooms (``_store``).
"""

from __future__ import annotations

import logging
from typing import Any

from roomcast import fanout
from roomcast.conf import roomcast_settings
from roomcast.exceptions import RoomcastError
from roomcast.hub import running_hub

from ._state import view
from ._store import aclose_shared, redis_config, shared_store
from .tracker import MAX_DIFFS_PER_BATCH, Tracker, trackers

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_DIFFS_PER_BATCH",
    "PresenceUnavailableError",
    "Tracker",
    "aclose_shared",
    "amembers",
    "members",
    "redis_config",
]


class PresenceUnavailableError(RoomcastError):
    """Presence could not be read: Redis did not answer and this process has no view of the
    room."""


async def amembers(room: str) -> dict[str, Any]:
    """Who is in ``room``, on every process: ``{"room", "users": [{"user", "connections"}],
    "count", "anonymous", "truncated"}`` (at most ``PRESENCE_LIST_MAX`` users, by name).

    With Redis this reads Redis, so it works in any process (a shell, a worker); with the
    in-memory layer it is this process's hub's view (empty where no hub runs).

    Raises:
        PresenceUnavailableError: Redis did not answer and this process has no view of
            the room.
    """
    hub = running_hub()
    tracker = trackers.get(hub) if hub is not None else None
    list_max = int(roomcast_settings.PRESENCE_LIST_MAX)
    if tracker is not None and tracker.store is None:
        return tracker.view(room)
    config = redis_config(fanout.get_layer())
    if config is None:
        return view(room, (), 0, list_max)
    if tracker is not None and tracker.store is not None:
        store = tracker.store
    else:
        store = shared_store(config, ttl=float(roomcast_settings.PRESENCE_TTL_SECS))
    try:
        loaded = await store.read(room)
    except Exception as exc:
        if tracker is not None and tracker.tracks(room):
            logger.warning("Presence: Redis failed; answering from this process's view")
            return tracker.view(room)
        raise PresenceUnavailableError(f"Redis did not answer: {exc}") from exc
    totals: dict[int, list[Any]] = {}
    anonymous = 0
    for _, users, guests in loaded.values():
        anonymous += guests
        for user_id, (count, name) in users.items():
            entry = totals.setdefault(user_id, [0, name])
            entry[0] += count
    return view(room, ((e[1], e[0]) for e in totals.values()), anonymous, list_max)


def members(room: str) -> dict[str, Any]:
    """:func:`amembers` from sync code (a view, a shell, a management command)."""
    return fanout.run_sync(amembers, room)
