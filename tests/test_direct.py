"""``roomcast serve``'s socket layer: uvicorn's websockets-sansio protocol as
``server.lean_ws`` slims it, and frames written straight to its transport (``direct``).

A real uvicorn server in this process serves the room sockets with roomcast serve's
protocol class, to real ``websockets`` clients, so both the direct path and the ASGI
path it falls back to under flow control are the real ones.
"""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
import websockets

from roomcast import direct, services
from roomcast.server import lean_ws

from .conftest import joined_socket, lean_server

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def server():
    async with lean_server() as server:
        yield server


async def connect(url: str):
    return await joined_socket(url)


@pytest.fixture
def write_calls(monkeypatch) -> list[int]:
    """The frames of each direct write call, in order (a one-frame write counts 1)."""
    calls: list[int] = []
    write, write_many = direct.try_write, direct.try_write_many

    def counted_one(protocol, text, cache=None):
        written = write(protocol, text, cache)
        calls.append(int(written))
        return written

    def counted_many(protocol, texts, cache=None):
        written = write_many(protocol, texts, cache)
        calls.append(written)
        return written

    monkeypatch.setattr(direct, "try_write", counted_one)
    monkeypatch.setattr(direct, "try_write_many", counted_many)
    return calls


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
    members = [await connect(server.url + "direct/") for _ in range(3)]
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


async def test_a_member_that_stops_reading_falls_back_and_loses_nothing(server, settings):
    """A member that does not read fills its socket: uvicorn pauses writing, frames go
    through the ASGI send and the member's buffer, then direct again; the member
    still gets every message in order, and a reading member is not held up."""
    # Room for the whole backlog in the member's buffer (the default byte bound, 1 MiB,
    # would close it with 1013: tests/e2e/test_limits.py).
    settings.ROOMCAST = {**settings.ROOMCAST, "OUTBOUND_BUFFER_BYTES": 16 * 2**20}
    slow = await connect(server.url + "flow/")
    fast = await connect(server.url + "flow/")
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


async def test_a_catch_up_is_written_in_one_call(server, write_calls):
    """A join's 50 catch-up frames go to the socket joined into one write call, whole and
    in order."""
    for i in range(50):
        await services.apost_message("catchup", f"m{i} 你好")
    calls = write_calls
    ws = await websockets.connect(
        server.url + "catchup/", subprotocols=["roomcast.v1"], compression=None
    )  # type: ignore[list-item]
    frames = [json.loads(await asyncio.wait_for(ws.recv(), 20)) for _ in range(51)]
    assert frames[0]["type"] == "joined"
    assert [(f["seq"], f["message"]) for f in frames[1:]] == [
        (i + 1, f"m{i} 你好") for i in range(50)
    ]
    assert calls == [51]  # joined and the 50 messages, in one call
    await ws.close()


async def test_frames_given_in_one_pass_of_the_loop_go_in_one_write(
    server, monkeypatch, write_calls
):
    """Frames handed to a socket in one pass of the loop (here ten messages of a room
    published one after another, as a stored batch is) wait for the end of the pass and
    go in one write call per socket, whole and in order; each message serialised once
    for all its members."""
    from roomcast.hub import running_hub

    members = [await connect(server.url + "pass/") for _ in range(3)]
    calls = write_calls
    calls.clear()  # the joined frames'
    serialised: list[str] = []
    frame_class = direct.Frame

    class CountedFrame(frame_class):  # type: ignore[misc,valid-type]
        def serialize(self, *args, **kwargs):
            serialised.append(self.data.decode())
            return super().serialize(*args, **kwargs)

    monkeypatch.setattr(direct, "Frame", CountedFrame)
    hub = running_hub()
    assert hub is not None
    for i in range(10):  # one pass: no await between them
        frame = json.dumps({"type": "message", "room": "pass", "seq": i + 1, "message": f"m{i}"})
        for member in hub.members("pass"):
            member.deliver(i + 1, frame)
    for ws in members:
        assert [f["message"] for f in await messages(ws, 10)] == [f"m{i}" for i in range(10)]
    assert calls == [10, 10, 10]  # one call per socket, all ten frames in it
    assert len(serialised) == 10  # once per message, not per member
    for ws in members:
        await ws.close()


async def test_a_pass_gives_a_socket_at_most_coalesce_max_frames_to_wait(server, write_calls):
    """A hundred frames for one socket in one pass: the 64th writes the 64 waiting at
    once, the other 36 go at the end of the pass; all arrive, in order."""
    from roomcast import connection
    from roomcast.hub import running_hub

    ws = await connect(server.url + "many/")
    calls = write_calls
    calls.clear()  # the joined frame's
    hub = running_hub()
    assert hub is not None
    (member,) = hub.members("many")
    for i in range(100):
        member.deliver(i + 1, json.dumps({"type": "message", "seq": i + 1, "message": f"m{i}"}))
    assert calls == [connection.COALESCE_MAX_FRAMES]  # written in the pass, at the bound
    assert [f["seq"] for f in await messages(ws, 100)] == list(range(1, 101))
    assert calls == [64, 36]
    await ws.close()


async def test_frames_waiting_for_the_pass_do_not_count_as_a_slow_client(server, settings):
    """A socket with room for 5 frames gets 20 in one pass: they only wait for the end of
    the pass, the socket takes them, so it is not closed as too slow (1013)."""
    from roomcast.hub import running_hub

    settings.ROOMCAST = {**settings.ROOMCAST, "OUTBOUND_BUFFER_FRAMES": 5}
    ws = await connect(server.url + "small/")
    hub = running_hub()
    assert hub is not None
    (member,) = hub.members("small")
    assert member.connection.max_frames == 5
    for i in range(20):
        member.deliver(i + 1, json.dumps({"type": "message", "seq": i + 1, "message": f"m{i}"}))
    assert [f["seq"] for f in await messages(ws, 20)] == list(range(1, 21))
    await ws.send(json.dumps({"type": "ping"}))
    assert json.loads(await asyncio.wait_for(ws.recv(), 20))["type"] == "pong"
    await ws.close()


