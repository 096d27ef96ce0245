"""roomcast.client against the test double of /ws/ (tests/test_client_double.py).

Each test drives the client through the public API only. Waits are bounded by
``asyncio.timeout`` so a regression fails instead of hanging; nothing asserts on time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from roomcast.client import (
    MAX_QUEUED_SENDS,
    MAX_TOKEN_FAILURES,
    ClosedError,
    Connected,
    ConnectError,
    Delete,
    Edit,
    FrameTooLargeError,
    Join,
    Joined,
    Lagged,
    Message,
    Presence,
    QueueFullError,
    RefusedError,
    Room,
    Status,
    Typing,
    Unread,
    UnsubscribedError,
    UserMessage,
    connect,
)
from tests.test_client_double import DoubleServer, running_double, wait_for

#: Reconnect backoff for tests: short, so that a restart is recovered at once.
FAST: dict[str, Any] = {"min_delay": 0.01, "max_delay": 0.05}


@pytest.fixture
async def double() -> AsyncIterator[DoubleServer]:
    async with running_double() as server:
        yield server


async def next_event(room: Room, *kinds: type, timeout: float = 10.0) -> Any:
    """The next event of ``room`` of one of ``kinds`` (others are skipped)."""
    async with asyncio.timeout(timeout):
        async for event in room:
            if isinstance(event, kinds):
                return event
    raise AssertionError(f"{room.name!r} ended before a {kinds}")


async def messages(room: Room, count: int, timeout: float = 10.0) -> list[Message]:
    """The next ``count`` Message events of ``room``."""
    return [await next_event(room, Message, timeout=timeout) for _ in range(count)]


async def test_client_subscribes_several_rooms_sends_and_receives(double) -> None:
    """Two rooms on one connection: each send returns the stored seq, each room's
    iterator yields joined, its catch-up and its own live messages only."""
    double.hub.store("lobby", "before")
    token = double.token("alice")
    async with connect(double.url, token=token) as conn:
        assert conn.user == "alice" and conn.user_seq == 0
        lobby = await conn.subscribe("lobby")
        board = await conn.subscribe("board")
        assert set(conn.rooms) == {"lobby", "board"}
        joined = await next_event(lobby, Joined)
        assert (joined.seq, joined.recovered, joined.unread) == (1, None, 1)
        assert [m.text for m in await messages(lobby, 1)] == ["before"]
        assert await lobby.send("hello lobby") == 2
        assert await board.send("hello board") == 1
        await double.hub.post("board", "from bob", user="bob")
        mine = (await messages(lobby, 1))[0]
        assert (mine.seq, mine.text, mine.user, mine.kind) == (2, "hello lobby", "alice", "chat")
        assert mine.ts is not None and mine.ts.year == 2026
        assert [m.text for m in await messages(board, 2)] == ["hello board", "from bob"]
        assert (lobby.last_seq, board.last_seq) == (2, 2)


async def test_client_keeps_presence_from_presence_join_and_leave(double) -> None:
    """room.presence follows the presence snapshot, then join and leave frames."""
    alice, bob = double.token("alice"), double.token("bob")
    async with connect(double.url, token=alice) as conn:
        lobby = await conn.subscribe("lobby")
        snapshot = await next_event(lobby, Presence)
        assert dict(snapshot.users) == {"alice": 1} and dict(lobby.presence) == {"alice": 1}
        async with connect(double.url, token=bob) as other:
            await other.subscribe("lobby")
            assert (await next_event(lobby, Join)).user == "bob"
            assert dict(lobby.presence) == {"alice": 1, "bob": 1}
            assert lobby.presence_count == 2
            fetched = await lobby.fetch_presence()
            assert dict(fetched.users) == {"alice": 1, "bob": 1}
        await double.hub.broadcast("lobby", {"type": "leave", "room": "lobby", "user": "bob"})
        await wait_for(lambda: "bob" not in lobby.presence, "bob's leave")
        assert lobby.presence_count == 1


async def test_client_reconnects_after_a_restart_with_nothing_lost_or_doubled(double) -> None:
    """The server restarts (1012) while others post and this client sends: after the
    reconnect every room is resubscribed with its since, the missed messages come once
    each, and the message sent while down is stored once and acked."""
    statuses: list[Status] = []
    token = double.token("alice")
    async with connect(double.url, token=token, on_status=statuses.append, **FAST) as conn:
        lobby = await conn.subscribe("lobby")
        board = await conn.subscribe("board")
        assert await lobby.send("one") == 1
        await messages(lobby, 1)
        await double.stop()
        await wait_for(lambda: conn.status.state == "reconnecting", "reconnecting")
        double.hub.store("lobby", "missed 1")
        double.hub.store("lobby", "missed 2")
        double.hub.store("board", "missed board")
        pending = asyncio.create_task(lobby.send("sent while down"))
        await double.start()
        assert await asyncio.wait_for(pending, 10) == 4
        got = [m.text for m in await messages(lobby, 3)]
        assert got == ["missed 1", "missed 2", "sent while down"]
        board_events = [await next_event(board, Joined, Message) for _ in range(3)]
        assert [type(e).__name__ for e in board_events] == ["Joined", "Joined", "Message"]
        assert board_events[1].recovered is True and board_events[2].text == "missed board"
        subscribes = [f for f in double.hub.frames("subscribe") if f["room"] == "lobby"]
        assert subscribes[-1]["since"] == 1
        texts = [f["message"] for f in double.hub.rooms["lobby"]]
        assert texts == ["one", "missed 1", "missed 2", "sent while down"]
        assert [s.state for s in statuses][:2] == ["connecting", "open"]
        reconnecting = next(s for s in statuses if s.state == "reconnecting")
        assert reconnecting.code == 1012 and reconnecting.ever_open


async def test_client_resends_a_message_whose_ack_was_lost_and_it_is_stored_once(double) -> None:
    """The connection drops after the server stored a message but before its ack: the
    client sends it again with the same client_id after the catch-up; the server stores
    nothing new and the send returns the first seq."""
    double.hub.drop_after_store = 1
    async with connect(double.url, token=double.token("alice"), **FAST) as conn:
        lobby = await conn.subscribe("lobby")
        assert await asyncio.wait_for(lobby.send("once"), 10) == 1
        assert [f["message"] for f in double.hub.rooms["lobby"]] == ["once"]
        ids = {f["client_id"] for f in double.hub.frames("message")}
        assert len(ids) == 1


async def test_client_surfaces_recovered_false_and_starts_over(double) -> None:
    """A gap longer than the server replays: the room's Joined says recovered=False,
    last_seq starts over, and the latest messages follow."""
    async with connect(double.url, token=double.token("alice"), **FAST) as conn:
        lobby = await conn.subscribe("lobby")
        await lobby.send("first")
        await messages(lobby, 1)
        await double.stop()
        for n in range(10):
            double.hub.store("lobby", f"n{n}")
        await double.start()
        joined = await next_event(lobby, Joined)
        while joined.recovered is not False:
            joined = await next_event(lobby, Joined)
        assert joined.seq == 11
        assert [m.seq for m in await messages(lobby, 3)] == [9, 10, 11]
        assert lobby.last_seq == 11


async def test_client_since_on_subscribe_and_a_stream_behind_it(double) -> None:
    """subscribe(since=N) gets what came after N; a server whose stream is behind the
    client's since (a restored database) is reported as recovered=False."""
    for n in range(4):
        double.hub.store("lobby", f"m{n + 1}")
    async with connect(double.url) as conn:
        lobby = await conn.subscribe("lobby", since=2)
        assert (await next_event(lobby, Joined)).recovered is True
        assert [m.text for m in await messages(lobby, 2)] == ["m3", "m4"]
        ahead = await conn.subscribe("board", since=7)
        assert (await next_event(ahead, Joined)).recovered is False


