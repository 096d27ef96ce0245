"""Frames written straight to uvicorn's websockets-sansio transport (``roomcast.direct``).

A real uvicorn server in this process serves the room sockets (as ``roomcast serve``
does), with real ``websockets`` clients, so both the direct path and the ASGI path it
falls back to under flow control are the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import pytest
import uvicorn
import websockets

from roomcast import direct, services
from roomcast.routing import websocket_application

from .conftest import free_port

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def server():
    port = free_port()
    config = uvicorn.Config(
        websocket_application(),
        host="127.0.0.1",
        port=port,
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        lifespan="off",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn offers no event for it)
        await asyncio.sleep(0.01)
    yield f"ws://127.0.0.1:{port}/ws/chat/"
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)


async def connect(url: str):
    ws = await websockets.connect(
        url, subprotocols=["roomcast.v1"], compression=None, ping_interval=None
    )  # type: ignore[list-item]
    assert json.loads(await ws.recv())["type"] == "joined"
    return ws


async def messages(ws, count: int) -> list[dict]:
    out: list[dict] = []
    while len(out) < count:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 20))
        if frame["type"] == "message":
            out.append(frame)
    return out


async def test_a_room_gets_frames_written_directly(server):
    """Three members, twenty messages: every frame arrives whole and in order, and the
    message frames went the direct way (one serialisation per message)."""
    members = [await connect(server + "direct/") for _ in range(3)]
    before = direct.written
    for i in range(20):
        await services.apost_message("direct", f"m{i} 你好")
    for ws in members:
        frames = await messages(ws, 20)
        assert [(f["seq"], f["message"]) for f in frames] == [
            (i + 1, f"m{i} 你好") for i in range(20)
        ]
    assert direct.written - before == 60
    for ws in members:
        await ws.close()


async def test_a_member_that_stops_reading_falls_back_and_loses_nothing(server):
    """A member that does not read fills its socket: uvicorn pauses writing, frames go
    through the ASGI send and the member's buffer, then direct again; the member
    still gets every message in order, and a reading member is not held up."""
    slow = await connect(server + "flow/")
    fast = await connect(server + "flow/")
    # A small receive buffer, and no reading: the kernel's buffers fill, then uvicorn's.
    slow.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    slow.transport.pause_reading()
    before = direct.written
    text = "x" * 12_000  # 500 of them: 6 MB, more than the kernel holds for one socket
    for i in range(500):
        await services.apost_message("flow", f"{i} {text}")
    assert [f["seq"] for f in await messages(fast, 500)] == list(range(1, 501))
    slow.transport.resume_reading()
    assert [f["seq"] for f in await messages(slow, 500)] == list(range(1, 501))
    assert 500 <= direct.written - before < 1000  # the slow member's tail went by ASGI
    await slow.close()
    await fast.close()


def test_only_uvicorns_websockets_sansio_send_qualifies():
    """Any other send (another server, a wrapped send) keeps the ASGI path."""

    async def send(message: dict) -> None:
        pass

    assert direct.protocol_of(send) is None
    assert direct.protocol_of(lambda message: None) is None
