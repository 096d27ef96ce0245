"""Fixtures shared by the whole suite: real services, each run isolated.

* Redis: a private ``redis-server`` on a free port, started per session (tests may stop
  and restart it), so no run sees another's keys and a test can kill it.
* PostgreSQL: a database of its own per run, created on the server at
  ``ROOMCAST_TEST_POSTGRES`` (default ``postgres://postgres@127.0.0.1:5432/test``) and
  dropped at the end.
* Chromium: Debian's, at ``/usr/bin/chromium``.

A service the collected tests need and the machine lacks fails the run at once with one
line saying what to start; nothing is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Collection, Iterator
from pathlib import Path
from typing import Any

import pytest

POSTGRES_URL = os.environ.get("ROOMCAST_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/test")
CHROMIUM = os.environ.get("ROOMCAST_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, *, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout} s")


def make_users(
    names: list[str], *, staff: Collection[str] = (), superusers: Collection[str] = ()
) -> dict[str, Any]:
    """Users by name, created in the order of ``names``: those in ``staff`` with
    ``is_staff``, those in ``superusers`` superusers (``NAME@example.com``, no password)."""
    from django.contrib.auth import get_user_model  # loaded before Django is set up

    User = get_user_model()
    made = {}
    for name in names:
        if name in superusers:
            made[name] = User.objects.create_superuser(name, f"{name}@example.com", None)
        else:
            made[name] = User.objects.create_user(name, is_staff=name in staff)
    return made


def identities(users: dict[str, Any]) -> dict[str, Any]:
    """Each user's ``access.Identity`` by name, and the users themselves as ``"users"``."""
    from roomcast import access  # loaded before Django is set up

    return {name: access.identity_for(user) for name, user in users.items()} | {"users": users}


# -- checks: fail fast with what to start --------------------------------------------------


def _postgres_problem() -> str | None:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            return None
    except Exception as exc:
        return (
            f"PostgreSQL is not reachable at {POSTGRES_URL} ({str(exc).strip().splitlines()[0]}): "
            "start it (pg_ctlcluster 15 main start) or set ROOMCAST_TEST_POSTGRES"
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    needed = {m.name for item in items for m in item.iter_markers()}
    problems = []
    if "redis" in needed and shutil.which("redis-server") is None:
        problems.append("redis-server is not installed: apt-get install -y redis-server")
    if "postgres" in needed and (problem := _postgres_problem()):
        problems.append(problem)
    if "browser" in needed and not os.access(CHROMIUM, os.X_OK):
        problems.append(f"Chromium is missing at {CHROMIUM}: apt-get install -y chromium")
    if problems:
        pytest.exit("; ".join(problems), returncode=3)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Django removes the run's SQLite file; its WAL and shared-memory files, still open
    in the store's writer thread when it does, are removed here."""
    from django.conf import settings

    name = settings.DATABASES["default"]["NAME"]
    if not os.environ.get("ROOMCAST_TEST_SQLITE"):
        for suffix in ("-wal", "-shm"):
            Path(f"{name}{suffix}").unlink(missing_ok=True)


# -- Redis ----------------------------------------------------------------------------------


class RedisServer:
    """A private redis-server on a free port; ``stop()``/``start()`` for failure tests."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--logfile",
                str(self.workdir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private Redis for this run."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test or run uses."""
    return f"rctest{uuid.uuid4().hex[:10]}"


# -- PostgreSQL -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """URL of a PostgreSQL database created for this run (dropped afterwards)."""
    import psycopg

    name = f"roomcast_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = POSTGRES_URL.rpartition("/")
    yield f"{base}/{name}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- roomcast serve's socket layer, in this process ------------------------------------------


@contextlib.asynccontextmanager
async def lean_server(**config: Any) -> AsyncIterator[Any]:
    """A uvicorn server in this process serving the room sockets with ``roomcast serve``'s
    protocol class (``server.lean_ws``); ``config``: more ``uvicorn.Config`` arguments.
    The server's ``url`` is ``ws://.../ws/chat/``, for a room name and ``/`` after it."""
    import uvicorn

    from roomcast.routing import websocket_application
    from roomcast.server import lean_ws

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            websocket_application(),
            host="127.0.0.1",
            port=port,
            ws=lean_ws.protocol_class(),
            ws_per_message_deflate=False,
            lifespan="off",
            log_level="warning",
            **config,
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn offers no event for it)
        await asyncio.sleep(0.01)
    server.url = f"ws://127.0.0.1:{port}/ws/chat/"  # type: ignore[attr-defined]
    server.task = task  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


async def joined_socket(url: str) -> Any:
    """A ``websockets`` client of a room socket at ``url`` (v1, no compression, no
    pings), its ``joined`` frame read."""
    import websockets

    ws = await websockets.connect(
        url,
        subprotocols=["roomcast.v1"],  # type: ignore[list-item]
        compression=None,
        ping_interval=None,
    )
    assert json.loads(await ws.recv())["type"] == "joined"
    return ws


# -- Channels -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_channel_layers() -> Iterator[None]:
    """Every test gets new channel-layer instances (the in-memory layer keeps state)."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
async def app() -> Any:
    """The WebSocket application as a project mounts it; the hub is closed afterwards."""
    # Imported here: this module is loaded before pytest-django sets Django up.
    from roomcast import hub
    from roomcast.routing import websocket_application

    yield websocket_application()
    running = hub.running_hub()
    if running is not None:
        await running.close()


@pytest.fixture
async def communicators(app: Any) -> Any:
    """A list: the communicators of ``app`` put in it disconnect at the end of the test,
    before the hub closes."""
    opened: list[Any] = []
    yield opened
    for communicator in opened:
        await communicator.disconnect()


@pytest.fixture
def room_of(app: Any, communicators: list[Any]) -> Any:
    """``await room_of(name, **kwargs)`` joins a RoomCommunicator (``/ws/chat/<name>/``)
    of ``app``; all disconnect at the end."""
    from roomcast.testing import RoomCommunicator  # loaded before Django is set up

    async def join(name: str, **kwargs: Any) -> Any:
        communicator = RoomCommunicator(app, name, **kwargs)
        await communicator.join()
        communicators.append(communicator)
        return communicator

    return join


@pytest.fixture
def mux(app: Any, communicators: list[Any]) -> Any:
    """``await mux(token=None, **kwargs)`` opens a MuxCommunicator (``/ws/``) of ``app``,
    its ``connected`` frame kept as ``.connected``; all disconnect at the end."""
    from roomcast.testing import MuxCommunicator  # loaded before Django is set up

    async def open_(token: str | None = None, **kwargs: Any) -> Any:
        communicator = MuxCommunicator(app, token=token, **kwargs)
        communicator.connected = await communicator.open()
        communicators.append(communicator)
        return communicator

    return open_


@pytest.fixture(autouse=True)
def _forget_room_visibility() -> Iterator[None]:
    """Each test starts with no remembered room visibility (roomcast.access caches what
    it read for a few seconds; tests make rooms private behind its back, with the ORM),
    nor a remembered set of banned users (the same, for bans)."""
    from roomcast import access  # this module is loaded before Django is set up

    access.forget_visibility()
    access.forget_bans()
    yield