async def test_client_one_room_revoked_while_others_continue(double) -> None:
    """4403 unsubscribed for one room ends that room's iteration with UnsubscribedError
    (and its sends); the other room keeps receiving and sending."""
    async with connect(double.url, token=double.token("alice")) as conn:
        lobby = await conn.subscribe("lobby")
        board = await conn.subscribe("board")
        await double.hub.revoke("alice", "board")
        with pytest.raises(UnsubscribedError) as info:
            async with asyncio.timeout(10):
                async for _ in board:
                    pass
        assert (info.value.code, info.value.room) == (4403, "board")
        assert "not allowed in this room any more" in str(info.value)
        assert board.ended and "board" not in conn.rooms
        with pytest.raises(UnsubscribedError):
            await board.send("still here?")
        assert await lobby.send("lobby goes on") == 1
        await double.hub.post("lobby", "and hears")
        assert [m.text for m in await messages(lobby, 2)] == ["lobby goes on", "and hears"]
        with pytest.raises(UnsubscribedError) as refused:
            await conn.subscribe("board")
        assert refused.value.code == 4403


async def test_client_token_refresh_on_4501_and_give_up_after_4401s(double) -> None:
    """get_token is asked first, again after 4501 (a fresh token, the rooms recovered),
    and after 4401; MAX_TOKEN_FAILURES refusals in a row end the connection with 4401."""
    issued: list[str] = []
    valid = True

    async def get_token() -> str:
        token = double.token("alice") if valid else f"refused-{len(issued)}"
        issued.append(token)
        return token

    async with connect(double.url, get_token=get_token, **FAST) as conn:
        lobby = await conn.subscribe("lobby")
        assert await lobby.send("before expiry") == 1
        await double.hub.close_all(4501, "token expired: reconnect with a new token")
        await wait_for(lambda: len(issued) == 2 and conn.status.state == "open", "a new token")
        assert await lobby.send("after") == 2
        assert [m.seq for m in await messages(lobby, 2)] == [1, 2]
        valid = False  # every token refused from now on
        await double.hub.close_all(4501, "token expired")
        with pytest.raises(ClosedError) as info:
            async with asyncio.timeout(10):
                await conn.wait_closed()
    assert info.value.code == 4401
    assert f"({MAX_TOKEN_FAILURES} times in a row)" in info.value.reason
    assert len(issued) == 2 + MAX_TOKEN_FAILURES


