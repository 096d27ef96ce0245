"""ASGI lifespan handler: start the hub with the server, stop it cleanly on shutdown.

Starting the hub at start-up registers the server's event loop, so a sync push from a
view served by this process goes to that loop from the first request on.
"""

from __future__ import annotations

import logging
from typing import Any

from . import services, stream

logger = logging.getLogger(__name__)


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
                hub = services.hub()
                if hub.presence is not None:
                    await hub.presence.close()  # others see this process's users leave now
                await hub.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
