"""The drain on ``roomcast serve``'s WebSocket protocol (``server.lean_ws``), in process:
a real uvicorn server with the lean protocol and real ``websockets`` clients, stopped
as a signal would stop it (``should_exit``).

The whole story (two processes, Redis, PostgreSQL, clients moving over) is
``tests/e2e/test_drain.py``; this covers what is hard to bring about there: a socket
that never gets idle is closed at its deadline, and the stop is still bounded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import pytest
import websockets

from roomcast import services
from roomcast.server import drain

from .conftest import joined_socket, lean_server

pytestmark = pytest.mark.django_db(transaction=True)

#: Short bounds for these tests (seconds).
SETTLE_SECS = 0.3
CLOSE_TIMEOUT_SECS = 0.3


@pytest.fixture
async def server(settings, monkeypatch):
    settings.ROOMCAST = {
        **settings.ROOMCAST,
        "DRAIN_SECS": 0,
        "CLOSE_TIMEOUT_SECS": CLOSE_TIMEOUT_SECS,
        # Room for the whole backlog (the default 1 MiB would close the reader with 1013).
        "OUTBOUND_BUFFER_BYTES": 16 * 2**20,
    }
    monkeypatch.setattr(drain, "SETTLE_SECS", SETTLE_SECS)
    async with lean_server(
        timeout_graceful_shutdown=drain.graceful_shutdown_secs(0, CLOSE_TIMEOUT_SECS)
    ) as server:
        yield server


async def connect(url: str):
    return await joined_socket(url)


async def test_a_socket_that_reads_nothing_is_closed_at_its_deadline(server, caplog):
    """A client that stopped reading, with frames waiting for it, never lets its socket
    be idle: it is closed (1012 queued behind its backlog, then reset) SETTLE_SECS after
    its batch, the reading one beside it closes with 1012 at once, the warning counts
    the forced one, and the server stops."""
    caplog.set_level(logging.INFO, logger="roomcast.server.drain")
    stuck = await connect(server.url + "stuck/")
    reader = await connect(server.url + "stuck/")
    stuck.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    stuck.transport.pause_reading()
    text = "x" * 12_000  # 500 of them: 6 MB, more than the kernel holds for one socket
    for i in range(500):
        await services.apost_message("stuck", f"{i} {text}")
    seen = 0
    while seen < 500:  # the reader has them all; the stuck one's are waiting
        frame = json.loads(await asyncio.wait_for(reader.recv(), 20))
        seen += frame["type"] == "message"
    server.should_exit = True
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(reader.recv(), 10)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1012, drain.REASON)
    await asyncio.wait_for(server.task, 10)
    assert "Draining 2 WebSockets over 0 s in 1 batch" in caplog.text
    assert f"1 closed after SETTLE_SECS ({SETTLE_SECS:g} s)" in caplog.text, caplog.text
    stuck.transport.abort()


async def test_a_drain_close_comes_after_the_acks_of_the_last_posts(server):
    """The last posts' work ends (hold_drain(False)) in the pass that sends their ack,
    and the drain's idle check was queued before: the ack, which waits for the end of
    that pass, is written before the 1012."""
    from roomcast.hub import running_hub

    ws = await connect(server.url + "lastack/")
    hub = running_hub()
    assert hub is not None
    (member,) = hub.members("lastack")
    protocol = member.connection._direct
    protocol.hold_drain(True)  # a post being stored
    protocol._drain_state = "registered"  # as uvicorn's shutdown() would
    protocol.drain_close(asyncio.get_running_loop().time() + 5)  # its idle check queued
    member.send_frame(json.dumps({"type": "ack", "client_id": "last", "seq": 1}))
    protocol.hold_drain(False)  # the post is answered, in this same pass
    assert json.loads(await asyncio.wait_for(ws.recv(), 10))["client_id"] == "last"
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
