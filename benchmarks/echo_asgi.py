"""An echo app served the way ``roomcast serve`` serves its sockets, for the Autobahn run.

``python echo_asgi.py PORT WS [--counts PATH] [--ws-max-size BYTES]``: uvicorn on
127.0.0.1:PORT with exactly the options ``roomcast serve`` passes (uvloop, httptools,
``ws_max_size``, permessage-deflate off, lifespan on; see ``roomcast.cli._serve``). WS is
``lean`` (roomcast's protocol class, ``server.lean_ws``) or ``websockets-sansio``
(uvicorn's own).

On ``lean`` the echo writes each text reply as roomcast's ``hub.Member`` does: straight to
the transport through ``direct.try_write`` when ``direct.protocol_of(send)`` allows, else
through the ASGI send. Binary replies always take the ASGI send (roomcast never sends
binary). On ``websockets-sansio`` every reply takes the ASGI send: stock uvicorn. At
shutdown it writes to PATH (JSON) how many text replies went each way, so a run can show
that the direct path was the one tested.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from roomcast import direct

#: Set by ``__main__``: write text replies through roomcast's direct path.
USE_DIRECT = False
#: Where to write the reply counts at shutdown (``--counts``), or None.
COUNTS_PATH: str | None = None
counts = {"direct": 0, "asgi_text": 0, "asgi_binary": 0, "connections": 0}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Accept every WebSocket and send back each message as it came (text or binary)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                if COUNTS_PATH:  # at shutdown: a blocking write stalls no one
                    Path(COUNTS_PATH).write_text(json.dumps(counts))  # noqa: ASYNC240
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "websocket":
        return
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    counts["connections"] += 1
    # As hub.Member: the protocol is looked up once per socket, after the accept.
    protocol = direct.protocol_of(send) if USE_DIRECT else None
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is not None:
            if protocol is not None and direct.try_write(protocol, text):
                counts["direct"] += 1
                continue
            counts["asgi_text"] += 1
            await send({"type": "websocket.send", "text": text})
        else:
            counts["asgi_binary"] += 1
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


if __name__ == "__main__":
    import uvicorn

    from roomcast.cli.serve import UVICORN_WS_MAX_BYTES  # imports no uvicorn protocol

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("ws", choices=("lean", "websockets-sansio"))
    parser.add_argument("--counts", help="write the reply counts here (JSON) at shutdown")
    parser.add_argument(
        "--ws-max-size",
        type=int,
        default=UVICORN_WS_MAX_BYTES,
        help=f"uvicorn's ws_max_size (default {UVICORN_WS_MAX_BYTES}: roomcast serve's)",
    )
    args = parser.parse_args()
    port, ws = args.port, args.ws
    COUNTS_PATH = args.counts
    USE_DIRECT = ws == "lean"
    if USE_DIRECT:  # roomcast's class, imported only here: stock uvicorn stays stock
        from roomcast.server.lean_ws import protocol_class

        ws = protocol_class()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        ws=ws,
        ws_max_size=args.ws_max_size,
        ws_per_message_deflate=False,
        lifespan="on",
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
