"""Hostile clients against ``roomcast serve``, with its connection limits on and off.

Two of issue 6's findings, reproduced and measured side by side in one run:

* flood: one address opens ``--idle`` TCP connections and sends nothing, against a
  server whose open-file limit is ``--nofile``; then another address asks for a page
  and opens a room socket. Reported: what that other client got, and how many of the
  idle connections the server still held after ``--wait`` seconds.
* deaf: ``--deaf`` sockets join a room and never read while it receives 16 KB posts;
  a normal member reads along. Reported: the kernel's TCP memory (``/proc/net/sockstat``,
  machine-wide, so other load on the machine shows in it too) at its peak and at the
  end, how many deaf sockets the server still held, and whether the reader lost anything.

"off" is ``roomcast serve`` with the limits set out of reach (the behaviour before
issue 6), "on" the defaults. Loopback only; every server is stopped at the end.

    .venv/bin/python benchmarks/hostile.py [--idle 3000] [--deaf 300] [--output FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import socket
import sys
import time
from pathlib import Path

import websockets
from _harness import Processes, machine_facts, raise_fd_limit

OFF = {
    "ROOMCAST_MAX_CONNECTIONS": "1000000",
    "ROOMCAST_MAX_CONNECTIONS_PER_ADDRESS": "0",
    "ROOMCAST_HANDSHAKE_TIMEOUT_SECS": "100000",
    "ROOMCAST_SEND_TIMEOUT_SECS": "100000",
    "ROOMCAST_CLOSE_TIMEOUT_SECS": "100000",
    "ROOMCAST_OUTBOUND_BUFFER_BYTES": str(2**40),
}
ON = {"ROOMCAST_MAX_CONNECTIONS_PER_ADDRESS": "1000"}  # the default, said aloud
PAGE = 4096


def tcp_memory_mb() -> float:
    """Kernel memory of all TCP sockets on this machine, in MB (/proc/net/sockstat)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1]) * PAGE / 1e6
    return 0.0


def server_sockets(port: int, peer: str) -> int:
    """Established connections on ``port`` from ``peer`` (an IPv4 address), server side."""
    want = "".join(f"{int(part):02X}" for part in reversed(peer.split(".")))
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if state == "01" and int(local.split(":")[1], 16) == port and remote.startswith(want):
            count += 1
    return count


def client_request(port: int, source: str) -> str:
    """What a client at ``source`` gets for GET /chat/ and for a room socket."""
    try:
        with socket.create_connection(("127.0.0.1", port), 5, (source, 0)) as sock:
            sock.sendall(b"GET /chat/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            page = sock.recv(100).split(b"\r\n")[0].decode() or "closed"
    except OSError as exc:
        page = f"error: {exc}"
    return page


async def ws_request(port: int, source: str) -> str:
    try:
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/ws/chat/lobby/", open_timeout=5, local_addr=(source, 0)
        ):
            return "joined"
    except Exception as exc:
        return f"refused: {type(exc).__name__}"


async def flood(
    procs: Processes, label: str, env: dict[str, str], idle: int, nofile: int, wait: float
):
    server = procs.roomcast("roomcast", procs.workdir / f"flood-{label}", env, nofile=-nofile)
    held = []
    for _ in range(idle):
        try:
            sock = socket.create_connection(("127.0.0.1", server.port), 2, ("127.0.0.2", 0))
            held.append(sock)
        except OSError:
            break
    await asyncio.sleep(0.5)
    page = client_request(server.port, "127.0.0.3")
    ws = await ws_request(server.port, "127.0.0.3")
    await asyncio.sleep(wait)
    still = server_sockets(server.port, "127.0.0.2")
    for sock in held:
        sock.close()
    procs.stop(server)
    return {"opened": len(held), "page": page, "socket": ws, "held after": still}