async def test_client_get_token_failures_end_with_its_reason(double) -> None:
    """A get_token that raises or gives no token counts as a failure; five in a row end
    the first connection with ClosedError 4401 naming the failure."""
    calls = 0

    def broken() -> str:
        nonlocal calls
        calls += 1
        raise RuntimeError("HTTP 500")

    with pytest.raises(ClosedError) as info:
        async with connect(double.url, get_token=broken, **FAST):
            pass
    assert info.value.code == 4401 and calls == MAX_TOKEN_FAILURES
    assert (
        info.value.reason
        == f"could not get a token: HTTP 500 ({MAX_TOKEN_FAILURES} times in a row)"
    )


async def test_client_fixed_token_stops_on_4501_and_4401(double) -> None:
    """Without get_token a token that expired (4501) or is refused (4401) ends the
    connection: the same token would be refused again."""
    token = double.token("alice")
    async with connect(double.url, token=token, **FAST) as conn:
        lobby = await conn.subscribe("lobby")
        await double.hub.close_all(4501, "token expired: reconnect with a new token")
        with pytest.raises(ClosedError) as info:
            async for _ in lobby:
                pass
        assert info.value.code == 4501
        with pytest.raises(ClosedError):
            await lobby.send("too late")
    with pytest.raises(ClosedError) as refused:
        await connect(double.url, token="forged")
    assert (refused.value.code, refused.value.reason) == (4401, "invalid token")


