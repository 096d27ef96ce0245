"""connection.js against a scripted /ws/ server (Playwright's ``route_web_socket``) that plays
docs/protocol.md's "One socket, many rooms" exactly: the client's side of it pinned down,
including what a real server makes hard to provoke on purpose (a refused subscribe
with 1011, ``too_many_subscriptions``, the counting of unread, the typing throttle).
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page, WebSocketRoute, async_playwright, expect

from tests.e2e.conftest import launch
from tests.e2e.test_browser import WAIT_MS
from tests.e2e.test_browser_auth import CLIENT_JS
from tests.e2e.test_browser_mux import events_of, logs, mux_page, start, wait_js, wait_rows

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

ORIGIN = "http://roomcast.test"
SOCKET_URL = "ws://roomcast.test/ws/"
FAST = {"minDelayMs": 10, "maxDelayMs": 40}
CONNECTION_JS = CLIENT_JS.with_name("connection.js")
CONNECTED_TWICE = "events.filter(([room, type]) => !room && type === 'connected').length === 2"


class Socket:
    """One socket the page opened: what it sent, and the rooms it is subscribed to."""

    def __init__(self, ws: WebSocketRoute) -> None:
        self.ws = ws
        self.url = ws.url
        self.frames: list[dict[str, Any]] = []
        self.rooms: set[str] = set()
        self.open = True
        self.silent = False  # a server that stopped answering: frames read, nothing sent

    def send(self, frame: dict[str, Any]) -> None:
        if self.open and not self.silent:
            self.ws.send(json.dumps(frame))


class ScriptedMux:
    """The server's side of /ws/ for one user, on per-room lists of stored events.

    ``refuse[room]`` holds close codes to answer the room's next subscribes with;
    ``unread_at_join`` is the count ``joined`` gives.
    """

    def __init__(self, user: str = "alice") -> None:
        self.user = user
        self.streams: dict[str, list[dict[str, Any]]] = {}
        self.user_stream: list[dict[str, Any]] = []
        self.sockets: list[Socket] = []
        self.refuse: dict[str, list[int]] = {}
        self.unread_at_join = 0
        self.max_rooms = 100
        self.rate_limited: dict[str, int] = {}  # room -> subscribes to answer rate_limited
        self.replay_limit = 500  # further behind: recovered false, the latest 50
        self._tasks: set[asyncio.Task[None]] = set()

    async def install(self, page: Page) -> None:
        await page.route_web_socket(re.compile(r"^ws://roomcast\.test/"), self.handle)

    @property
    def last(self) -> Socket:
        return self.sockets[-1]

    def handle(self, ws: WebSocketRoute) -> None:
        socket = Socket(ws)
        self.sockets.append(socket)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(ws.url).query)
        since = int(query["since"][0]) if "since" in query else None
        socket.send(
            {
                "type": "connected",
                "user": self.user,
                "user_seq": len(self.user_stream),
                "recovered": True,
            }
        )
        for frame in self.user_stream[since or 0 :]:
            socket.send(frame)
        ws.on_message(lambda message: self.on_frame(socket, json.loads(message)))
        ws.on_close(lambda code, reason: setattr(socket, "open", False))

    def on_frame(self, socket: Socket, frame: dict[str, Any]) -> None:
        socket.frames.append(frame)
        kind, room = frame.get("type"), frame.get("room")
        if kind == "subscribe":
            if len(socket.rooms) >= self.max_rooms:
                socket.send(
                    {
                        "type": "error",
                        "room": room,
                        "code": "too_many_subscriptions",
                        "detail": f"at most {self.max_rooms} rooms per socket",
                    }
                )
                return
            if self.rate_limited.get(room):
                self.rate_limited[room] -= 1
                socket.send(
                    {
                        "type": "error",
                        "code": "rate_limited",
                        "room": room,
                        "retry_after": 0.05,
                        "detail": "too many room requests",
                    }
                )
                return
            if self.refuse.get(room):
                code = self.refuse[room].pop(0)
                socket.send({"type": "unsubscribed", "room": room, "code": code, "reason": "x"})
                return
            socket.rooms.add(room)
            stream = self.streams.setdefault(room, [])
            since = frame.get("since")
            recovered = since is None or len(stream) - since <= self.replay_limit
            if not recovered:
                since = max(0, len(stream) - 50)
            socket.send(
                {
                    "type": "joined",
                    "room": room,
                    "seq": len(stream),
                    "recovered": recovered,
                    "read_seq": 0,
                    "unread": self.unread_at_join,
                }
            )
            for event in stream[since or 0 :]:
                socket.send(event)
            socket.send(
                {
                    "type": "presence",
                    "room": room,
                    "users": [{"user": self.user, "connections": 1}],
                    "count": 1,
                    "anonymous": 0,
                    "truncated": False,
                }
            )
        elif kind == "ping":
            socket.send({"type": "pong"})
        elif kind == "unsubscribe":
            socket.rooms.discard(room)
            socket.send(
                {"type": "unsubscribed", "room": room, "code": 1000, "reason": "unsubscribed"}
            )
        elif kind in ("message", "edit", "delete"):
            fields = {"message": frame["message"]} if kind == "message" else {}
            if kind != "message":
                fields = {
                    "target": frame["seq"],
                    **({"message": frame["message"]} if kind == "edit" else {}),
                }
            seq = self.store(room, kind, user=self.user, client_id=frame["client_id"], **fields)
            socket.send({"type": "ack", "room": room, "client_id": frame["client_id"], "seq": seq})

    def store(self, room: str, kind: str = "message", **fields: Any) -> int:
        """Store an event in ``room`` and send it to the sockets subscribed."""
        stream = self.streams.setdefault(room, [])
        frame = {"type": kind, "room": room, "seq": len(stream) + 1, **fields}
        if kind == "message":
            frame.setdefault("kind", "chat" if fields.get("user") else "system")
        stream.append(frame)
        self.broadcast(room, frame)
        return int(frame["seq"])

    def broadcast(self, room: str, frame: dict[str, Any]) -> None:
        for socket in self.sockets:
            if room in socket.rooms:
                socket.send(frame)

    def close(self, socket: Socket, code: int, reason: str = "") -> None:
        socket.open = False
        task = asyncio.ensure_future(socket.ws.close(code=code, reason=reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def sent(self, kind: str, socket: Socket | None = None) -> list[dict[str, Any]]:
        """Frames of type ``kind`` the page sent (on ``socket``, or on any)."""
        sockets = [socket] if socket else self.sockets
        return [f for s in sockets for f in s.frames if f.get("type") == kind]


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await launch(playwright)
        yield browser
        await browser.close()


async def scripted(browser: Browser, errors: list[str]) -> tuple[Page, ScriptedMux]:
    server = ScriptedMux()
    page = await mux_page(
        browser,
        ORIGIN,
        errors,
        **{
            "/static/roomcast/roomcast.js": CLIENT_JS.read_text(),
            "/static/roomcast/connection.js": CONNECTION_JS.read_text(),
        },
    )
    await server.install(page)
    return page, server


async def test_scripted_reconnect_resubscribes_every_room_with_its_since(
    chromium: Browser,
) -> None:
    """A dropped socket: the new one carries ?since= the user channel's seq, each room is
    subscribed again with its own last seq, and nothing is shown twice or lost."""
    errors: list[str] = []
    page, server = await scripted(chromium, errors)
    server.store("a", message="a1")
    server.user_stream.append({"type": "user_message", "seq": 1, "message": "n1"})
    await start(page, ["a", "b", "c"], url=SOCKET_URL, **FAST)
    await wait_js(page, "conn.subscriptions.every((s) => s.state === 'subscribed')")
    assert [f.get("since") for f in server.sent("subscribe")] == [None, None, None]
    assert await page.evaluate("subs.b.send('b1')") == 1
    server.store("c", message="c1")
    server.store("c", message="c2")
    await wait_rows(page, "c", 2)

    server.close(server.last, 1012, "server restarting")
    # From the events, not conn.status: with FAST's 10-40 ms backoff the reconnect can be
    # over between two polls of the page (it was, once, in CI).
    await wait_js(
        page,
        "events.some(([r, t, d]) => t === 'status' && d.status === 'reconnecting'"
        " && d.code === 1012)",
    )
    await wait_js(page, "conn.status === 'open' && subs.c.state === 'subscribed'")
    assert server.last.url == SOCKET_URL + "?since=1"
    assert {f["room"]: f.get("since") for f in server.sent("subscribe", server.last)} == {
        "a": 1,
        "b": 1,
        "c": 2,
    }
    server.store("a", message="a2")
    await wait_rows(page, "a", 2)
    assert await logs(page) == {
        "a": [[1, "a", "a1", ""], [2, "a", "a2", ""]],
        "b": [[1, "b", "b1", ""]],
        "c": [[1, "c", "c1", ""], [2, "c", "c2", ""]],
    }
    assert [d["seq"] for d in await events_of(page, "", "user_message")] == [1]
    assert errors == []


async def test_scripted_heartbeat_pings_a_quiet_server_and_drops_a_dead_socket(
    chromium: Browser,
) -> None:
    """Nothing from the server for heartbeatMs: a ping, and a pong keeps the socket. A
    server that stops answering: heartbeatTimeoutMs after the ping the socket is taken
    for dead, reconnected (status says why) and every room resubscribed with its since."""
    errors: list[str] = []
    page, server = await scripted(chromium, errors)
    server.store("a", message="a1")
    await start(page, ["a"], url=SOCKET_URL, heartbeatMs=300, heartbeatTimeoutMs=300, **FAST)
    await wait_js(page, "subs.a.state === 'subscribed'")
    first = server.last
    for _ in range(100):  # a quiet server is pinged, answers, and keeps the socket
        if len(server.sent("ping", first)) >= 3:
            break
        await asyncio.sleep(0.05)
    assert len(server.sent("ping", first)) >= 3 and len(server.sockets) == 1
    assert await page.evaluate("conn.status") == "open"

    first.silent = True  # no more pongs, nor anything else
    reason = await wait_js(
        page,
        "events.find(([r, t, d]) => t === 'status' && d.status === 'reconnecting'"
        " && d.code === 1006)?.[2].reason",
    )
    assert reason == "no answer from the server for 1 s"
    await wait_js(page, "conn.status === 'open' && subs.a.state === 'subscribed'")
    assert len(server.sockets) == 2 and server.last is not first
    assert [f.get("since") for f in server.sent("subscribe", server.last)] == [1]
    server.store("a", message="a2")
    await wait_rows(page, "a", 2)
    assert (await logs(page))["a"] == [[1, "a", "a1", ""], [2, "a", "a2", ""]]
    assert errors == []


async def test_scripted_one_room_taken_away_leaves_the_others(chromium: Browser) -> None:
    """unsubscribed 4403 ends that room alone (its waiting sends rejected, never
    resubscribed); 1011 is retried with backoff, rate_limited after retry_after; the other
    rooms go on."""
    errors: list[str] = []
    page, server = await scripted(chromium, errors)
    server.refuse["c"] = [1011, 1011]
    server.rate_limited["a"] = 1
    await start(page, ["a", "b", "c"], url=SOCKET_URL, **FAST)
    await wait_js(page, "conn.subscriptions.every((s) => s.state === 'subscribed')")
    assert [f["room"] for f in server.sent("subscribe")].count("c") == 3
    delays = [d for d in await events_of(page, "c", "state") if "code" in d]
    assert [(d["state"], d["code"]) for d in delays] == [("subscribing", 1011)] * 2
    # A subscribe answered rate_limited is sent again after retry_after.
    assert [f["room"] for f in server.sent("subscribe")].count("a") == 2
    waits = [d for d in await events_of(page, "a", "state") if "code" in d]
    assert [(d["code"], d["delayMs"]) for d in waits] == [("rate_limited", 50)]

    server.last.rooms.discard("b")
    server.last.send(
        {
            "type": "unsubscribed",
            "room": "b",
            "code": 4403,
            "reason": "not allowed in this room any more",
        }
    )
    await wait_js(page, "subs.b.state === 'unsubscribed'")
    refused = await page.evaluate(
        "subs.b.send('late').then(() => 'sent', (e) => [e.name, e.code, e.text])"
    )
    assert refused == ["ClosedError", 4403, "late"]
    await expect(page.locator('section[data-room="b"] .state')).to_have_text(
        "not allowed in this room any more (4403)"
    )
    assert await page.evaluate("conn.get('b')") is None
    assert await page.evaluate("subs.a.send('still here')") == 1

    server.close(server.last, 1012)
    await wait_js(page, CONNECTED_TWICE)
    await wait_js(page, "subs.a.state === 'subscribed' && subs.c.state === 'subscribed'")
    assert sorted(f["room"] for f in server.sent("subscribe", server.last)) == ["a", "c"]
    assert await page.evaluate("subs.c.send('c too')") == 1
    assert errors == []


async def test_scripted_unread_typing_and_sizes(chromium: Browser) -> None:
    """unread: the joined count, plus live messages of others after the cursor, minus a
    delete of one of them, reset by an unread frame; typing() sends one frame per
    interval; the size check counts the room's name."""
    errors: list[str] = []
    page, server = await scripted(chromium, errors)
    server.unread_at_join = 2
    server.store("a", message="old 1", user="bob")
    server.store("a", message="old 2", user="bob")
    await start(page, ["a"], url=SOCKET_URL, **FAST)
    await wait_js(page, "subs.a.state === 'subscribed'")
    assert await page.evaluate("subs.a.unread") == 2  # the catch-up is in the count

    await page.evaluate("subs.a.send('mine')")
    server.store("a", message="from bob", user="bob")
    server.store("a", message="deploy done")  # a system message counts too
    await wait_rows(page, "a", 5)
    assert await page.evaluate("subs.a.unread") == 4
    server.store("a", "delete", target=4, user="bob")
    await wait_js(page, "subs.a.unread === 3")
    assert await page.evaluate("subs.a.read()") is True
    assert server.sent("read")[-1] == {"type": "read", "room": "a", "seq": 6}
    assert await page.evaluate("subs.a.read(5)") is False  # never backwards
    server.last.send({"type": "unread", "room": "a", "read_seq": 6, "unread": 0})
    await wait_js(page, "subs.a.unread === 0")
    await expect(page.locator('section[data-room="a"] li[data-seq="4"]')).to_have_class("deleted")

    sent = await page.evaluate("Array.from({length: 20}, () => subs.a.typing())")
    assert sent.count(True) == 1 and len(server.sent("typing")) <= 1

    # The frame send() sends: {"type","room","message","client_id"}, client_id at most 32.
    base = (
        len(
            json.dumps(
                {"type": "message", "room": "a", "message": "", "client_id": ""},
                separators=(",", ":"),
            )
        )
        + 32
    )
    assert await page.evaluate("subs.a.frameBytes('')") == base
    await page.evaluate(f"conn.maxFrameBytes = {base + 10}")
    assert await page.evaluate("subs.a.send('x'.repeat(10))") == 7
    checked = await page.evaluate(
        "(() => { try { subs.a.checkSize('x'.repeat(11)); } catch (e) { return e.name; } })()"
    )
    assert checked == "FrameTooLargeError"
    # send() measures its real client_id (shorter than 32): over by more than that.
    refused = await page.evaluate(
        "subs.a.send('x'.repeat(43)).then(() => 'sent', (e) => [e.name, e.limit])"
    )
    assert refused == ["FrameTooLargeError", base + 10]
    assert errors == []


