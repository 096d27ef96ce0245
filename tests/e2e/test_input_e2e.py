"""Hostile input against a real ``roomcast serve`` (uvicorn): named answers, no tracebacks.

Each finding of issue 6 that was about the real server: a deeply nested frame dropped the
socket (1006) and a nested body was a 500; unrouted WebSocket paths were a 500; uvicorn
decodes undecodable ``%XX`` bytes to U+FFFD, so they all named one room; a close reason
over 123 bytes raised inside the server.
"""

from __future__ import annotations

import asyncio
import html
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
import websockets

pytestmark = pytest.mark.e2e


def http(server: Any, method: str, path: str, body: str | bytes | None = None) -> tuple[int, str]:
    """``method path`` on ``server`` with its API key; (status, body text)."""
    key = (server.data_dir / "api_key").read_text().strip()
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(
        server.http_url + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def closed_with(url: str) -> tuple[int, str]:
    """Connect to ``url``; the code and reason the server closed with (it must close)."""
    async with websockets.connect(url, open_timeout=10) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code is not None
        return ws.close_code, ws.close_reason or ""


def assert_no_traceback(server: Any) -> None:
    log = server.log()
    assert "Traceback" not in log and "Internal Server Error" not in log, log[-4000:]


@pytest.mark.parametrize("v1", [True, False])
async def test_deeply_nested_frames_get_an_error_frame_and_the_socket_stays(serve, clients, v1):
    """ "[" * 2000 is an invalid_json error frame on a real server (it was a RecursionError
    traceback and a 1006 drop); the same socket then posts and receives."""
    server = serve()
    member = await clients(server.ws_url("deep"), v1=v1)
    if v1:
        await member.recv_type("joined")
    await member.send("[" * 2000)
    error = await member.recv_type("error")
    assert error["code"] == "invalid_json"
    if not v1:
        assert error["message"] == error["detail"]  # what a seed page shows
    await member.send({"message": "still here"})
    assert (await member.messages(1))[0]["message"] == "still here"
    assert_no_traceback(server)


async def test_deeply_nested_http_bodies_are_400(serve):
    """The push API answers a nested body with 400 invalid_json (it was a 500)."""
    server = serve()
    for path in ("/api/rooms/lobby/messages", "/api/rooms/lobby/disconnect"):
        status, body = await asyncio.to_thread(http, server, "POST", path, "[" * 2000)
        assert status == 400, body
        assert json.loads(body)["error"] == "invalid_json"
    status, body = await asyncio.to_thread(
        http, server, "GET", "/api/rooms/lobby/messages?before=" + "9" * 30
    )
    assert status == 400 and json.loads(body)["error"] == "invalid_query"
    assert_no_traceback(server)


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        ("/ws/x/", "rooms are at /ws/chat/<room>/"),
        ("/ws/chat/lobby", "room URLs end with '/'"),
        ("/ws/other/thing/", "rooms are at /ws/chat/<room>/"),
    ],
)
async def test_unrouted_websocket_paths_are_http_404(serve, path, detail):
    """uvicorn offers websocket.http.response: an unrouted path is denied with HTTP 404
    and a one-line body (it was a 500 and a ValueError traceback)."""
    server = serve()
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(f"ws://127.0.0.1:{server.port}{path}", open_timeout=10)
    response = info.value.response
    assert response.status_code == 404
    assert detail in response.body.decode()
    assert_no_traceback(server)


