"""Delivery: group names, publishing to a room's group, and the sync-to-async bridge.

Layer: fan-out. Imports Channels' layer API, ``conf`` and ``hub``; never models or
services. Publishing is one ``group_send`` per message: the group holds one channel per
*process* (the hub's), not one per member.

Sync code (a view, a management command, a worker thread) publishes through
:func:`run_sync`, which never makes an event loop per call: inside the server process it
hands the coroutine to the server's loop (the in-memory layer lives there and is not
thread-safe); elsewhere to one long-lived loop in a daemon thread, so the Redis layer
keeps one connection pool for the life of the process. ``async_to_sync`` would start a
new loop, and with it a new Redis pool, for every call.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import logging
import re
import threading
import weakref
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from . import metrics
from .conf import roomcast_settings
from .exceptions import PushError, SynchronousCallError
from .hub import CONTROL_GROUP, running_hub
from .protocol.room_names import USER_STREAM_PREFIX as USER_STREAM_PREFIX
from .protocol.room_names import is_user_room as is_user_room

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Group names of plain room names are the seed's ``"chat_%s" % room_name``, so code
#: written the seed's way reaches the same group.
GROUP_PREFIX = "chat_"
# Channels' group names: ASCII letters, digits, "-", "_", "." and under 100 characters.
# A plain name never starts with ".", so "chat_." + hash cannot collide with one.
_PLAIN_ROOM = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,89}")


def room_group(room: str) -> str:
    """The channel-layer group of ``room``: always a valid Channels group name.

    ``lobby`` maps to ``chat_lobby`` like the seed; names Channels cannot carry
    (``技术交流``, ``café``, spaces, over 90 characters) map to ``chat_.`` and a hash.
    """
    if _PLAIN_ROOM.fullmatch(room):
        return GROUP_PREFIX + room
    return GROUP_PREFIX + "." + hashlib.blake2b(room.encode("utf-8"), digest_size=16).hexdigest()


def user_room(user_id: int) -> str:
    """The stream (a room row, a group) of user ``user_id``'s own channel."""
    return f"{USER_STREAM_PREFIX}{int(user_id)}"


def get_layer() -> Any:
    """The channel layer roomcast publishes on (``ROOMCAST['CHANNEL_LAYER']``)."""
    alias = roomcast_settings.CHANNEL_LAYER
    layer = get_channel_layer(alias)
    if layer is None:
        raise ImproperlyConfigured(
            f"roomcast needs a channel layer: add {alias!r} to CHANNEL_LAYERS "
            "(channels.layers.InMemoryChannelLayer for one process, "
            "channels_redis.pubsub.RedisPubSubChannelLayer for many)."
        )
    return layer


async def publish(room: str, message: dict[str, Any]) -> None:
    """Send one layer message to every process with members in ``room``."""
    layer = get_layer()
    if isinstance(layer, InMemoryChannelLayer) and (hub := running_hub()) is not None:
        # One process: the layer would only hand the message back to this loop's hub,
        # after a deep copy and a scan of every channel's queue for expired messages
        # (InMemoryChannelLayer._clean_expired, O(channels) per send: 7% of the server's
        # time at 50 rooms, profiled, and growing with the number of rooms).
        hub.dispatch(room, message)
        return
    await layer.group_send(room_group(room), message)


async def publish_control(message: dict[str, Any]) -> None:
    """Send a control message to the hub of every process (:data:`hub.CONTROL_GROUP`).

    Through the layer even when it is the in-memory one: every hub of the process is in
    the group, and control messages (revocations) are rare, so the in-memory layer's
    per-send costs that :func:`publish` avoids do not matter here.
    """
    await get_layer().group_send(CONTROL_GROUP, message)


async def publish_stored(room: str, message: dict[str, Any]) -> None:
    """Publish a stored message; never raises.

    The message is already in the database, so a failure here must not read as "not
    sent" (the sender would send it again). The room is handed to the republisher,
    which retries in the background until the layer takes it; hubs that see it fill
    whatever they missed before it from the database.
    """
    try:
        await publish(room, message)
    except Exception:
        metrics.PUBLISH_ERRORS.inc()
        logger.warning(
            "Publishing seq %s to room %r failed; retrying in the background",
            message.get("seq"),
            room,
            exc_info=True,
        )
        _republisher().add(room, message)


