"""``roomcast serve``'s log and host names, on a real server process.

The default log holds the start-up lines and then only events that matter: sockets
opening and closing, pages, the favicon and 404s add nothing; ``--log-level debug``
shows them (so the quiet run is quiet because they are demoted, not because nothing
happened). A request for a host the site does not answer to is one line naming
ROOMCAST_ALLOWED_HOSTS.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from tests.conftest import free_port
from tests.e2e.conftest import ROOMCAST

pytestmark = pytest.mark.e2e

#: What uvicorn and roomcast serve print when they start and stop.
START_STOP_LINES = (
    r"roomcast serving on http://\S+/ \(sqlite3, InMemoryChannelLayer, 1 worker\)",
    r"INFO: +Started server process \[\d+\]",
    r"INFO: +Waiting for application startup\.",
    r"INFO: +Application startup complete\.",
    r"INFO: +Uvicorn running on http://\S+ \(Press CTRL\+C to quit\)",
    r"INFO: +Shutting down",
    r"INFO: +Waiting for application shutdown\.",
    r"INFO: +Application shutdown complete\.",
    r"INFO: +Finished server process \[\d+\]",
)
#: How long to wait for a line to reach the log, in seconds (not a speed check: the
#: line is expected at once; this only bounds a failing test).
LOG_WAIT_SECS = 10


class Serve:
    """One ``roomcast serve`` process with its own data dir, stderr and stdout in a file."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log_path = tmp_path / f"serve-{self.port}.log"
        child = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
        child.pop("DJANGO_SETTINGS_MODULE", None)
        child.update({"ROOMCAST_DATA_DIR": str(tmp_path / "data"), **(env or {})})
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [ROOMCAST, "serve", "--port", str(self.port), *args],
                env=child,
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_for("Uvicorn running on", timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = LOG_WAIT_SECS) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert self.proc.poll() is None, f"roomcast serve exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"{text!r} never logged:\n{self.log()}"
            time.sleep(0.05)

    def stop(self) -> str:
        """Stop the server (SIGTERM, as a service manager would); the whole log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=15)
        return self.log()

    def get(self, path: str, host: str | None = None) -> tuple[int, bytes, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            headers = {"Host": host} if host else {}
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            return response.status, response.read(), response.getheader("Content-Type", "")
        finally:
            conn.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    started: list[Serve] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Serve:
        started.append(Serve(tmp_path, *args, env=env))
        return started[-1]

    yield start
    for server in started:
        server.stop()
        print(f"--- roomcast serve on port {server.port} ---\n{server.log()[-6000:]}")


async def _visit(server: Serve) -> None:
    """What a few visitors do: pages, the favicon, a wrong URL, sockets opened and closed
    (one of them from a foreign origin, refused)."""
    for path, status in (("/chat/", 200), ("/chat/lobby/", 200), ("/nope", 404)):
        assert (await asyncio.to_thread(server.get, path))[0] == status, path
    status, body, content_type = await asyncio.to_thread(server.get, "/favicon.ico")
    assert (status, content_type) == (200, "image/png") and body.startswith(b"\x89PNG")
    url = f"ws://127.0.0.1:{server.port}/ws/chat/lobby/"
    for _ in range(3):
        async with websockets.connect(url, subprotocols=["roomcast.v1"], open_timeout=10) as ws:
            assert '"joined"' in str(await asyncio.wait_for(ws.recv(), 10))
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(url, additional_headers={"Origin": "https://evil.example"})


def _unexpected(log: str, *allowed: str) -> list[str]:
    patterns = [re.compile(p) for p in (*START_STOP_LINES, *allowed)]
    return [line for line in log.splitlines() if not any(p.fullmatch(line) for p in patterns)]


async def test_the_default_log_stays_at_the_start_up_lines(serve) -> None:
    server = serve()
    await _visit(server)
    # A last request that must log (an event that matters), so every line the visits
    # logged is in the file before it, then the shutdown lines.
    assert (await asyncio.to_thread(server.get, "/chat/", "192.0.2.7"))[0] == 400
    server.wait_for("192.0.2.7")
    log = server.stop()
    disallowed = r"\S+ \S+ ERROR django\.security\.DisallowedHost: .*"
    assert _unexpected(log, disallowed) == [], log
    assert "Traceback" not in log


async def test_debug_shows_each_connection_and_request(serve) -> None:
    """The same visits at --log-level debug: the lines the default run hides exist."""
    server = serve("--log-level", "debug")
    await _visit(server)
    for line in (
        "DEBUG:    connection open",
        "DEBUG:    connection rejected (403 Forbidden)",
        '"WebSocket /ws/chat/lobby/" [accepted]',
        '"WebSocket /ws/chat/lobby/" 403',
        "DEBUG django.request: Not Found: /nope",
        '"GET /favicon.ico HTTP/1.1" 200',  # the access log, on with debug
    ):
        server.wait_for(line)


async def test_access_log_adds_requests_sessions_and_refusals_only(serve) -> None:
    """--access-log: a line per request (with its room), per WebSocket session when it
    ends (with its room and user), per refused handshake; the accepted handshake's line
    and uvicorn's own request lines stay DEBUG."""
    server = serve("--access-log")
    await _visit(server)
    server.wait_for('"GET /favicon.ico" 200')
    server.wait_for('"WebSocket /ws/chat/lobby/" 403')
    log = server.stop()
    assert "connection open" not in log and "django.request" not in log, log
    assert "[accepted]" not in log and "HTTP/1.1" not in log, log
    requests = (
        r'\S+ \S+ INFO roomcast\.access: 127\.0\.0\.1 - "GET \S+" \d{3} in \d+\.\d{3} s'
        r"( room=\S+)?"
    )
    refusals = r'INFO: +127\.0\.0\.1:\d+ - "WebSocket /ws/chat/lobby/" 403'
    sessions = (
        r'\S+ \S+ INFO roomcast\.access: 127\.0\.0\.1:\d+ - "WebSocket /ws/chat/lobby/" '
        r"closed 1000 after \d+\.\d{3} s, 0 frames in room=lobby user=guest-\w+"
    )
    assert _unexpected(log, requests, refusals, sessions) == [], log
    assert len(re.findall(sessions, log)) == 3, log
    assert re.search(r'"GET /chat/lobby/" 200 in \d+\.\d{3} s room=lobby$', log, re.M), log
    assert re.search(r'"GET /nope" 404 in ', log), log