def deaf_socket(port: int, room: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind(("127.0.0.4", 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    handshake = (
        f"GET /ws/chat/{room}/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    sock.sendall(handshake.encode())
    return sock


async def deaf(
    procs: Processes, label: str, env: dict[str, str], count: int, posts: int, after: float
):
    # A data dir of its own: the same room and client_ids in one database would make
    # every post of the second run a duplicate, stored once and never published again.
    server = procs.roomcast("roomcast", procs.workdir / ("deaf-" + re.sub(r"\W+", "-", label)), env)
    socks = [deaf_socket(server.port, "deaf") for _ in range(count)]
    url = f"ws://127.0.0.1:{server.port}/ws/chat/deaf/"
    base = tcp_memory_mb()
    peak = base
    received = 0
    async with (
        # No client pings: on a loaded machine a late pong would end the run, not measure it.
        websockets.connect(
            url, subprotocols=["roomcast.v1"], max_size=2**20, ping_interval=None
        ) as reader,
        websockets.connect(url, subprotocols=["roomcast.v1"], ping_interval=None) as writer,
    ):

        async def read() -> None:
            nonlocal received
            while received < posts:
                frame = json.loads(await reader.recv())
                received += frame.get("type") == "message"

        async def drain() -> None:  # the writer reads its own socket too
            async for _ in writer:
                pass

        reading = asyncio.create_task(read())
        draining = asyncio.create_task(drain())
        text = "x" * 16_000
        for i in range(posts):  # 20 posts a second: 320 KB/s into the room
            await writer.send(json.dumps({"message": text, "client_id": f"p{i}"}))
            peak = max(peak, tcp_memory_mb())
            await asyncio.sleep(0.05)
        try:  # what the reader got is the measurement: a timeout is reported, not raised
            await asyncio.wait_for(reading, 180)
        except TimeoutError:
            print(f"deaf: the reader got {received} of {posts} in time", file=sys.stderr)
        draining.cancel()
    start = time.monotonic()
    while time.monotonic() - start < after:
        peak = max(peak, tcp_memory_mb())
        await asyncio.sleep(1)
    end = tcp_memory_mb()
    still = server_sockets(server.port, "127.0.0.4")
    for sock in socks:
        sock.close()
    procs.stop(server)
    return {
        "TCP memory before (MB)": round(base, 1),
        "peak (MB)": round(peak, 1),
        f"{after:.0f} s after the last post (MB)": round(end, 1),
        "deaf sockets still held": still,
        "reader got": f"{received} of {posts}",
    }


async def main_async(args: argparse.Namespace, procs: Processes) -> list[tuple[str, dict]]:
    raise_fd_limit(args.idle + 1000)
    results = []
    for name, env in (("off", OFF), ("on", ON)):
        print(f"flood, limits {name}", file=sys.stderr, flush=True)
        results.append(
            (
                f"flood, limits {name}",
                await flood(procs, name, env, args.idle, args.nofile, args.wait),
            )
        )
    capped = {**ON, "ROOMCAST_SOCKET_SEND_BUFFER_BYTES": "262144"}
    for name, env in (("off", OFF), ("on", ON), ("on, 256 KiB send buffers", capped)):
        print(f"deaf, limits {name}", file=sys.stderr, flush=True)
        results.append(
            (
                f"deaf, limits {name}",
                await deaf(procs, name, env, args.deaf, args.posts, args.after),
            )
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=3000, help="idle connections (flood)")
    parser.add_argument("--nofile", type=int, default=2048, help="the server's open-file limit")
    parser.add_argument("--wait", type=float, default=15.0, help="seconds before counting idle")
    parser.add_argument("--deaf", type=int, default=300, help="sockets that never read")
    parser.add_argument("--posts", type=int, default=400, help="16 KB posts into their room")
    parser.add_argument("--after", type=float, default=60.0, help="seconds watched after")
    parser.add_argument("--output", type=Path, help="write the Markdown results here")
    args = parser.parse_args()
    facts = machine_facts(None)
    import tempfile

    procs = Processes(Path(tempfile.mkdtemp(prefix="roomcast-hostile-")))
    try:
        results = asyncio.run(main_async(args, procs))
    finally:
        procs.stop_all()
    lines = [
        f"# Hostile clients, {time.strftime('%Y-%m-%d')}",
        "",
        f"`{' '.join(['.venv/bin/python benchmarks/hostile.py', *sys.argv[1:]])}`",
        "",
        *(f"- {k}: {v}" for k, v in facts.items()),
        "",
    ]
    for name, row in results:
        lines.append(f"## {name}")
        lines.extend(f"- {k}: {v}" for k, v in row.items())
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