def publish_on_commit(room: str, message: dict[str, Any], *, using: str | None = None) -> None:
    """Publish a stored message after the current transaction commits (at once outside one).

    Inside ``transaction.atomic()`` nothing is published if it rolls back. Never raises:
    see :func:`publish_stored`.
    """
    if transaction.get_connection(using).in_atomic_block:
        transaction.on_commit(partial(_publish_from_sync, room, message), using=using)
    else:
        _publish_from_sync(room, message)


def _publish_from_sync(room: str, message: dict[str, Any]) -> None:
    try:
        run_sync(publish_stored, room, message)
    except PushError:
        logger.warning("Publishing seq %s to room %r timed out", message.get("seq"), room)


#: Rooms whose latest stored message waits to be republished, per event loop. Only the
#: latest seq of a room is kept: a hub that receives it fills the rest from the database.
#: Past this many rooms the oldest entry is dropped (logged): that room's members get
#: its messages when its next message is published.
MAX_REPUBLISH_ROOMS = 10_000


class _Republisher:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: dict[str, dict[str, Any]] = {}
        self.task: asyncio.Task[None] | None = None

    def add(self, room: str, message: dict[str, Any]) -> None:
        current = self.pending.pop(room, None)
        if current is not None and current.get("seq", 0) > message.get("seq", 0):
            message = current
        self.pending[room] = message
        if len(self.pending) > MAX_REPUBLISH_ROOMS:
            dropped = next(iter(self.pending))
            del self.pending[dropped]
            logger.error("Republish queue full; room %r waits for its next message", dropped)
        if self.task is None or self.task.done():
            self.task = self.loop.create_task(self._run())

    async def _run(self) -> None:
        delay = 0.2
        while self.pending:
            await asyncio.sleep(delay)
            for room, message in list(self.pending.items()):
                try:
                    await publish(room, message)
                except Exception:
                    delay = min(delay * 2, 5.0)
                    break
                if self.pending.get(room) is message:
                    del self.pending[room]
                    logger.info("Republished seq %s to room %r", message.get("seq"), room)


_republishers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Republisher] = (
    weakref.WeakKeyDictionary()
)


def _republisher() -> _Republisher:
    loop = asyncio.get_running_loop()
    if loop not in _republishers:
        _republishers[loop] = _Republisher(loop)
    return _republishers[loop]


# -- the sync bridge ------------------------------------------------------------------------

_server_loop: asyncio.AbstractEventLoop | None = None
_push_loop: asyncio.AbstractEventLoop | None = None
_push_lock = threading.Lock()


def set_server_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Record the loop serving WebSockets in this process (the hub's loop)."""
    global _server_loop
    _server_loop = loop


def run_sync(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``func(*args)`` to completion from sync code, on a loop that lives on.

    Raises:
        SynchronousCallError: called from a thread that runs an event loop.
        PushError: the call did not finish within ``PUBLISH_TIMEOUT_SECS``.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise SynchronousCallError(
            "This roomcast function is synchronous and was called from async code; "
            "await its async twin (the same name with an 'a' in front) instead."
        )
    loop = _server_loop
    if loop is None or loop.is_closed() or not loop.is_running():
        loop = _get_push_loop()
    future = asyncio.run_coroutine_threadsafe(_as_coroutine(func, *args), loop)
    timeout = roomcast_settings.PUBLISH_TIMEOUT_SECS
    try:
        return future.result(timeout)
    except TimeoutError:
        future.cancel()
        raise PushError(f"The channel layer did not answer within {timeout} s.") from None


async def _as_coroutine(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    return await func(*args)


def _get_push_loop() -> asyncio.AbstractEventLoop:
    global _push_loop
    with _push_lock:
        if _push_loop is None or _push_loop.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="roomcast-push", daemon=True)
            thread.start()
            _push_loop = loop
            atexit.register(_stop_push_loop, loop, thread)
        return _push_loop


def _stop_push_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    # Let the layer close its connections on this loop (channels_redis wraps loop.close).
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    if not thread.is_alive():
        loop.close()