async def test_scripted_unsubscribe_and_too_many(chromium: Browser) -> None:
    """unsubscribe() ends with unsubscribed 1000 from the server; too_many_subscriptions
    ends the new room as 4429; subscribe() again while unsubscribing waits for the
    answer, then subscribes anew."""
    errors: list[str] = []
    page, server = await scripted(chromium, errors)
    await start(page, ["a", "b"], url=SOCKET_URL, **FAST)
    await wait_js(page, "subs.b.state === 'subscribed'")
    await page.evaluate("subs.b.unsubscribe(); window.again = conn.subscribe('b')")
    assert await page.evaluate("again !== subs.b")
    await wait_js(page, "again.state === 'subscribed' && subs.b.state === 'unsubscribed'")
    assert [(f["type"], f["room"]) for f in server.last.frames if f.get("room") == "b"] == [
        ("subscribe", "b"),
        ("unsubscribe", "b"),
        ("subscribe", "b"),
    ]
    ended = await events_of(page, "b", "unsubscribed")
    assert ended == [{"room": "b", "code": 1000, "reason": "unsubscribed"}]

    server.max_rooms = 2
    await page.evaluate("follow('c')")
    await wait_js(page, "subs.c.state === 'unsubscribed'")
    assert (await events_of(page, "c", "unsubscribed"))[0]["code"] == 4429
    assert await page.evaluate("conn.subscriptions.map((s) => s.room)") == ["a", "b"]
    assert errors == []


