"""``roomcast serve``'s connection limits against hostile clients, on a real server.

Idle and dripping connections, one address holding many, the total cap, clients that
never read their socket, and bytes that are not UTF-8: each has a bound and a named
answer, and other clients keep being served (issue 6, items 9, 10 and 16).

Linux routes all of 127.0.0.0/8 to loopback, so binding a client socket to 127.0.0.2,
127.0.0.3... gives each "client" an address of its own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import websockets

pytestmark = [pytest.mark.e2e]


def _tcp(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    return sock


def _http_get(port: int, path: str, source: str) -> bytes:
    with _tcp(port, source) as sock:
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        sock.sendall(request.encode())
        return _read_all(sock)


def _read_all(sock: socket.socket, timeout: float = 5.0, *, reset_ok: bool = True) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            if not reset_ok:
                raise
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _closed_by_server(sock: socket.socket, within: float) -> float | None:
    """Seconds until the server closed (FIN or reset) ``sock``, or None if it did not
    within ``within`` seconds. Reads and discards whatever arrives."""
    start = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - start < within:
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - start
    return None


def _server_sockets(port: int) -> int:
    """Established TCP connections whose local port is ``port`` (the server's side),
    read from /proc/net/tcp: what the server's kernel still holds for it."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def _ws_handshake(port: int, path: str, source: str, *, rcvbuf: int | None = None) -> socket.socket:
    """A WebSocket connection opened by hand (no library reading for it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, f"closed during the handshake: {head!r}"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def _masked_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def test_one_address_cannot_take_every_connection(serve):
    """Past MAX_CONNECTIONS_PER_ADDRESS an address gets 503 at once; others are served."""
    server = serve(ROOMCAST_MAX_CONNECTIONS_PER_ADDRESS="5", ROOMCAST_HANDSHAKE_TIMEOUT_SECS="30")
    hog = [_tcp(server.port, "127.0.0.2") for _ in range(5)]
    try:
        with _tcp(server.port, "127.0.0.2") as extra:
            answer = _read_all(extra)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"Too many connections from your address" in answer
        page = _http_get(server.port, "/chat/", "127.0.0.3")
        assert page.startswith(b"HTTP/1.1 200 "), page[:200]
    finally:
        for sock in hog:
            sock.close()
    assert "Connection limits since the last report: 1 refused" in server.log()
    assert "Traceback" not in server.log()


def test_total_cap_refuses_and_recovers(serve):
    """Past MAX_CONNECTIONS everyone gets 503 until connections go away."""
    server = serve(
        ROOMCAST_MAX_CONNECTIONS="6",
        ROOMCAST_MAX_CONNECTIONS_PER_ADDRESS="0",
        ROOMCAST_HANDSHAKE_TIMEOUT_SECS="30",
    )
    time.sleep(0.5)  # the start-up probe's connection is gone
    hog = [_tcp(server.port, "127.0.0.4") for _ in range(6)]
    try:
        refused = _http_get(server.port, "/chat/", "127.0.0.5")
        assert refused.startswith(b"HTTP/1.1 503 "), refused
        assert b"too many connections" in refused
    finally:
        for sock in hog:
            sock.close()
    deadline = time.monotonic() + 5
    while True:
        page = _http_get(server.port, "/chat/", "127.0.0.5")
        if page.startswith(b"HTTP/1.1 200 ") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert page.startswith(b"HTTP/1.1 200 "), page[:200]


def test_idle_and_dripping_connections_are_closed(serve):
    """A connection that sends nothing, or drips its headers, is closed after
    HANDSHAKE_TIMEOUT_SECS; a kept-alive connection's next request is held to it too."""
    server = serve(ROOMCAST_HANDSHAKE_TIMEOUT_SECS="1")
    idle = _tcp(server.port, "127.0.0.6")
    drip = _tcp(server.port, "127.0.0.6")
    ws_drip = _tcp(server.port, "127.0.0.6")
    drip.sendall(b"GET /chat/ HTTP/1.1\r\n")
    ws_drip.sendall(b"GET /ws/chat/lobby/ HTTP/1.1\r\nUpgrade: websocket\r\n")
    start = time.monotonic()
    closed = {}
    while time.monotonic() - start < 8 and len(closed) < 3:
        for name, sock in (("idle", idle), ("drip", drip), ("ws_drip", ws_drip)):
            if name in closed:
                continue
            if name != "idle":
                try:
                    sock.sendall(b"X-Drip: 1\r\n")  # a header line every 0.1 s
                except OSError:
                    closed[name] = time.monotonic() - start
                    continue
            sock.setblocking(False)
            try:
                data = sock.recv(4096)
                if not data:
                    closed[name] = time.monotonic() - start
            except BlockingIOError:
                pass
            except ConnectionResetError:
                closed[name] = time.monotonic() - start
        time.sleep(0.1)
    for sock in (idle, drip, ws_drip):
        sock.close()
    assert set(closed) == {"idle", "drip", "ws_drip"}, closed
    assert all(0.8 <= seconds <= 4 for seconds in closed.values()), closed
    # A request that arrives in time is answered, and the next one is held to it too.
    with _tcp(server.port, "127.0.0.7") as sock:
        sock.sendall(b"GET /chat/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET /chat/ HTTP/1.1\r\n")  # and never finishes
        assert _closed_by_server(sock, within=8) is not None
    assert "Traceback" not in server.log()


async def _post_big_messages(server, room: str, count: int) -> None:
    async with websockets.connect(server.ws_url(room), subprotocols=["roomcast.v1"]) as ws:
        text = "x" * 15_000
        for i in range(count):
            await ws.send(json.dumps({"type": "message", "message": text, "client_id": f"b{i}"}))
        acked = 0
        while acked < count:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
            acked += frame.get("type") == "ack"


async def _reader(server, room: str, expect: int) -> int:
    """A normal member: reads every message of the room."""
    seen = 0
    async with websockets.connect(
        server.ws_url(room), subprotocols=["roomcast.v1"], max_size=2**20
    ) as ws:
        while seen < expect:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
            seen += frame.get("type") == "message"
    return seen


@pytest.mark.parametrize("path", ["stalled", "over_buffer"])
async def test_clients_that_never_read_are_cut_off(serve, path):
    """Sockets that never read are reset within a bound, by the stall deadline or by
    the 1013 close that cannot get through; their kernel buffers go with them, nothing
    is logged as an error, and a member that reads loses nothing."""
    if path == "stalled":  # the buffer bound is never reached: the stall deadline acts
        env = {
            "ROOMCAST_SEND_TIMEOUT_SECS": "2",
            "ROOMCAST_OUTBOUND_BUFFER_FRAMES": "5000",
            "ROOMCAST_OUTBOUND_BUFFER_BYTES": str(100 * 2**20),
        }
    else:  # the byte bound closes with 1013 first; the close never completes
        env = {
            "ROOMCAST_SEND_TIMEOUT_SECS": "600",
            "ROOMCAST_OUTBOUND_BUFFER_BYTES": "200000",
            "ROOMCAST_CLOSE_TIMEOUT_SECS": "1",
        }
    # 300 posts as fast as they go: no post rate limit (test_limits_rate.py tests it).
    server = serve(
        ROOMCAST_MAX_CONNECTIONS_PER_ADDRESS="0", ROOMCAST_POST_RATE_PER_SOCKET="0", **env
    )
    room = f"never-read-{path}"
    posts = 300
    deaf = [
        _ws_handshake(server.port, f"/ws/chat/{room}/", "127.0.0.8", rcvbuf=4096) for _ in range(20)
    ]
    try:
        reader = asyncio.create_task(_reader(server, room, posts))
        await asyncio.sleep(0.3)
        await _post_big_messages(server, room, posts)
        assert await asyncio.wait_for(reader, 60) == posts
        # Every deaf socket is gone from the server's side within the bound: the stall
        # deadline (2 s) or the close timeout (1 s) after the buffer overflowed.
        for _ in range(75):  # 15 s at most
            if _server_sockets(server.port) == 0:
                break
            await asyncio.sleep(0.2)
        assert _server_sockets(server.port) == 0, "sockets the server still holds"
        for sock in deaf:
            with pytest.raises(ConnectionResetError):
                _read_all(sock, timeout=5, reset_ok=False)
                raise AssertionError("the socket was closed gracefully, not reset")
    finally:
        for sock in deaf:
            sock.close()
    log = server.log()
    kind = "read nothing for SEND_TIMEOUT_SECS" if path == "stalled" else "close not completed"
    assert kind in log, log[-2000:]
    for noise in ("Traceback", "RuntimeError", "Task exception was never retrieved"):
        assert noise not in log, log[-4000:]


def test_invalid_utf8_is_one_close_not_a_traceback(serve):
    """A text frame that is not UTF-8 closes that socket with 1007; no traceback."""
    server = serve()
    for _ in range(3):
        sock = _ws_handshake(server.port, "/ws/chat/utf8/", "127.0.0.9")
        sock.sendall(_masked_frame(0x1, b"\xff\xfe not utf-8"))
        data = _read_all(sock)
        sock.close()
        close = data[data.rfind(b"\x88") :]
        assert close[:1] == b"\x88", data[-40:]
        assert int.from_bytes(close[2:4], "big") == 1007, close
    log = server.log()
    assert "Traceback" not in log and "Invalid UTF-8" not in log, log[-2000:]


def test_socket_send_buffer_caps_the_kernels_buffer(serve):
    """SOCKET_SEND_BUFFER_BYTES sets SO_SNDBUF on each accepted socket (Linux reports
    twice the value), where autotuning would let it grow to tcp_wmem's maximum."""
    server = serve(ROOMCAST_SOCKET_SEND_BUFFER_BYTES="65536")
    sock = _ws_handshake(server.port, "/ws/chat/buffers/", "127.0.0.10")
    try:
        out = subprocess.run(
            ["ss", "-tmnH", "state", "established", f"( sport = :{server.port} )"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "tb131072" in out, out
    finally:
        sock.close()
