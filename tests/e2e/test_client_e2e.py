"""roomcast.client against a real ``roomcast serve``: the /ws/ endpoint, restarts of the
server process, revocation, token expiry.

Users and tokens are made with the ``roomcast`` command, as an operator would; messages
stored while the server is down are stored by a third process (``roomcast manage
shell``) on the same data dir.
"""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import pytest

from roomcast.client import (
    ClosedError,
    Joined,
    Message,
    Room,
    Status,
    UnsubscribedError,
    connect,
)

pytestmark = pytest.mark.e2e

#: Reconnect backoff for tests: the restarted server is back within a second or two.
FAST: dict[str, Any] = {"min_delay": 0.05, "max_delay": 0.5}


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stderr)
    return result.stdout


async def cli(server: Any, *args: str) -> str:
    """Run ``roomcast ARGS`` against ``server``'s data dir; its standard output."""
    return ok(await asyncio.to_thread(server.cli, *args))


async def store(server: Any, room: str, *texts: str) -> None:
    """Store system messages in ``room`` from a third process (the server may be down)."""
    code = (
        "from roomcast.push import send_to_room\n"
        f"for text in {list(texts)!r}:\n"
        f"    send_to_room({room!r}, text)\n"
    )
    await cli(server, "manage", "shell", "--no-imports", "-c", code)


def ws_url(server: Any) -> str:
    return f"ws://127.0.0.1:{server.port}/ws/"


async def user_with_token(server: Any, name: str, *token_args: str) -> str:
    await cli(server, "user", "create", name)
    return (await cli(server, "token", name, *token_args)).strip()


async def messages(room: Room, count: int, timeout: float = 20.0) -> list[Message]:
    """The next ``count`` Message events of ``room`` (other events skipped)."""
    got: list[Message] = []
    async with asyncio.timeout(timeout):
        async for event in room:
            if isinstance(event, Message):
                got.append(event)
                if len(got) == count:
                    return got
    raise AssertionError(f"{room.name!r} ended after {got!r}")


async def test_client_rooms_sends_and_history_on_a_real_server(serve) -> None:
    """One connection in two rooms: sends are acked with their seqs, another user's
    message arrives in its room only, history pages come back oldest first."""
    server = serve()
    alice = await user_with_token(server, "alice")
    bob = await user_with_token(server, "bob")
    async with (
        connect(ws_url(server), token=alice) as conn,
        connect(ws_url(server), token=bob) as other,
    ):
        assert (conn.user, other.user) == ("alice", "bob")
        lobby = await conn.subscribe("lobby")
        board = await conn.subscribe("board")
        theirs = await other.subscribe("board")
        assert [await lobby.send(f"l{n}") for n in range(3)] == [1, 2, 3]
        assert await theirs.send("from bob") == 1
        assert await board.send("from alice") == 2
        got = await messages(board, 2)
        assert [(m.seq, m.user, m.text) for m in got] == [
            (1, "bob", "from bob"),
            (2, "alice", "from alice"),
        ]
        assert [m.text for m in await messages(lobby, 3)] == ["l0", "l1", "l2"]
        page = await lobby.history(limit=2)
        assert [m.seq for m in page.messages] == [2, 3] and page.has_more
        assert [m.text for m in await messages(theirs, 2)] == ["from bob", "from alice"]


async def test_client_recovers_across_a_server_restart_nothing_lost_or_doubled(serve) -> None:
    """The server process is stopped (1012) and started again on the same port while
    messages are stored by another process and this client sends: every room is
    resubscribed with its since, each missed message comes once, and the message sent
    while the server was down is stored once."""
    server = serve()
    token = await user_with_token(server, "alice")
    statuses: list[Status] = []
    async with connect(ws_url(server), token=token, on_status=statuses.append, **FAST) as conn:
        lobby = await conn.subscribe("lobby")
        board = await conn.subscribe("board")
        assert await lobby.send("one") == 1
        assert [m.text for m in await messages(lobby, 1)] == ["one"]
        await asyncio.to_thread(server.stop)
        await store(server, "lobby", "missed 1", "missed 2")
        await store(server, "board", "missed board")
        sent = asyncio.create_task(lobby.send("sent while down"))
        await asyncio.to_thread(server.start)
        assert await asyncio.wait_for(sent, 30) == 4
        got = await messages(lobby, 3)
        assert [(m.seq, m.text) for m in got] == [
            (2, "missed 1"),
            (3, "missed 2"),
            (4, "sent while down"),
        ]
        assert [(m.seq, m.text) for m in await messages(board, 1)] == [(1, "missed board")]
        await lobby.send("after")
        assert [m.text for m in await messages(lobby, 1)] == ["after"]
        page = await lobby.history()
        assert [m.text for m in page.messages] == [
            "one",
            "missed 1",
            "missed 2",
            "sent while down",
            "after",
        ]
    lost = [s for s in statuses if s.state == "reconnecting"]
    assert lost and lost[0].code == 1012 and lost[0].ever_open