@pytest.mark.parametrize(
    ("escaped", "fragment"),
    [
        ("a%2Fb", "cannot contain '/'"),
        ("%FF", "not UTF-8"),
        ("%FE", "not UTF-8"),
        ("caf%E9", "not UTF-8"),  # Latin-1 é
        ("%E2%80%AEabc", "U+202E RIGHT-TO-LEFT OVERRIDE"),
        ("lob%E2%80%8Bby", "U+200B ZERO WIDTH SPACE"),
        ("%EF%BF%BD", "U+FFFD"),
    ],
)
async def test_bad_room_names_close_4400_with_the_reason(serve, escaped, fragment):
    """Room URLs that name no room are closed with 4400 and a reason saying why; an
    undecodable name is told so from the raw path, whatever uvicorn decoded it to."""
    server = serve()
    code, reason = await closed_with(f"ws://127.0.0.1:{server.port}/ws/chat/{escaped}/")
    assert code == 4400 and fragment in reason
    status, body = await asyncio.to_thread(
        http, server, "POST", f"/api/rooms/{escaped}/messages", '{"message": "x"}'
    )
    if "%2F" not in escaped:  # the HTTP route has no room for a '/': Django's 404
        assert status == 400 and json.loads(body) == {"error": "invalid_room", "detail": reason}
        status, page = await asyncio.to_thread(http, server, "GET", f"/chat/{escaped}/")
        assert status == 400 and reason in html.unescape(page)
    assert_no_traceback(server)


async def test_undecodable_names_do_not_share_a_room(serve, clients):
    """%FF and %FE were both the room U+FFFD, so one saw the other's messages; now
    neither is a room, and a valid name still is."""
    server = serve()
    for escaped in ("%FF", "%FE"):
        code, _ = await closed_with(f"ws://127.0.0.1:{server.port}/ws/chat/{escaped}/")
        assert code == 4400
    status, body = await asyncio.to_thread(http, server, "GET", "/api/rooms/%EF%BF%BD/messages")
    assert status == 400 and json.loads(body)["error"] == "invalid_room"
    member = await clients(server.ws_url("café"))
    assert (await member.recv_type("joined"))["room"] == "café"


async def test_a_seed_client_resending_a_client_id_sees_its_message(serve, clients):
    """A seed-dialect client that resends a client_id gets the stored message's frame
    again (it got no answer at all); other members see the message once."""
    server = serve()
    seed = await clients(server.ws_url("resend"), v1=False)
    watcher = await clients(server.ws_url("resend"))
    await watcher.recv_type("joined")
    frame = {"type": "message", "message": "only once", "client_id": "seed-7"}
    await seed.send(frame)
    first = (await seed.messages(1))[0]
    await seed.send(frame)
    again = (await seed.messages(1))[0]
    assert again == first and again["message"] == "only once"
    await seed.send({"message": "next"})
    assert [(f["seq"], f["message"]) for f in await watcher.messages(2)] == [
        (1, "only once"),
        (2, "next"),
    ]


async def test_disconnect_reasons_fit_a_close_frame(serve, clients):
    """A disconnect reason over 123 bytes of UTF-8 is a 400 (it was accepted, and the
    close frame raised inside the server); 123 bytes reach the member intact."""
    server = serve()
    member = await clients(server.ws_url("kick"))
    await member.recv_type("joined")
    too_long = json.dumps({"reason": "é" * 62})  # 62 characters, 124 bytes
    status, body = await asyncio.to_thread(
        http, server, "POST", "/api/rooms/kick/disconnect", too_long
    )
    assert status == 400 and "123 bytes" in json.loads(body)["detail"]
    reason = "é" * 61 + "x"
    status, _ = await asyncio.to_thread(
        http, server, "POST", "/api/rooms/kick/disconnect", json.dumps({"reason": reason})
    )
    assert status == 202
    with pytest.raises(websockets.ConnectionClosed):
        await member.recv()
    assert (member.ws.close_code, member.ws.close_reason) == (4000, reason)
    assert_no_traceback(server)


@pytest.mark.postgres
async def test_a_session_cookie_with_nul_is_anonymous_not_a_500(serve, postgres_database):
    """A session cookie that unquotes to NUL is no session (the socket joins anonymous);
    on PostgreSQL it is a DataError traceback and an HTTP 500."""
    server = serve(ROOMCAST_DATABASE_URL=postgres_database)
    headers = {"Cookie": 'sessionid="\\000abcdefghijklmnop"'}
    async with websockets.connect(
        server.ws_url("cookie"), subprotocols=["roomcast.v1"], additional_headers=headers
    ) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "joined"
    assert_no_traceback(server)