async def test_a_frame_waiting_for_the_pass_is_written_before_a_close(server):
    """A frame queued in the same pass as the socket's close (an error, then 4403) is
    written before the close frame, as it was when frames were written at once."""
    from roomcast.hub import running_hub

    ws = await connect(server.url + "lastword/")
    hub = running_hub()
    assert hub is not None
    (member,) = hub.members("lastword")
    member.send_frame(json.dumps({"type": "error", "code": "last", "detail": "last word"}))
    member.connection.close(4403, "bye")
    assert json.loads(await asyncio.wait_for(ws.recv(), 20))["code"] == "last"
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 20)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


class _Protocol:
    """What try_write_many reads of uvicorn's protocol: a stand-in, so that each state
    (closing, paused) can be set exactly."""

    def __init__(self) -> None:
        from websockets.protocol import State

        self.disconnected = False
        self.writable = asyncio.Event()
        self.writable.set()
        self.conn = type("Conn", (), {"state": State.OPEN})()
        self.transport = _Transport()


def _frames_of(data: bytes) -> list[str]:
    """Parse unmasked text frames (payloads under 64 KiB) back to their texts."""
    texts = []
    while data:
        assert data[0] == 0x81
        length, start = data[1], 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        texts.append(data[start : start + length].decode())
        data = data[start + length :]
    return texts


async def test_write_many_joins_up_to_its_byte_bound_and_no_further():
    protocol = _Protocol()
    texts = [f"{i:04} " + "y" * 995 for i in range(100)]  # 1,000 bytes each
    written = direct.try_write_many(protocol, texts)
    # Frames of 1,004 bytes: the one that reaches 64 KiB is the last of the call.
    assert written == -(-direct.COALESCE_MAX_BYTES // 1004)
    assert len(protocol.transport.writes) == 1
    assert _frames_of(protocol.transport.writes[0]) == texts[:written]


async def test_write_many_writes_nothing_to_a_closing_paused_or_gone_socket():
    from websockets.protocol import State

    for change in ("closing", "paused", "gone"):
        protocol = _Protocol()
        if change == "closing":
            protocol.conn.state = State.CLOSING
        elif change == "paused":
            protocol.writable.clear()
        else:
            protocol.disconnected = True
        assert direct.try_write_many(protocol, ["a", "b"]) == 0
        assert protocol.transport.writes == []


def test_only_uvicorns_websockets_sansio_send_qualifies():
    """Any other send (another server, a wrapped send) keeps the ASGI path."""

    async def send(message: dict) -> None:
        pass

    assert direct.protocol_of(send) is None
    assert direct.protocol_of(lambda message: None) is None


async def test_sockets_are_served_by_the_lean_protocol(server):
    """roomcast serve's class is in use, holds no handshake leftovers once open, and its
    queue and event are the lazy ones; a socket closed by the client leaves nothing."""
    ws = await connect(server.url + "lean/")
    (protocol,) = server.server_state.connections
    assert type(protocol) is lean_ws.LeanWebSocketsSansIOProtocol
    assert protocol.request is None and protocol.response is None
    assert isinstance(protocol.queue, lean_ws._Queue)
    assert isinstance(protocol.writable, lean_ws._Event)
    assert direct.protocol_of(protocol.send) is protocol
    await ws.close()
    for _ in range(100):
        if not server.server_state.connections:
            break
        await asyncio.sleep(0.02)
    assert not server.server_state.connections


async def test_lean_queue_hands_an_item_on_when_its_woken_getter_is_cancelled():
    """As asyncio.Queue: a getter woken for an item but cancelled before it ran passes
    the item to the next getter; items come out in order; get_nowait on empty raises."""
    queue = lean_ws._Queue()
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("a")  # wakes first
    first.cancel()
    assert await asyncio.wait_for(second, 1) == "a"
    assert first.cancelled()
    for item in "bcd":
        queue.put_nowait(item)
    assert queue.qsize() == 3 and not queue.empty()
    assert [await queue.get() for _ in range(3)] == ["b", "c", "d"]
    assert queue.empty() and queue._items is None and queue._getters is None
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()


async def test_lean_event_wakes_every_waiter_and_forgets_them():
    event = lean_ws._Event()
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not event.is_set() and len(event._waiters or ()) == 3
    event.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert event._waiters is None
    event.clear()
    cancelled = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert event._waiters is None
    event.set()
    assert await asyncio.wait_for(event.wait(), 1) is True


async def test_frames_queued_as_a_writer_task_ends_are_written(server):
    """Frames handed to a socket after its writer task emptied the buffer but before
    the task's done callback ran (a pass later) were left to the finished task: the
    callback writes them."""
    from roomcast.hub import running_hub

    ws = await connect(server.url + "handover/")
    hub = running_hub()
    assert hub is not None
    (member,) = hub.members("handover")
    connection = member.connection
    connection._writer = asyncio.get_running_loop().create_future()  # a writer "draining"
    for i in range(3):
        member.deliver(i + 1, json.dumps({"type": "message", "seq": i + 1, "message": f"m{i}"}))
    assert len(connection._buffer) == 3  # left to the writer

    class Finished:
        def close(self) -> None:
            pass

    connection._writer_done(Finished(), None)  # type: ignore[arg-type]
    assert [f["seq"] for f in await messages(ws, 3)] == [1, 2, 3]
    await ws.close()