async def test_client_recovered_false_when_the_gap_is_too_long(serve) -> None:
    """More messages missed than REPLAY_LIMIT: the room's Joined says recovered=False,
    and the latest HISTORY_COUNT messages follow."""
    server = serve(ROOMCAST_REPLAY_LIMIT="3", ROOMCAST_HISTORY_COUNT="2")
    async with connect(ws_url(server), **FAST) as conn:
        lobby = await conn.subscribe("lobby")
        await store(server, "lobby", "first")
        assert [m.seq for m in await messages(lobby, 1)] == [1]
        await asyncio.to_thread(server.stop)
        await store(server, "lobby", *(f"m{n}" for n in range(6)))
        await asyncio.to_thread(server.start)
        async with asyncio.timeout(30):
            async for event in lobby:
                if isinstance(event, Joined) and event.recovered is not None:
                    break
        assert event.recovered is False and event.seq == 7
        assert [m.seq for m in await messages(lobby, 2)] == [6, 7]


async def test_client_one_room_revoked_while_the_others_continue(serve) -> None:
    """alice is removed from a private room through the server: that subscription ends
    with 4403 (UnsubscribedError), the connection and its other room go on."""
    server = serve()
    token = await user_with_token(server, "alice")
    await cli(server, "room", "create", "board", "--private")
    await cli(server, "room", "members", "board", "add", "alice")
    async with connect(ws_url(server), token=token) as conn:
        lobby = await conn.subscribe("lobby")
        board = await conn.subscribe("board")
        assert await board.send("inside") == 1
        await cli(
            server, "room", "members", "board", "remove", "alice", "--server", server.http_url
        )
        with pytest.raises(UnsubscribedError) as info:
            async with asyncio.timeout(10):
                async for _ in board:
                    pass
        assert (info.value.room, info.value.code) == ("board", 4403)
        assert info.value.reason == "not allowed in this room any more"
        assert await lobby.send("still here") == 1
        assert [m.text for m in await messages(lobby, 1)] == ["still here"]
        with pytest.raises(UnsubscribedError) as again:
            await conn.subscribe("board")
        assert again.value.code == 4403


async def test_client_gets_fresh_tokens_when_they_expire(serve) -> None:
    """Tokens of 2 s: the server closes the socket with 4501 at each expiry, the client
    asks get_token for a new one and resubscribes with since; sends go on, each message
    stored and shown once."""
    server = serve()
    await cli(server, "user", "create", "alice")
    issued: list[str] = []

    async def get_token() -> str:
        token = (await cli(server, "token", "alice", "--ttl", "2")).strip()
        issued.append(token)
        return token

    async with connect(ws_url(server), get_token=get_token, **FAST) as conn:
        lobby = await conn.subscribe("lobby")
        sent = 0
        async with asyncio.timeout(60):
            while len(issued) < 3:
                sent += 1
                assert await lobby.send(f"m{sent}") == sent
                await asyncio.sleep(0.2)
        got = await messages(lobby, sent)
        assert [m.text for m in got] == [f"m{n}" for n in range(1, sent + 1)]
        assert [m.seq for m in got] == list(range(1, sent + 1))


async def test_client_refused_token_and_fixed_token_expiry(serve) -> None:
    """A forged token: ClosedError 4401 at connect. A fixed token that expires: the
    connection ends with 4501 (nothing to renew it with)."""
    server = serve()
    token = await user_with_token(server, "alice", "--ttl", "2")
    with pytest.raises(ClosedError) as refused:
        await connect(ws_url(server), token="forged")
    assert refused.value.code == 4401 and refused.value.reason == "invalid token"
    async with connect(ws_url(server), token=token, **FAST) as conn:
        with pytest.raises(ClosedError) as expired:
            async with asyncio.timeout(30):
                await conn.wait_closed()
    assert expired.value.code == 4501
