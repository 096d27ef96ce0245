"""``roomcast listen`` against a real ``roomcast serve``: what it prints, how it recovers
across a restart of the server process, how it stops and with which exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest

from roomcast.client import connect
from tests.e2e.conftest import ROOMCAST
from tests.e2e.test_client_e2e import cli, store, user_with_token, ws_url

pytestmark = pytest.mark.e2e

#: A line of `roomcast listen` for a message: [seq] date time user: text (TZ=UTC).
LINE = re.compile(r"^\[(\d+)\] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d (\S+): (.*)$")


class Listener:
    """A running ``roomcast listen`` process: its output lines as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.errors: list[str] = []
        self._stderr = asyncio.create_task(self._read_stderr())

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.errors.append(line.decode().rstrip("\n"))

    async def line(self, timeout: float = 30.0) -> str:
        """The next line of standard output (failing at its end)."""
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        assert raw, f"listen ended; stderr: {self.errors}"
        return raw.decode().rstrip("\n")

    async def note(self, text: str, timeout: float = 30.0) -> str:
        """Wait for a line of standard error containing ``text``."""
        async with asyncio.timeout(timeout):
            while not any(text in line for line in self.errors):  # noqa: ASYNC110 - polls a list
                await asyncio.sleep(0.02)
        return next(line for line in self.errors if text in line)

    async def stop(self, signum: int = signal.SIGINT) -> tuple[int, str]:
        """Send ``signum``; the exit code and what standard output still printed."""
        self.proc.send_signal(signum)
        return await self.ended()

    async def ended(self) -> tuple[int, str]:
        """Wait for the process to end: its exit code and the rest of standard output."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(30):
            rest = await self.proc.stdout.read()
            code = await self.proc.wait()
            await self._stderr
        return code, rest.decode()


@contextlib.asynccontextmanager
async def listen(server: Any, *args: str, **env: str) -> AsyncIterator[Listener]:
    """Run ``roomcast listen ARGS --server URL`` with ``server``'s data dir."""
    environ = {**os.environ, "ROOMCAST_DATA_DIR": str(server.data_dir), **server.env, "TZ": "UTC"}
    environ.pop("DJANGO_SETTINGS_MODULE", None)
    environ.update(env)
    proc = await asyncio.create_subprocess_exec(
        ROOMCAST,
        "listen",
        *args,
        "--server",
        server.http_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
        cwd=server.data_dir,
    )
    listener = Listener(proc)
    try:
        yield listener
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def parsed(line: str) -> tuple[int, str, str]:
    match = LINE.match(line)
    assert match, f"not a message line: {line!r}"
    return int(match[1]), match[2], match[3]


async def test_listen_prints_messages_and_recovers_across_a_restart(serve) -> None:
    """listen prints each message once, as they come: before, while the server is
    restarted (stored meanwhile by another process) and after; says on stderr that the
    connection was lost and is back; Ctrl-C ends it with exit code 0."""
    server = serve()
    token = await user_with_token(server, "alice")
    async with listen(server, "lobby") as listener:
        await listener.note("listening to 'lobby'")
        await cli(server, "push", "lobby", "hello", "--server", server.http_url)
        assert parsed(await listener.line()) == (1, "system", "hello")
        async with connect(ws_url(server), token=token) as conn:
            lobby = await conn.subscribe("lobby")
            await lobby.send("two\nlines")
        assert parsed(await listener.line()) == (2, "alice", "two")
        assert await listener.line() == "    lines"
        await asyncio.to_thread(server.stop)
        await listener.note("connection lost (server restarting")
        await store(server, "lobby", "while down 1", "while down 2")
        await asyncio.to_thread(server.start)
        assert parsed(await listener.line()) == (3, "system", "while down 1")
        assert parsed(await listener.line()) == (4, "system", "while down 2")
        await listener.note("back in 'lobby'")
        await cli(server, "push", "lobby", "after", "--server", server.http_url)
        assert parsed(await listener.line()) == (5, "system", "after")
        code, rest = await listener.stop(signal.SIGINT)
    assert code == 0 and rest == ""
    assert "Traceback" not in "\n".join(listener.errors)


async def test_listen_json_since_and_sigterm(serve) -> None:
    """--since N starts after N, --json prints each frame as one JSON object (joined
    first); SIGTERM stops it with exit code 0."""
    server = serve()
    for text in ("a", "b", "c"):
        await cli(server, "push", "lobby", text, "--server", server.http_url)
    async with listen(server, "lobby", "--since", "1", "--json") as listener:
        joined = json.loads(await listener.line())
        assert joined == {"type": "joined", "room": "lobby", "seq": 3, "recovered": True}
        frames = [json.loads(await listener.line()) for _ in range(2)]
        assert [(f["type"], f["seq"], f["message"]) for f in frames] == [
            ("message", 2, "b"),
            ("message", 3, "c"),
        ]
        code, _ = await listener.stop(signal.SIGTERM)
    assert code == 0


async def test_listen_as_a_user_ends_when_removed_from_the_room(serve) -> None:
    """--user NAME takes tokens from the server's API; removed from the private room,
    listen ends with exit code 2 and says why."""
    server = serve()
    await cli(server, "user", "create", "alice")
    await cli(server, "room", "create", "board", "--private")
    await cli(server, "room", "members", "board", "add", "alice")
    async with listen(server, "board", "--user", "alice") as listener:
        assert "as alice" in await listener.note("listening to 'board'")
        await cli(
            server, "room", "members", "board", "remove", "alice", "--server", server.http_url
        )
        code, _ = await listener.ended()
    assert code == 2
    assert listener.errors[-1] == (
        "roomcast listen: 'board': not allowed in this room any more (4403)"
    )


async def test_listen_exit_codes_for_refusals_and_no_server(serve) -> None:
    """A guest in a private room and a forged token: exit code 2 with the reason; no
    server at --server: exit code 1."""
    server = serve()
    await cli(server, "room", "create", "board", "--private")
    async with listen(server, "board") as listener:
        code, _ = await listener.ended()
    assert code == 2 and listener.errors[-1] == (
        "roomcast listen: 'board': not allowed in this room (4403)"
    )
    async with listen(server, "lobby", "--token", "forged") as listener:
        code, _ = await listener.ended()
    assert code == 2 and listener.errors[-1].endswith("not authorized: invalid token (4401)")
    await asyncio.to_thread(server.stop)
    async with listen(server, "lobby") as listener:
        code, _ = await listener.ended()
    assert code == 1 and "cannot connect to ws://127.0.0.1:" in listener.errors[-1]
