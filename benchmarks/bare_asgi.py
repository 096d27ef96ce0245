"""The floor for scenario (c): an ASGI app that does nothing but hold a WebSocket.

Served by ``idle.py`` on uvicorn with exactly the options ``roomcast serve`` uses
(``python bare_asgi.py PORT WS``; WS ``lean`` is roomcast serve's protocol class,
``websockets-sansio`` uvicorn's own), it answers like a roomcast.v1 room (accept with the
subprotocol, one ``joined`` frame) and then only waits. Its memory per idle socket is the
server's own; roomcast's share is the difference.
"""

from __future__ import annotations

import sys
from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    subprotocol = "roomcast.v1" if "roomcast.v1" in scope.get("subprotocols", ()) else None
    await send({"type": "websocket.accept", "subprotocol": subprotocol})
    await send({"type": "websocket.send", "text": '{"type":"joined","room":"idle","seq":0}'})
    while (await receive())["type"] != "websocket.disconnect":
        pass


if __name__ == "__main__":
    import uvicorn

    from roomcast.server.lean_ws import protocol_class

    port, ws = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(
        "bare_asgi:app",
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        ws=protocol_class() if ws == "lean" else ws,
        ws_per_message_deflate=False,
        log_level="warning",
    )
