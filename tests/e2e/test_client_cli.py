"""``roomcast history`` and ``roomcast rooms`` against a real ``roomcast serve``: as a
user (a token) and with the API key, the pages, the refusals and their exit codes.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from typing import Any

import pytest

from roomcast.client import connect
from tests.e2e.test_client_e2e import cli, user_with_token, ws_url

pytestmark = pytest.mark.e2e

LINE = re.compile(r"^\[(\d+)\] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d (\S+): (.*)$")


async def run(server: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """``roomcast ARGS --server URL`` (TZ=UTC), whatever its exit code."""
    return await asyncio.to_thread(
        server.cli, *args, "--server", server.http_url, env={"TZ": "UTC"}
    )


async def test_history_pages_backwards_and_prints_oldest_first(serve) -> None:
    """history prints the last --limit messages oldest first, paging past the server's
    100 per request; --before and --json; an empty room prints nothing (a note on
    stderr)."""
    server = serve()
    texts = [f"m{n}" for n in range(1, 131)]
    code = (
        "from roomcast.push import send_to_room\n"
        f"for text in {texts!r}:\n"
        "    send_to_room('lobby', text)\n"
    )
    await cli(server, "manage", "shell", "--no-imports", "-c", code)
    result = await run(server, "history", "lobby")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 50
    assert [LINE.match(line).groups() for line in lines[:2]] == [  # type: ignore[union-attr]
        ("81", "system", "m81"),
        ("82", "system", "m82"),
    ]
    result = await run(server, "history", "lobby", "--limit", "120", "--json")
    frames = [json.loads(line) for line in result.stdout.splitlines()]
    assert [f["seq"] for f in frames] == list(range(11, 131))
    result = await run(server, "history", "lobby", "--limit", "3", "--before", "3")
    assert [LINE.match(line)[1] for line in result.stdout.splitlines()] == ["1", "2"]  # type: ignore[index]
    result = await run(server, "history", "empty")
    assert (result.returncode, result.stdout) == (0, "")
    assert result.stderr == "roomcast history: no messages in 'empty'\n"


async def test_history_as_a_user_reads_only_what_the_user_may(serve) -> None:
    """With --token: a room the user may read is printed (chat messages by their
    author); a private room they are not in is 404 (exit 2), a forged token 401
    (exit 2); no server: exit 1."""
    server = serve()
    alice = await user_with_token(server, "alice")
    bob = await user_with_token(server, "bob")
    await cli(server, "room", "create", "board", "--private")
    await cli(server, "room", "members", "board", "add", "alice")
    async with connect(ws_url(server), token=alice) as conn:
        board = await conn.subscribe("board")
        await board.send("secret plans")
        await board.send("\x1b[31mred\u202eevil")
    result = await run(server, "history", "board", "--token", alice)
    assert result.returncode == 0, result.stderr
    assert [LINE.match(line).groups() for line in result.stdout.splitlines()] == [  # type: ignore[union-attr]
        ("1", "alice", "secret plans"),
        ("2", "alice", "\\x1b[31mred\\u202eevil"),
    ]
    result = await run(server, "history", "board", "--token", bob)
    assert result.returncode == 2 and "answered 404" in result.stderr
    result = await run(server, "history", "board", "--token", "forged")
    assert result.returncode == 2
    assert "answered 401: the token was refused" in result.stderr
    await asyncio.to_thread(server.stop)
    result = await run(server, "history", "board", "--token", alice)
    assert result.returncode == 1 and "no roomcast server at" in result.stderr


async def test_rooms_lists_a_users_rooms_with_unread_counts(serve) -> None:
    """rooms: with a token, the token's user's rooms (the name asked of /ws/); with the
    API key, the rooms of --user; unread counts others' messages after the cursor;
    without a token or --user it says what to pass (exit 2)."""
    server = serve()
    alice = await user_with_token(server, "alice")
    bob = await user_with_token(server, "bob")
    await cli(server, "room", "create", "board", "--private")
    await cli(server, "room", "members", "board", "add", "alice", "bob")
    async with connect(ws_url(server), token=bob) as conn:
        board = await conn.subscribe("board")
        for n in range(3):
            await board.send(f"from bob {n}")
    async with connect(ws_url(server), token=alice) as conn:
        board = await conn.subscribe("board")
        await board.read(1)
    result = await run(server, "rooms", "--token", alice)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "ROOM   VISIBILITY  LAST  READ  UNREAD",
        "board  private        3     1       2",
    ]
    result = await run(server, "rooms", "--user", "alice", "--json")
    reply = json.loads(result.stdout)
    assert reply["user"] == "alice" and reply["rooms"] == [
        {"name": "board", "visibility": "private", "last_seq": 3, "read_seq": 1, "unread": 2}
    ]
    result = await run(server, "rooms", "--token", bob, "--user", "alice")
    assert result.returncode == 2 and "answered 404" in result.stderr
    result = await run(server, "rooms")
    assert result.returncode == 2 and "whose rooms?" in result.stderr
