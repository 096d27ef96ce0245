"""End-to-end fixtures: real ``roomcast serve`` processes on free ports, and a client.

Each server runs with its own data dir under the test's tmp_path; servers started in one
test share the data dir (same SECRET_KEY and API key, as a deployment would) and, when
given, one database URL and one Redis prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import websockets
from playwright.async_api import Browser, Playwright, async_playwright

from tests.conftest import CHROMIUM, free_port, wait_for_port

ROOMCAST = str(Path(sys.executable).with_name("roomcast"))


class ServerProcess:
    """One ``roomcast serve`` process."""

    def __init__(self, data_dir: Path, env: dict[str, str], *, workers: int = 1) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.env = env
        self.workers = workers
        self.log_path = data_dir / f"serve-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, room: str, since: int | None = None) -> str:
        url = f"ws://127.0.0.1:{self.port}/ws/chat/{urllib.parse.quote(room, safe='')}/"
        return url if since is None else f"{url}?since={since}"

    def start(self) -> ServerProcess:
        env = {**os.environ, "ROOMCAST_DATA_DIR": str(self.data_dir), **self.env}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    ROOMCAST,
                    "serve",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(self.workers),
                    # A test that sets ROOMCAST_LOG_LEVEL reads the log at that level
                    # (the flag would win over the variable).
                    *(() if "ROOMCAST_LOG_LEVEL" in self.env else ("--log-level", "warning")),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
            )
        try:
            wait_for_port(self.port, timeout=30, proc=self.proc)
        except Exception as exc:
            raise RuntimeError(f"roomcast serve did not start: {exc}\n{self.log()}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(
        self, *args: str, without: Sequence[str] = (), env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the ``roomcast`` command with this server's environment, minus ``without``,
        plus ``env``."""
        env = {**os.environ, "ROOMCAST_DATA_DIR": str(self.data_dir), **self.env, **(env or {})}
        for name in ("DJANGO_SETTINGS_MODULE", *without):
            env.pop(name, None)
        return subprocess.run(
            [ROOMCAST, *args],
            env=env,
            cwd=self.data_dir,
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """``serve(**env)`` starts a roomcast server process; all are stopped at teardown."""
    servers: list[ServerProcess] = []
    data_dir = tmp_path / "data"
    data_dir.mkdir()

    def start(workers: int = 1, **env: str) -> ServerProcess:
        server = ServerProcess(data_dir, env, workers=workers).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
        # pytest shows captured teardown output only when the test failed.
        print(f"--- roomcast serve on port {server.port} (last 8000 chars) ---")
        print(server.log()[-8000:])


class Client:
    """A WebSocket client of the protocol, for tests: JSON in, JSON out, with timeouts."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        return dict(json.loads(await asyncio.wait_for(self.ws.recv(), timeout)))

    async def recv_type(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame of type ``kind``, failing on any other frame in between."""
        frame = await self.recv(timeout)
        assert frame.get("type") == kind, f"expected a {kind!r} frame, got {frame!r}"
        return frame

    async def messages(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        """The next ``count`` message frames (other frame types are skipped)."""
        out: list[dict[str, Any]] = []

        async def collect() -> None:
            while len(out) < count:
                frame = dict(json.loads(await self.ws.recv()))
                if frame.get("type") == "message":
                    out.append(frame)

        try:
            await asyncio.wait_for(collect(), timeout)
        except TimeoutError:
            raise AssertionError(f"got {len(out)} of {count} messages: last {out[-3:]!r}") from None
        return out


async def connect(url: str, *, v1: bool = True, **kwargs: Any) -> Client:
    """Open a client; v1 offers the ``roomcast.v1`` subprotocol (else the seed's dialect)."""
    ws = await websockets.connect(
        url, subprotocols=["roomcast.v1"] if v1 else None, open_timeout=10, **kwargs
    )
    return Client(ws)


@pytest.fixture
async def clients() -> AsyncIterator[Any]:
    """``await clients(url, v1=True)`` opens a Client; all are closed at teardown."""
    opened: list[Client] = []

    async def open_client(url: str, **kwargs: Any) -> Client:
        client = await connect(url, **kwargs)
        opened.append(client)
        return client

    yield open_client
    # Together, and not for long: a client that left frames unread (more than its
    # receive queue holds) has stopped reading its socket, so it would wait out its close
    # timeout for the server's close frame, which sits behind them.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2):
            await asyncio.gather(*(c.ws.close() for c in opened), return_exceptions=True)
    for client in opened:
        client.ws.transport.abort()


async def launch(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless, with the flags this machine needs: no GPU, no sandbox
    as root, no background requests to a network that is not there."""
    return await playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    )


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, for one test."""
    async with async_playwright() as playwright:
        chromium = await launch(playwright)
        yield chromium
        await chromium.close()


@pytest.fixture
def cluster(serve: Any, redis_server: Any, redis_prefix: str, postgres_database: str) -> Any:
    """``cluster(n, layer)``: n ``roomcast serve`` processes on one PostgreSQL database
    and one Redis prefix (tests using it carry the redis and postgres marks)."""

    def start(n: int = 2, layer: str = "pubsub", **env: str) -> list[ServerProcess]:
        shared = {
            "ROOMCAST_DATABASE_URL": postgres_database,
            "ROOMCAST_REDIS_URL": redis_server.url,
            "ROOMCAST_REDIS_PREFIX": redis_prefix,
            "ROOMCAST_LAYER": layer,
            **env,
        }
        return [serve(**shared) for _ in range(n)]

    return start


# -- /ws/ clients for tests on real servers ----------------------------------------------


class Socket:
    """A ``/ws/`` client: JSON frames, waiting for the ones a test names."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, **frame: Any) -> None:
        await self.ws.send(json.dumps(frame))

    async def next_of(self, *kinds: str, timeout: float = 30) -> dict[str, Any]:
        """The next frame of one of ``kinds``, skipping others."""
        async with asyncio.timeout(timeout):
            while True:
                frame = json.loads(await self.ws.recv())
                if frame["type"] in kinds:
                    return frame

    async def subscribe(self, room: str) -> dict[str, Any]:
        """Subscribe; the first presence frame after ``joined`` (it lists the socket's
        own user too: it comes when the batch the subscription arrived in ends)."""
        await self.send(type="subscribe", room=room)
        joined = await self.next_of("joined", "unsubscribed")
        assert joined["type"] == "joined", joined
        return await self.next_of("presence")


@pytest.fixture
async def sockets() -> Any:
    """``await sockets(server, token)`` opens a /ws/ socket; all are closed at the end."""
    opened: list[Any] = []

    async def open_(server: Any, token: str) -> Socket:
        ws = await websockets.connect(
            f"ws://127.0.0.1:{server.port}/ws/",
            subprotocols=["roomcast.v1"],
            additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=10,
        )
        opened.append(ws)
        socket = Socket(ws)
        assert (await socket.next_of("connected"))["type"] == "connected"
        return socket

    yield open_
    for ws in opened:
        ws.transport.abort()