async def test_client_non_reconnect_code_ends_everything_with_code_and_reason(double) -> None:
    """4000 (disconnected by the server) ends the connection: iterators, waiting sends
    and wait_closed raise ClosedError carrying the code and reason."""
    conn = await connect(double.url, token=double.token("alice"), **FAST)
    lobby = await conn.subscribe("lobby")
    user_events = conn.user_messages()
    assert isinstance(await anext(user_events), Connected)
    await double.hub.close_all(4000, "banned for spam")
    with pytest.raises(ClosedError) as info:
        await conn.wait_closed()
    assert (info.value.code, info.value.reason) == (4000, "banned for spam")
    assert str(info.value) == "disconnected by the server: banned for spam (4000)"
    with pytest.raises(ClosedError):
        async for _ in lobby:
            pass
    with pytest.raises(ClosedError):
        await anext(user_events)
    assert conn.status.state == "closed" and conn.status.code == 4000
    await conn.close()


async def test_client_first_connection_to_nothing_raises_connect_error() -> None:
    """No server at the URL: ConnectError at once, naming the URL."""
    from tests.conftest import free_port

    url = f"ws://127.0.0.1:{free_port()}/ws/"
    with pytest.raises(ConnectError) as info:
        await connect(url)
    assert url in str(info.value)


async def test_client_retries_busy_and_rate_limited_then_refuses(double) -> None:
    """busy and rate_limited answers are sent again (same client_id) and stored once;
    more than SEND_RETRIES_MAX in a row, or forbidden, raise RefusedError."""
    async with connect(double.url, token=double.token("alice")) as conn:
        lobby = await conn.subscribe("lobby")
        double.hub.refuse_posts = ["busy", "rate_limited"]
        assert await lobby.send("eventually") == 1
        ids = [f["client_id"] for f in double.hub.frames("message")]
        assert len(ids) == 3 and len(set(ids)) == 1
        double.hub.refuse_posts = ["rate_limited"] * 4
        with pytest.raises(RefusedError) as info:
            await lobby.send("never")
        assert info.value.code == "rate_limited" and info.value.retry_after == 0.05
        double.hub.refuse_posts = ["forbidden"]
        with pytest.raises(RefusedError) as forbidden:
            await lobby.send("no")
        assert forbidden.value.code == "forbidden" and forbidden.value.room == "lobby"
        assert [f["message"] for f in double.hub.rooms["lobby"]] == ["eventually"]