async def test_scripted_presence_is_kept_from_the_frames(chromium: Browser) -> None:
    """presence replaces the list; join adds a user (first connection), leave removes
    one, presence_count sets the counts; each change is a presence event with it all."""
    errors: list[str] = []
    page, server = await scripted(chromium, errors)
    await start(page, ["a", "b"], url=SOCKET_URL, **FAST)
    await wait_js(page, "subs.b.state === 'subscribed'")
    frames = [
        {
            "type": "presence",
            "room": "a",
            "count": 2,
            "anonymous": 1,
            "truncated": False,
            "users": [{"user": "alice", "connections": 1}, {"user": "carol", "connections": 2}],
        },
        {"type": "leave", "room": "a", "user": "carol"},
        {"type": "join", "room": "a", "user": "bob"},
        {"type": "join", "room": "a", "user": "bob"},  # not twice
        {"type": "presence_count", "room": "a", "count": 2, "anonymous": 3},
    ]
    for frame in frames:
        server.last.send(frame)
    await expect(page.locator('section[data-room="a"] .presence')).to_have_text(
        "here: alice, bob (3 guests)", timeout=WAIT_MS
    )
    assert await page.evaluate("subs.a.presence") == {
        "users": [{"user": "alice", "connections": 1}, {"user": "bob", "connections": 1}],
        "count": 2,
        "anonymous": 3,
        "truncated": False,
    }
    counts = [d["count"] for d in await events_of(page, "a", "presence")]
    assert counts == [1, 2, 1, 2, 2, 2]  # the join: alice alone; then the frames above
    await expect(page.locator('section[data-room="b"] .presence')).to_have_text(
        "here: alice (0 guests)"
    )
    assert await page.evaluate("subs.a.requestPresence()") is True
    assert server.sent("presence")[-1] == {"type": "presence", "room": "a"}
    assert errors == []


