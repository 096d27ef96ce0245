"""The README's "use it in your project" path, run for real: ``example/`` is a Django
project with roomcast in INSTALLED_APPS, its ``websocket_application()`` in asgi.py and
the Redis pub/sub layer; it is served by uvicorn, and a push from ``manage.py shell``
(another process) reaches a member through Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for_port

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

EXAMPLE = Path(__file__).resolve().parents[2] / "example"


@pytest.fixture
def example_env(tmp_path, redis_server, redis_prefix) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "mysite.settings",
        "REDIS_URL": redis_server.url,
        "REDIS_PREFIX": redis_prefix,
        "SQLITE_PATH": str(tmp_path / "db.sqlite3"),
    }
    manage = [sys.executable, "manage.py", "migrate", "--verbosity", "0"]
    subprocess.run(manage, cwd=EXAMPLE, env=env, check=True, timeout=60)
    return env


@pytest.fixture
def example_server(example_env) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "mysite.asgi:application",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=EXAMPLE,
        env=example_env,
    )
    try:
        wait_for_port(port, timeout=30, proc=proc)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_example_project_chats_and_takes_a_push_from_its_shell(
    example_server, example_env, clients
):
    room = "example room ☕"
    path = urllib.parse.quote(room, safe="")
    member = await clients(f"ws://127.0.0.1:{example_server}/ws/chat/{path}/")
    assert (await member.recv_type("joined"))["seq"] == 0
    code = (
        "from roomcast.push import send_to_room; "
        f"print(send_to_room({room!r}, 'from the shell').seq)"
    )
    shell = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "manage.py", "shell", "--no-imports", "-c", code],
        cwd=EXAMPLE,
        env=example_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.strip() == "1"
    pushed = (await member.messages(1))[0]
    assert (pushed["seq"], pushed["kind"], pushed["message"]) == (1, "system", "from the shell")
    await member.send({"type": "message", "message": "hello", "client_id": "c1"})
    assert (await member.recv_type("ack"))["seq"] == 2
    page = await asyncio.to_thread(
        urllib.request.urlopen, f"http://127.0.0.1:{example_server}/chat/{path}/", timeout=10
    )
    assert page.status == 200 and room in page.read().decode()
    script = await asyncio.to_thread(
        urllib.request.urlopen,
        f"http://127.0.0.1:{example_server}/static/roomcast/roomcast.js",
        timeout=10,
    )
    assert script.status == 200 and b"roomcast.v1" in script.read()
