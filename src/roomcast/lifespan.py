"""ASGI lifespan handler: start the hub with the server, stop it cleanly on shutdown.

Starting the hub at start-up registers the server's event loop, so a sync push from a
view served by this process goes to that loop from the first request on.

At shutdown the server has closed its sockets already (``roomcast serve`` drains them in
batches first, ``roomcast.server.drain``); what is left is to take this process's users
out of presence and stop the hub, within :data:`SHUTDOWN_SECS`, so that a stop never
hangs on an unreachable Redis.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from . import services, stream

logger = logging.getLogger(__name__)

#: Longest the application's shutdown may take, in seconds: presence's last write and the
#: hub's group discards are one round trip each to the channel layer when it answers; a
#: layer that does not answer would otherwise hold the process past any stop timeout
#: (its presence entries expire on their own after PRESENCE_TTL_SECS).
SHUTDOWN_SECS = 5.0


class Lifespan:
    """ASGI app for ``lifespan`` scopes; put it under ``"lifespan"`` in ProtocolTypeRouter."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    services.hub()
                    stream.writer.start()  # writer threads connect before the first post
                except Exception as exc:
                    logger.exception("roomcast could not start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    async with asyncio.timeout(SHUTDOWN_SECS):
                        await self._stop()
                except TimeoutError:
                    logger.error(
                        "roomcast's shutdown took over %g s (the channel layer does not "
                        "answer?): stopping without it",
                        SHUTDOWN_SECS,
                    )
                await send({"type": "lifespan.shutdown.complete"})
                return

    @staticmethod
    async def _stop() -> None:
        hub = services.hub()
        if hub.presence is not None:
            await hub.presence.close()  # others see this process's users leave now
        await hub.close()