async def test_every_address_says_what_to_set_and_names_it_on_a_refused_host(serve) -> None:
    server = serve("--host", "0.0.0.0")
    hint = next(line for line in server.log().splitlines() if "ROOMCAST_ALLOWED_HOSTS" in line)
    assert hint.startswith("roomcast serve: listening on every address, but answering only")
    assert "set ROOMCAST_ALLOWED_HOSTS to the names clients use, e.g." in hint
    status, body, _ = await asyncio.to_thread(server.get, "/chat/", "192.0.2.7:8000")
    assert status == 400 and b"does not answer to the host name" in body, body
    assert b"192.0.2.7" not in body  # the client's text is not echoed
    server.wait_for("192.0.2.7")
    log = server.stop()
    (line,) = [line for line in log.splitlines() if "192.0.2.7" in line]
    assert line.endswith(
        "You may need to add '192.0.2.7' to ROOMCAST_ALLOWED_HOSTS (comma-separated) and "
        "restart roomcast serve."
    ), line
    assert "Traceback" not in log


async def test_a_single_host_address_is_answered(serve) -> None:
    """--host 127.0.0.2 (not in the defaults) answers requests for http://127.0.0.2:PORT/;
    with ROOMCAST_ALLOWED_HOSTS set, that list is exact."""
    server = serve("--host", "127.0.0.2")
    conn = http.client.HTTPConnection("127.0.0.2", server.port, timeout=10)
    conn.request("GET", "/chat/")
    assert conn.getresponse().status == 200
    conn.close()
    assert "ROOMCAST_ALLOWED_HOSTS" not in server.log()
    exact = serve("--host", "127.0.0.2", env={"ROOMCAST_ALLOWED_HOSTS": "chat.example.com"})
    conn = http.client.HTTPConnection("127.0.0.2", exact.port, timeout=10)
    conn.request("GET", "/chat/")
    assert conn.getresponse().status == 400
    conn.close()
