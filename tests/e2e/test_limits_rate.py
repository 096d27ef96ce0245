"""Post rate limits and socket caps on a real ``roomcast serve`` (issue 7 item 5).

A flooding socket gets ``rate_limited`` for what it sends over the limit, and its other
posts and everyone else's are stored and delivered as usual; one that ignores the answer
is closed with 4429; sockets over the per-user and per-address caps are closed with 4429
and a reason naming the cap. Linux routes all of 127.0.0.0/8 to loopback, so a client
bound to 127.0.0.2 is a client of another address.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import websockets

from tests.e2e.conftest import connect

pytestmark = [pytest.mark.e2e]


async def answers(client, count: int) -> tuple[list[str], list[dict[str, Any]], list[dict]]:
    """Read until ``count`` acks and errors have come: (acked client_ids, errors, messages)."""
    acked: list[str] = []
    errors: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    while len(acked) + len(errors) < count:
        frame = await client.recv(timeout=20)
        if frame["type"] == "ack":
            acked.append(frame["client_id"])
        elif frame["type"] == "error":
            errors.append(frame)
        elif frame["type"] == "message":
            messages.append(frame)
    return acked, errors, messages


async def test_a_flood_gets_rate_limited_and_nobody_loses_anything(serve, clients):
    """With the default limits (5/s, bursts of 10), 15 posts sent at once: those over the
    burst get rate_limited with their client_id and a retry_after, and are not stored;
    a steady poster in the same room is never refused; the readers get every stored
    message once, in order; the refused posts sent again after retry_after are stored."""
    server = serve()
    room = f"flood {uuid.uuid4().hex[:6]}"
    flooder, steady, reader_1, reader_2 = [await clients(server.ws_url(room)) for _ in range(4)]
    for client in (flooder, steady, reader_1, reader_2):
        await client.recv_type("joined")
    for i in range(15):
        await flooder.send({"type": "message", "message": f"flood {i}", "client_id": f"f{i}"})
    for i in range(3):
        await steady.send({"type": "message", "message": f"steady {i}", "client_id": f"s{i}"})
        await asyncio.sleep(0.25)
    acked, refused, _ = await answers(flooder, 15)
    steady_acked, steady_refused, _ = await answers(steady, 3)
    assert steady_refused == [] and steady_acked == ["s0", "s1", "s2"]
    assert 10 <= len(acked) < 15, (acked, refused)
    assert acked == [f"f{i}" for i in range(len(acked))]  # the first ones, in order
    assert [e["client_id"] for e in refused] == [f"f{i}" for i in range(len(acked), 15)]
    assert all(e["code"] == "rate_limited" and 0 < e["retry_after"] <= 1 for e in refused)
    stored = len(acked) + 3
    for reader in (reader_1, reader_2):
        frames = await reader.messages(stored)
        assert [f["seq"] for f in frames] == list(range(1, stored + 1))
        assert sorted(f["client_id"] for f in frames) == sorted([*acked, "s0", "s1", "s2"])
    # The refused ones, sent again at the pace the server asked for, all get in.
    for error in refused:
        await asyncio.sleep(error["retry_after"])
        frame = {"type": "message", "message": "again", "client_id": error["client_id"]}
        await flooder.send(frame)
        again, still_refused, _ = await answers(flooder, 1)
        assert again == [error["client_id"]] and still_refused == []
    late = await clients(server.ws_url(room))
    await late.recv_type("joined")
    history = await late.messages(15 + 3)
    assert len({f["client_id"] for f in history}) == 18


async def test_a_socket_that_ignores_rate_limited_is_closed_4429(serve, clients):
    """A client that goes on sending after rate_limited is closed with 4429 and says why;
    the room's other member keeps getting the stored messages."""
    server = serve(ROOMCAST_RATE_LIMIT_CLOSE_AFTER="5")
    room = f"flood {uuid.uuid4().hex[:6]}"
    flooder, reader = [await clients(server.ws_url(room)) for _ in range(2)]
    for client in (flooder, reader):
        await client.recv_type("joined")
    for i in range(40):
        await flooder.send({"type": "message", "message": f"m{i}", "client_id": f"c{i}"})
    acked: list[str] = []
    refusals = 0
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            frame = await flooder.recv(timeout=20)
            if frame["type"] == "ack":
                acked.append(frame["client_id"])
            elif frame["type"] == "error":
                assert frame["code"] == "rate_limited"
                refusals += 1
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
        4429,
        "kept posting after rate_limited",
    )
    assert refusals == 4  # the fifth refusal is the close
    frames = await reader.messages(len(acked))
    assert [f["client_id"] for f in frames] == acked
    other = await clients(server.ws_url(room))
    await other.recv_type("joined")
    await other.messages(len(acked))
    await other.send({"type": "ping"})
    assert (await other.recv_type("pong"))["type"] == "pong"


def session_key(server, username: str) -> str:
    code = (
        "from django.contrib.auth import get_user_model; from django.test import Client; "
        f"user = get_user_model().objects.create_user({username!r}); "
        "client = Client(); client.force_login(user); print(client.cookies['sessionid'].value)"
    )
    result = server.cli("manage", "shell", "--no-imports", "-c", code)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


async def refused_with(url: str, **kwargs: Any) -> tuple[int, str]:
    """The close code and reason of a socket the server accepts and then closes."""
    client = await connect(url, **kwargs)
    try:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await client.recv(timeout=10)
    finally:
        client.ws.transport.abort()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def test_sockets_over_the_per_user_and_per_address_caps_are_closed_4429(serve, clients):
    """MAX_SOCKETS_PER_USER=2: a user's third socket is closed 4429; when one of the two
    goes, a new one is let in. MAX_SOCKETS_PER_ADDRESS=3: a fourth socket from 127.0.0.2
    is closed 4429, while 127.0.0.3 still connects."""
    server = serve(ROOMCAST_MAX_SOCKETS_PER_USER="2", ROOMCAST_MAX_SOCKETS_PER_ADDRESS="3")
    key = await asyncio.to_thread(session_key, server, f"u{uuid.uuid4().hex[:6]}")
    cookie = {"additional_headers": {"Cookie": f"sessionid={key}"}}
    user_sockets = [await clients(server.ws_url(room), **cookie) for room in ("a", "b")]
    for socket in user_sockets:
        await socket.recv_type("joined")
    assert await refused_with(server.ws_url("c"), **cookie) == (
        4429,
        "too many sockets for this user (MAX_SOCKETS_PER_USER=2)",
    )
    await user_sockets[0].ws.close()
    for _ in range(100):  # the server sees the close a moment later
        client = await connect(server.ws_url("c"), **cookie)
        frame_or_close: Any
        try:
            frame_or_close = await client.recv(timeout=10)
        except websockets.ConnectionClosed:
            frame_or_close = None
        await client.ws.close()
        if frame_or_close is not None:
            assert frame_or_close["type"] == "joined"
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the user's freed place was never given back")

    here = {"local_addr": ("127.0.0.2", 0)}
    from_2 = [await clients(server.ws_url("d"), **here) for _ in range(3)]
    for socket in from_2:
        await socket.recv_type("joined")
    assert await refused_with(server.ws_url("d"), **here) == (
        4429,
        "too many sockets from this address (MAX_SOCKETS_PER_ADDRESS=3)",
    )
    elsewhere = await clients(server.ws_url("d"), local_addr=("127.0.0.3", 0))
    await elsewhere.recv_type("joined")
