"""roomcast.client and ``roomcast listen`` with the stream's durable events on a real
``roomcast serve``: edits and deletes (live, replayed by since, printed by listen), read
cursors and unread counts across two sockets of one user, the user channel recovered
across a restart.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from roomcast.client import Connected, Delete, Edit, Message, Room, Unread, UserMessage, connect
from tests.e2e.test_cli_listen import listen, parsed
from tests.e2e.test_client_e2e import FAST, cli, messages, user_with_token, ws_url

pytestmark = pytest.mark.e2e


async def next_of(room: Room, kind: type, timeout: float = 20.0) -> object:
    """The next event of ``room`` of type ``kind`` (others skipped)."""
    async with asyncio.timeout(timeout):
        async for event in room:
            if isinstance(event, kind):
                return event
    raise AssertionError(f"{room.name!r} ended")


async def test_client_edits_and_deletes_live_replayed_and_printed(serve) -> None:
    """alice edits and deletes her message: bob's socket gets Edit and Delete at once,
    a client that reconnects with since replays them, history shows the final states,
    and listen prints them as edits and deletes."""
    server = serve()
    alice = await user_with_token(server, "alice")
    bob = await user_with_token(server, "bob")
    async with (
        listen(server, "lobby", "--json") as listener,
        connect(ws_url(server), token=alice) as mine,
        connect(ws_url(server), token=bob) as theirs,
    ):
        await listener.note("listening to 'lobby'")
        lobby = await mine.subscribe("lobby")
        seen = await theirs.subscribe("lobby")
        first = await lobby.send("tpyo")
        await lobby.send("keep")
        assert await lobby.edit(first, "typo fixed") == 3
        assert await lobby.delete(2) == 4
        edit = await next_of(seen, Edit)
        assert (edit.seq, edit.target, edit.text, edit.user) == (3, 1, "typo fixed", "alice")
        delete = await next_of(seen, Delete)
        assert (delete.seq, delete.target, delete.user) == (4, 2, "alice")
        page = await seen.history()
        finals = [m for m in page.messages if isinstance(m, Message)]
        assert [(m.seq, m.text, m.deleted, m.edited is not None) for m in finals] == [
            (1, "typo fixed", False, True),
            (2, "", True, False),
        ]
        frames = []
        while len(frames) < 4:
            frame = json.loads(await listener.line())
            if frame["type"] in ("message", "edit", "delete"):
                frames.append(frame)
        assert [(f["type"], f["seq"]) for f in frames] == [
            ("message", 1),
            ("message", 2),
            ("edit", 3),
            ("delete", 4),
        ]
        await listener.stop()
    async with connect(ws_url(server), token=bob) as later:
        replay = await later.subscribe("lobby", since=2)
        assert isinstance(await next_of(replay, Edit), Edit)
        assert isinstance(await next_of(replay, Delete), Delete)
    async with listen(server, "lobby", "--since", "0") as listener:
        lines = [await listener.line() for _ in range(4)]
        await listener.stop()
    assert parsed(lines[0])[1:] == ("alice", "typo fixed (edited)")
    assert parsed(lines[1])[1:] == ("alice", "(deleted)")
    assert lines[2].startswith("[3] ") and lines[2].endswith(" alice edited [1]: typo fixed")
    assert lines[3].startswith("[4] ") and lines[3].endswith(" alice deleted [2]")


async def test_client_unread_counts_across_two_sockets_of_one_user(serve) -> None:
    """bob posts; alice's two connections count unread; alice reads on one and both get
    the new count."""
    server = serve()
    alice = await user_with_token(server, "alice")
    bob = await user_with_token(server, "bob")
    async with (
        connect(ws_url(server), token=alice) as phone,
        connect(ws_url(server), token=alice) as laptop,
        connect(ws_url(server), token=bob) as other,
    ):
        on_phone = await phone.subscribe("lobby")
        on_laptop = await laptop.subscribe("lobby")
        posting = await other.subscribe("lobby")
        assert (on_phone.read_seq, on_phone.unread) == (0, 0)
        for n in range(3):
            await posting.send(f"m{n}")
        await messages(on_phone, 3)
        await messages(on_laptop, 3)
        assert on_phone.unread == on_laptop.unread == 3
        await on_phone.read(2)
        for room in (on_phone, on_laptop):
            unread = await next_of(room, Unread)
            assert (unread.read_seq, unread.unread) == (2, 1)
            assert (room.read_seq, room.unread) == (2, 1)
    async with connect(ws_url(server), token=alice) as again:
        lobby = await again.subscribe("lobby")
        assert (lobby.read_seq, lobby.unread) == (2, 1)


async def test_client_user_messages_recovered_across_a_restart(serve) -> None:
    """roomcast push --user reaches the user's connection; messages sent while the
    server was down come after the reconnect, once each."""
    server = serve()
    token = await user_with_token(server, "alice")
    async with connect(ws_url(server), token=token, **FAST) as conn:
        events = conn.user_messages()
        assert isinstance(await anext(events), Connected)
        await cli(server, "push", "--user", "alice", "export ready", "--server", server.http_url)
        got = await asyncio.wait_for(anext(events), 20)
        assert isinstance(got, UserMessage) and (got.seq, got.text) == (1, "export ready")
        await asyncio.to_thread(server.stop)
        code = (
            "from roomcast.push import send_to_user\n"
            "send_to_user('alice', 'while down')\n"
            "send_to_user('alice', {'kind': 'invoice', 'id': 7})\n"
        )
        await cli(server, "manage", "shell", "--no-imports", "-c", code)
        await asyncio.to_thread(server.start)
        reconnected = await asyncio.wait_for(anext(events), 30)
        assert isinstance(reconnected, Connected) and reconnected.recovered is True
        missed = [await asyncio.wait_for(anext(events), 20) for _ in range(2)]
        assert [(m.seq, m.text, m.data) for m in missed] == [  # type: ignore[union-attr]
            (2, "while down", None),
            (3, None, {"kind": "invoice", "id": 7}),
        ]
        assert conn.user_seq == 3
