"""A socket's posts in flight (``roomcast.post_line``), on ``roomcast serve``'s socket
layer: a real uvicorn server in this process with the lean protocol, real ``websockets``
clients, the real writer thread and database.

A client posting back to back has its posts read while earlier ones are stored, stored
a unit at a time, published and answered in the order sent; other frames wait for the
posts before them; at most ``MAX_POSTS_IN_FLIGHT`` are read ahead; a drain and a client
that goes away lose nothing.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid

import pytest
import websockets

from roomcast import post_line, stream
from roomcast.protocol import codec
from roomcast.server import drain

from .conftest import joined_socket, lean_server

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def unlimited(settings):
    """Posts as fast as a client sends them (the post rate limits would refuse them)."""
    settings.ROOMCAST = {
        **settings.ROOMCAST,
        "POST_RATE_PER_SOCKET": 0,
        "POST_RATE_PER_USER": 0,
    }


@pytest.fixture
async def server(unlimited):
    async with lean_server() as server:
        yield server


@pytest.fixture
def held_writer(monkeypatch):
    """The writer thread waits before each batch until ``release`` is set."""
    release = threading.Event()
    store_batch = stream.store_batch

    def held(posts):
        assert release.wait(30), "the test never released the writer"
        return store_batch(posts)

    monkeypatch.setattr(stream, "store_batch", held)
    monkeypatch.setattr(stream, "_each_alone", _held_alone(release, stream._each_alone))
    yield release
    release.set()


def _held_alone(release, each_alone):
    def held(posts):
        assert release.wait(30), "the test never released the writer"
        return each_alone(posts)

    return held


def post(text: str, client_id: str | None = None) -> str:
    frame = {"type": "message", "message": text, "client_id": client_id or uuid.uuid4().hex}
    return json.dumps(frame)


async def frames_until(ws, predicate, timeout: float = 20) -> list[dict]:
    """The frames ``ws`` gets up to and including the first that ``predicate`` accepts."""
    seen: list[dict] = []
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        seen.append(frame)
        if predicate(frame):
            return seen


async def test_posts_sent_back_to_back_are_stored_together_and_answered_in_order(server):
    """Forty posts sent without waiting: forty acks in the order sent, seqs 1-40; a
    member gets the forty messages in order; they took far fewer transactions."""
    member = await joined_socket(server.url + "burst/")
    publisher = await joined_socket(server.url + "burst/")
    batches = stream.writer.batches
    ids = [f"c{i}" for i in range(40)]
    for i, client_id in enumerate(ids):
        await publisher.send(post(f"m{i}", client_id))
    frames = await frames_until(
        publisher, lambda f: f["type"] == "ack" and f["client_id"] == ids[-1]
    )
    acks = [f for f in frames if f["type"] == "ack"]
    assert [(a["client_id"], a["seq"]) for a in acks] == [(c, i + 1) for i, c in enumerate(ids)]
    got = await frames_until(member, lambda f: f.get("seq") == 40)
    assert [(f["seq"], f["message"]) for f in got] == [(i + 1, f"m{i}") for i in range(40)]
    assert stream.writer.batches - batches < 40
    await member.close()
    await publisher.close()


async def test_another_frame_waits_for_the_posts_before_it(server, held_writer):
    """A history request sent behind five posts is answered after their acks, and its
    page has the five messages, as when posts went one at a time."""
    ws = await joined_socket(server.url + "barrier/")
    for i in range(5):
        await ws.send(post(f"m{i}"))
    await ws.send(json.dumps({"type": "history", "limit": 50}))
    await asyncio.sleep(0.2)
    held_writer.set()
    frames = await frames_until(ws, lambda f: f["type"] == "history")
    kinds = [f["type"] for f in frames if f["type"] in ("ack", "history")]
    assert kinds == ["ack"] * 5 + ["history"]
    assert [m["message"] for m in frames[-1]["messages"]] == [f"m{i}" for i in range(5)]
    await ws.close()


async def test_at_most_max_posts_in_flight_are_read_ahead(server, held_writer, monkeypatch):
    """While the writer is held, the socket reads MAX_POSTS_IN_FLIGHT posts and no more
    (the rest wait in TCP); released, all ten are stored and acked in order."""
    monkeypatch.setattr(post_line, "MAX_POSTS_IN_FLIGHT", 4)
    parsed: list[str] = []
    parse_frame = codec.parse_frame

    def counted(text, data=None, *, max_bytes):
        frame = parse_frame(text, data, max_bytes=max_bytes)
        parsed.append(frame["type"])
        return frame

    monkeypatch.setattr(codec, "parse_frame", counted)
    ws = await joined_socket(server.url + "bound/")
    ids = [f"b{i}" for i in range(10)]
    for i, client_id in enumerate(ids):
        await ws.send(post(f"m{i}", client_id))
    await asyncio.sleep(0.5)
    assert parsed == ["message"] * 4
    held_writer.set()
    frames = await frames_until(ws, lambda f: f["type"] == "ack" and f["client_id"] == ids[-1])
    acks = [f for f in frames if f["type"] == "ack"]
    assert [(a["client_id"], a["seq"]) for a in acks] == [(c, i + 1) for i, c in enumerate(ids)]
    await ws.close()


async def test_posts_of_a_client_that_went_away_are_stored_and_published(server, held_writer):
    """A client that sends three posts and vanishes before they are stored: they are
    stored and every member gets them (they were accepted)."""
    member = await joined_socket(server.url + "gone/")
    ws = await joined_socket(server.url + "gone/")
    for i in range(3):
        await ws.send(post(f"m{i}"))
    await asyncio.sleep(0.2)
    ws.transport.abort()
    await asyncio.sleep(0.2)
    held_writer.set()
    got = await frames_until(member, lambda f: f.get("seq") == 3)
    assert [f["message"] for f in got] == ["m0", "m1", "m2"]
    await member.close()


async def test_a_drain_closes_a_socket_after_its_posts_are_answered(
    unlimited, settings, monkeypatch, held_writer
):
    """Posts in flight when the server is told to stop: the socket's close (1012) comes
    after all their acks."""
    settings.ROOMCAST = {**settings.ROOMCAST, "DRAIN_SECS": 0, "CLOSE_TIMEOUT_SECS": 0.5}
    monkeypatch.setattr(drain, "SETTLE_SECS", 5.0)
    async with lean_server(timeout_graceful_shutdown=drain.graceful_shutdown_secs(0, 0.5)) as srv:
        ws = await joined_socket(srv.url + "draining/")
        ids = [f"d{i}" for i in range(3)]
        for i, client_id in enumerate(ids):
            await ws.send(post(f"m{i}", client_id))
        await asyncio.sleep(0.2)
        srv.should_exit = True
        await asyncio.sleep(0.3)  # the drain has begun, the posts still held
        held_writer.set()
        acks: list[str] = []
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if frame["type"] == "ack":
                    acks.append(frame["client_id"])
        assert acks == ids
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        await asyncio.wait_for(srv.task, 10)


async def test_a_refusal_is_answered_after_the_posts_before_it(settings, held_writer):
    """Three posts in flight, then two over the rate limit: the refusals (rate_limited)
    come after the three acks, the answers in the order the posts were sent."""
    settings.ROOMCAST = {
        **settings.ROOMCAST,
        "POST_RATE_PER_SOCKET": 0.01,
        "POST_BURST_PER_SOCKET": 3,
        "POST_RATE_PER_USER": 0,
        "RATE_LIMIT_CLOSE_AFTER": 0,
    }
    async with lean_server() as srv:
        ws = await joined_socket(srv.url + "refused/")
        ids = [f"r{i}" for i in range(5)]
        for i, client_id in enumerate(ids):
            await ws.send(post(f"m{i}", client_id))
        await asyncio.sleep(0.3)
        held_writer.set()
        frames = await frames_until(
            ws, lambda f: f.get("client_id") == ids[-1] and f["type"] == "error"
        )
        answers = [
            (f["type"], f.get("code"), f["client_id"])
            for f in frames
            if f["type"] in ("ack", "error")
        ]
        assert answers == [
            ("ack", None, "r0"),
            ("ack", None, "r1"),
            ("ack", None, "r2"),
            ("error", "rate_limited", "r3"),
            ("error", "rate_limited", "r4"),
        ]
        await ws.close()


async def test_on_ws_a_post_to_a_room_not_subscribed_is_answered_after_the_posts_before_it(
    server, held_writer
):
    """/ws/: two posts in flight in one room, then one to a room the socket is not in:
    its not_subscribed error comes after the two acks."""
    url = server.url.replace("/ws/chat/", "/ws/")
    ws = await websockets.connect(url, compression=None, ping_interval=None)
    assert json.loads(await ws.recv())["type"] == "connected"
    await ws.send(json.dumps({"type": "subscribe", "room": "inroom"}))
    await frames_until(ws, lambda f: f["type"] == "joined")
    for i in range(2):
        frame = {"type": "message", "room": "inroom", "message": f"m{i}", "client_id": f"a{i}"}
        await ws.send(json.dumps(frame))
    await ws.send(
        json.dumps({"type": "message", "room": "elsewhere", "message": "x", "client_id": "x"})
    )
    await asyncio.sleep(0.2)
    held_writer.set()
    frames = await frames_until(ws, lambda f: f.get("client_id") == "x")
    answers = [(f["type"], f.get("client_id")) for f in frames if f["type"] in ("ack", "error")]
    assert answers == [("ack", "a0"), ("ack", "a1"), ("error", "x")]
    assert frames[-1]["code"] == "not_subscribed"
    await ws.close()