async def test_client_bounds_sends_and_frame_size(double) -> None:
    """While disconnected at most MAX_QUEUED_SENDS sends of a room wait (then
    QueueFullError; another room still queues; the queued ones are all stored after the
    reconnect); a frame over max_frame_bytes is refused before sending."""
    async with connect(
        double.url, token=double.token("alice"), max_frame_bytes=200, **FAST
    ) as conn:
        lobby = await conn.subscribe("lobby")
        board = await conn.subscribe("board")
        with pytest.raises(FrameTooLargeError) as big:
            await lobby.send("x" * 200)
        assert big.value.limit == 200
        await double.stop()
        await wait_for(lambda: conn.status.state == "reconnecting", "reconnecting")
        waiting = [asyncio.create_task(lobby.send(f"q{n}")) for n in range(MAX_QUEUED_SENDS)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            await lobby.send("one too many")
        other = asyncio.create_task(board.send("another room's queue"))
        await double.start()
        seqs = await asyncio.wait_for(asyncio.gather(*waiting), 30)
        assert seqs == list(range(1, MAX_QUEUED_SENDS + 1))
        assert await asyncio.wait_for(other, 10) == 1


async def test_client_lagged_when_the_program_does_not_read(double) -> None:
    """A room whose events are not read keeps the newest max_queued_events; the next
    read says how many were dropped, then the newest follow."""
    async with connect(double.url, token=double.token("alice"), max_queued_events=5) as conn:
        lobby = await conn.subscribe("lobby")
        for n in range(10):
            await double.hub.post("lobby", f"m{n}")
        await wait_for(lambda: lobby.last_seq == 10, "the last message")
        lagged = await anext(lobby)
        assert isinstance(lagged, Lagged) and lagged.room == "lobby"
        assert lagged.dropped == 2 + 10 - 5  # joined, presence and 10 messages, 5 kept
        assert [m.text for m in await messages(lobby, 5)] == [f"m{n}" for n in range(5, 10)]


async def test_client_user_messages_recover_with_since(double) -> None:
    """User messages come once each, also those sent while the connection was down
    (reconnect with ?since=); each connection begins with a Connected event."""
    token = double.token("alice")
    async with connect(double.url, token=token, **FAST) as conn:
        events = conn.user_messages()
        assert (await anext(events)).user_seq == 0
        await double.hub.send_to_user("alice", "export ready")
        got = await anext(events)
        assert isinstance(got, UserMessage) and (got.seq, got.text) == (1, "export ready")
        await double.stop()
        await double.hub.send_to_user("alice", "while down")
        await double.start()
        reconnected = await anext(events)
        assert isinstance(reconnected, Connected) and reconnected.recovered is True
        missed = await anext(events)
        assert isinstance(missed, UserMessage) and missed.text == "while down"
        assert conn.user_seq == 2


async def test_client_history_pages_and_refusals_match_their_requests(double) -> None:
    """history() returns pages oldest first with has_more; a refused typing frame before
    it is not taken for the history's answer; a refused history raises RefusedError."""
    for n in range(5):
        double.hub.store("lobby", f"m{n + 1}")
    async with connect(double.url, token=double.token("alice")) as conn:
        lobby = await conn.subscribe("lobby")
        page = await lobby.history(limit=2)
        assert [m.seq for m in page.messages] == [4, 5] and page.has_more
        older = await lobby.history(before=4, limit=10)
        assert [m.text for m in older.messages] == ["m1", "m2", "m3"] and not older.has_more
        double.hub.refuse_typing = True
        await lobby.typing()
        again = await lobby.history(limit=1)
        assert [m.seq for m in again.messages] == [5]
        assert not lobby.may_type
        double.hub.refuse_history = ["forbidden"]
        with pytest.raises(RefusedError) as info:
            await lobby.history()
        assert info.value.code == "forbidden"
        with pytest.raises(ValueError):
            await lobby.history(limit=101)


async def test_client_edits_deletes_and_unread(double) -> None:
    """edit and delete return their events' seqs; every member sees Edit and Delete;
    unread counts others' live messages and drops deleted ones; read() moves the
    cursor and the server's unread frame sets the count."""
    async with connect(double.url, token=double.token("alice")) as conn:
        lobby = await conn.subscribe("lobby")
        assert (lobby.read_seq, lobby.unread) == (0, 0)
        first = await lobby.send("tpyo")
        assert await lobby.edit(first, "typo") == 2
        edit = await next_event(lobby, Edit)
        assert (edit.target, edit.text, edit.user) == (1, "typo", "alice")
        await double.hub.post("lobby", "from bob 1", user="bob")
        await double.hub.post("lobby", "from bob 2", user="bob")
        await wait_for(lambda: lobby.last_seq == 4, "bob's messages")
        assert lobby.unread == 2
        assert await lobby.delete(3) == 5
        delete = await next_event(lobby, Delete)
        assert delete.target == 3 and lobby.unread == 1
        page = await lobby.history()
        assert [(m.seq, type(m).__name__) for m in page.messages][:3] == [
            (1, "Message"),
            (2, "Edit"),
            (3, "Message"),
        ]
        assert page.messages[0].edited is not None and page.messages[2].deleted
        await lobby.read(4)
        unread = await next_event(lobby, Unread)
        assert (unread.read_seq, unread.unread) == (4, 0)
        assert (lobby.read_seq, lobby.unread) == (4, 0)
        with pytest.raises(RefusedError) as missing:
            await lobby.edit(99, "nothing there")
        assert missing.value.code == "not_found"


async def test_client_typing_is_forwarded_and_throttled(double) -> None:
    """typing() reaches the other members as a Typing event; calls within
    TYPING_RESEND_SECS send nothing more."""
    async with (
        connect(double.url, token=double.token("alice")) as alice,
        connect(double.url, token=double.token("bob")) as bob,
    ):
        mine = await alice.subscribe("lobby")
        theirs = await bob.subscribe("lobby")
        for _ in range(5):
            await mine.typing()
        typing = await next_event(theirs, Typing)
        assert typing.user == "alice"
        await mine.send("done typing")
        await messages(theirs, 1)
        assert len(double.hub.frames("typing")) == 1


async def test_client_guest_has_no_cursor_and_close_ends_iteration(double) -> None:
    """A guest connection (no token) reads and is refused read() locally; close() ends
    iterators without an error and fails later calls with ClosedError(1000)."""
    conn = await connect(double.url)
    assert conn.guest and conn.user is not None and conn.user.startswith("guest-")
    lobby = await conn.subscribe("lobby")
    with pytest.raises(RefusedError):
        await lobby.read(1)
    await conn.close()
    assert [e async for e in lobby if not isinstance(e, Joined | Presence)] == []
    with pytest.raises(ClosedError) as info:
        await lobby.send("after close")
    assert info.value.code == 1000
    await conn.wait_closed()


async def test_client_unsubscribe_and_subscribe_again(double) -> None:
    """unsubscribe() ends the room's iteration cleanly and frees the name; subscribing
    again works, and the late 'unsubscribed' answer does not end the new room."""
    async with connect(double.url, token=double.token("alice")) as conn:
        lobby = await conn.subscribe("lobby")
        await lobby.unsubscribe()
        assert lobby.ended and "lobby" not in conn.rooms
        again = await conn.subscribe("lobby")
        assert await again.send("back") == 1
        assert not again.ended
        with pytest.raises(ValueError):
            await conn.subscribe("lobby")


async def test_client_checks_arguments_before_sending(double) -> None:
    """Bad room names, texts, seqs and URLs raise ValueError / TypeError."""
    with pytest.raises(ValueError):
        connect("ftp://example.com/ws/")
        await connect("ftp://example.com/ws/")
    with pytest.raises(ValueError):
        await connect(f"{double.url}?token=abc")
    async with connect(double.url.replace("ws://", "http://")) as conn:
        with pytest.raises(ValueError):
            await conn.subscribe("a/b")
        lobby = await conn.subscribe("  café  ")
        assert lobby.name == "café"
        with pytest.raises(ValueError):
            await lobby.send("")
        with pytest.raises(ValueError):
            await lobby.send("nul\x00")
        with pytest.raises(TypeError):
            await lobby.send(b"bytes")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await lobby.edit(0, "x")


async def test_client_subscribes_again_after_rate_limited_and_1011(double) -> None:
    """A subscribe answered rate_limited (ROOM_REQUESTS_PER_SOCKET) or unsubscribed 1011
    (database down) is sent again; one refused otherwise fails subscribe()."""
    double.hub.refuse_subscribes = ["rate_limited", 1011]
    async with connect(double.url, token=double.token("alice"), **FAST) as conn:
        lobby = await asyncio.wait_for(conn.subscribe("lobby"), 10)
        assert lobby.joined
        assert len([f for f in double.hub.frames("subscribe") if f["room"] == "lobby"]) == 3
        double.hub.refuse_subscribes = ["invalid_frame"]
        with pytest.raises(RefusedError) as info:
            await conn.subscribe("board")
        assert info.value.code == "invalid_frame" and "board" not in conn.rooms


async def test_client_ignores_frames_it_cannot_read(double, caplog) -> None:
    """Frames that are not JSON, nested too deeply, not objects, or missing fields are
    logged and skipped; the connection goes on."""
    async with connect(double.url, token=double.token("alice")) as conn:
        lobby = await conn.subscribe("lobby")
        socket = double.hub.sockets[0]
        for text in ("not json", "[" * 5000, "[1, 2]", '{"type": "message", "room": "lobby"}',
                     '{"type": "joined", "room": "lobby", "seq": -1}',
                     '{"type": "history", "room": "lobby", "messages": 7}',
                     '{"type": "unsubscribed", "room": "lobby", "code": "x"}',
                     '{"type": "user_message", "seq": "one"}'):  # fmt: skip
            await socket.ws.send(text)
        assert await lobby.send("still fine") == 1
        assert conn.status.state == "open" and not lobby.ended
    assert "not JSON" in caplog.text