async def test_scripted_a_gap_too_long_starts_the_room_over(chromium: Browser) -> None:
    """recovered false after a reconnect: that room's reset event (the page clears its
    log), then the latest messages, each once; a room that recovered keeps its log."""
    errors: list[str] = []
    page, server = await scripted(chromium, errors)
    for n in (1, 2, 3):
        server.store("a", message=f"a{n}")
    server.store("b", message="b1")
    await start(page, ["a", "b"], url=SOCKET_URL, **FAST)
    await wait_rows(page, "a", 3)
    await wait_rows(page, "b", 1)
    # Stored while the page is not told (before the close, so that a fast reconnect
    # cannot come first and get them live): the reconnect finds a gap of 3 in "a".
    dropped = server.last
    dropped.rooms.clear()
    for n in (4, 5, 6):
        server.store("a", message=f"a{n}")
    server.store("b", message="b2")
    server.replay_limit = 2
    server.close(dropped, 1012)
    await wait_js(page, CONNECTED_TWICE)
    await wait_rows(page, "a", 6)
    await wait_rows(page, "b", 2)
    rows = await logs(page)
    assert [r[0] for r in rows["a"]] == [1, 2, 3, 4, 5, 6]
    assert [r[0] for r in rows["b"]] == [1, 2]
    assert [j["recovered"] for j in await events_of(page, "a", "joined")] == [True, False]
    assert len(await events_of(page, "a", "reset")) == 1
    assert await events_of(page, "b", "reset") == []
    assert errors == []
