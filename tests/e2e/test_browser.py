"""Real Chromium against a real ``roomcast serve``: the seed's page, roomcast's pages, Origin.

Debian's Chromium (``/usr/bin/chromium``) is driven through Playwright's async API; when
it is missing, ``tests/conftest.py`` fails the run with the line to install it. Every
wait is a Playwright wait with a timeout: a test that times out has found a bug.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, Playwright, async_playwright, expect

from tests.conftest import ARTIFACTS, CHROMIUM, free_port, wait_for_port

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

# Longest wait for something the page should show. Generous for a loaded CI machine: a
# pass takes well under a second, and only a failing test ever waits this long.
WAIT_MS = 10_000

# The seed tutorial's chat/templates/chat/room.html (Channels 2), script unchanged;
# {{ room_name_json }} is filled in as the seed's view does (json.dumps of the name).
SEED_ROOM_HTML = """<!-- chat/templates/chat/room.html -->
<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8"/>
    <title>Chat Room</title>
</head>
<body>
    <textarea id="chat-log" cols="100" rows="20"></textarea><br/>
    <input id="chat-message-input" type="text" size="100"/><br/>
    <input id="chat-message-submit" type="button" value="Send"/>
</body>
<script>
    var roomName = {{ room_name_json }};

    var chatSocket = new WebSocket(
        'ws://' + window.location.host +
        '/ws/chat/' + roomName + '/');

    chatSocket.onmessage = function(e) {
        var data = JSON.parse(e.data);
        var message = data['message'];
        document.querySelector('#chat-log').value += (message + '\\n');
    };

    chatSocket.onclose = function(e) {
        console.error('Chat socket closed unexpectedly');
    };

    document.querySelector('#chat-message-input').focus();
    document.querySelector('#chat-message-input').onkeyup = function(e) {
        if (e.keyCode === 13) {  // enter, return
            document.querySelector('#chat-message-submit').click();
        }
    };

    document.querySelector('#chat-message-submit').onclick = function(e) {
        var messageInputDom = document.querySelector('#chat-message-input');
        var message = messageInputDom.value;
        chatSocket.send(JSON.stringify({
            'message': message
        }));

        messageInputDom.value = '';
    };
</script>
</html>
"""

# A page that opens a roomcast.v1 socket and writes down everything that happens to it.
PROBE_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>probe</title></head><body><script>
  window.probe = {events: [], done: false};
  const ws = new WebSocket(URL_JSON, ["roomcast.v1"]);
  ws.onopen = () => probe.events.push("open");
  ws.onmessage = (e) => {
    probe.events.push("message " + e.data);
    ws.close(1000);
  };
  ws.onerror = () => probe.events.push("error");
  ws.onclose = (e) => { probe.events.push("close " + e.code); probe.done = true; };
</script></body></html>
"""

# The room page's log as (seq, kind, text) rows; the text is the message's own text node.
LOG_ROWS_JS = """() => Array.from(document.querySelectorAll("#chat-log li"),
    (li) => [li.dataset.seq, li.className, li.lastChild.textContent])"""


async def launch(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless, with the flags this machine needs."""
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


async def new_page(browser: Browser, errors: list[str]) -> Page:
    """A page in a context of its own (own cookies, like a second person's browser).

    Console errors and uncaught exceptions are appended to ``errors``. Chromium's Local
    Network Access checks block a page Playwright serves (an address the browser cannot
    place, so "public") from opening sockets to 127.0.0.1; the permission lets those
    handshakes reach the server, so that what refuses a cross-origin page is roomcast.
    """
    context = await browser.new_context(permissions=["local-network-access"])
    page = await context.new_page()

    def on_console(msg: Any) -> None:
        if msg.type == "error" and not msg.location["url"].endswith("/favicon.ico"):
            errors.append(msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return page


async def cli_push(server: Any, room: str, text: str, *, http: bool = True) -> int:
    """Push ``text`` to ``room`` with the ``roomcast`` command; returns the stored seq.

    ``http``: through the running server's push API (``roomcast push --server``); else
    straight into the database with ``roomcast manage roomcast_push``, which works while
    the server is down (the embedded default's in-memory layer reaches no one).
    """
    if http:
        args = ["push", room, text, "--server", server.http_url]
    else:
        args = ["manage", "roomcast_push", room, text]
    result = await asyncio.to_thread(server.cli, *args)
    assert result.returncode == 0, result.stderr
    match = re.search(r"as seq (\d+)", result.stdout)
    assert match, result.stdout
    return int(match.group(1))


def room_url(server: Any, room: str) -> str:
    """The URL of ``room``'s page on ``server``."""
    return f"{server.http_url}/chat/{urllib.parse.quote(room, safe='')}/"


async def wait_for_rows(page: Page, count: int) -> list[list[str]]:
    """The room page's log rows once it has at least ``count`` of them."""
    await page.wait_for_function(
        "(n) => document.querySelectorAll('#chat-log li').length >= n", arg=count, timeout=WAIT_MS
    )
    return list(await page.evaluate(LOG_ROWS_JS))


async def test_seed_room_page_works_unchanged(browser: Browser, serve: Any) -> None:
    """The seed's room.html, script unchanged, chats through roomcast and hears CLI pushes."""
    server = serve()
    room = "seed 技术"
    page_url = server.http_url + "/seed-room/"
    html = SEED_ROOM_HTML.replace("{{ room_name_json }}", json.dumps(room))
    errors: list[str] = []
    pages = [await new_page(browser, errors) for _ in range(2)]
    for page in pages:
        # Served from the server's own origin, so window.location.host is the server.
        await page.route(page_url, lambda route: route.fulfill(body=html, content_type="text/html"))
        await page.goto(page_url)
        await page.wait_for_function("chatSocket.readyState === WebSocket.OPEN", timeout=WAIT_MS)
    alice, bob = pages

    await alice.locator("#chat-message-input").fill("hello 你好")
    await alice.locator("#chat-message-input").press("Enter")
    await expect(alice.locator("#chat-message-input")).to_have_value("")
    for page in pages:
        await expect(page.locator("#chat-log")).to_have_value("hello 你好\n", timeout=WAIT_MS)

    assert await cli_push(server, room, "from the shell") == 2
    await bob.locator("#chat-message-input").fill("bob here")
    await bob.locator("#chat-message-submit").click()
    for page in pages:
        # Every frame the server sends this dialect carries "message": no "undefined" lines.
        await expect(page.locator("#chat-log")).to_have_value(
            "hello 你好\nfrom the shell\nbob here\n", timeout=WAIT_MS
        )
    assert errors == []


async def test_room_page_unicode_room_chat_and_push(browser: Browser, serve: Any) -> None:
    """Pick a Unicode room on /chat/, chat between two browsers, see a push as a system line."""
    server = serve()
    room = "技术交流 café"
    errors: list[str] = []
    alice = await new_page(browser, errors)
    await alice.set_viewport_size({"width": 900, "height": 700})
    await alice.goto(server.http_url + "/chat/")
    await alice.locator("#room-name-input").fill(f"  {room} ")  # the picker trims
    await alice.locator("#room-name-submit").click()
    await alice.wait_for_url(room_url(server, room), timeout=WAIT_MS)
    await expect(alice.locator("h1")).to_have_text(room)
    await expect(alice).to_have_title(f"{room} · roomcast")

    bob = await new_page(browser, errors)
    await bob.goto(room_url(server, room))
    for page in (alice, bob):
        await expect(page.locator("#status")).to_have_text("connected", timeout=WAIT_MS)

    await alice.locator("#chat-message-input").fill("你好, bob! <b>not bold</b>")
    await alice.locator("#chat-message-input").press("Enter")
    await expect(alice.locator("#chat-message-input")).to_have_value("")
    line = bob.locator('#chat-log li[data-seq="1"]')
    await expect(line).to_contain_text("你好, bob! <b>not bold</b>", timeout=WAIT_MS)
    await expect(line.locator(".user")).to_have_text("anonymous")
    await expect(line.locator("b")).to_have_count(0)  # text, never markup

    assert await cli_push(server, room, "Deploy finished ✓") == 2
    for page in (alice, bob):
        rows = await wait_for_rows(page, 2)
        assert rows == [
            ["1", "chat", "你好, bob! <b>not bold</b>"],
            ["2", "system", "Deploy finished ✓"],
        ]
    await expect(alice.locator('#chat-log li[data-seq="2"] .user')).to_have_count(0)

    ARTIFACTS.mkdir(exist_ok=True)
    await alice.screenshot(path=ARTIFACTS / "room-page.png", full_page=True)
    assert errors == []


async def test_room_page_reconnects_without_loss(browser: Browser, serve: Any) -> None:
    """Across a server restart the page resumes with since=: every seq once, in order."""
    # The embedded default keeps SQLite in the data dir, which survives the restart.
    server = serve()
    room = "再连 reconnect"
    errors: list[str] = []
    page = await new_page(browser, errors)
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    await page.goto(room_url(server, room))
    status = page.locator("#status")
    await expect(status).to_have_text("connected", timeout=WAIT_MS)
    await page.evaluate(
        "window.joins = []; roomcastRoom.addEventListener('joined', (e) => joins.push(e.detail))"
    )
    await page.locator("#chat-message-input").fill("m1")
    await page.locator("#chat-message-input").press("Enter")
    assert await wait_for_rows(page, 1) == [["1", "chat", "m1"]]
    # Marks the element: a page that reset and re-rendered its log would lose the mark.
    await page.locator('#chat-log li[data-seq="1"]').evaluate("(li) => li.dataset.mark = 'kept'")

    await asyncio.to_thread(server.stop)
    # The page says why: uvicorn closes with 1012 on shutdown, or the socket just drops.
    await expect(status).to_have_text(
        re.compile(r"^reconnecting in [\d.]+ s: (server restarting \(1012\)|.*\(1006\))"),
        timeout=WAIT_MS,
    )
    for seq in (2, 3, 4):  # stored while the server is down: only a replay can bring them
        assert await cli_push(server, room, f"m{seq}", http=False) == seq
    # Typed while offline: queued, and sent once the replay is done, after m4.
    await page.locator("#chat-message-input").fill("m5")
    await page.locator("#chat-message-input").press("Enter")
    await asyncio.to_thread(server.start)  # same port: ServerProcess keeps it

    await expect(page.locator('#chat-log li[data-seq="5"]')).to_have_count(1, timeout=WAIT_MS)
    assert await cli_push(server, room, "m6") == 6
    rows = await wait_for_rows(page, 6)
    assert rows == [
        ["1", "chat", "m1"],
        ["2", "system", "m2"],
        ["3", "system", "m3"],
        ["4", "system", "m4"],
        ["5", "chat", "m5"],
        ["6", "system", "m6"],
    ]
    await expect(status).to_have_text("connected")
    await expect(page.locator('#chat-log li[data-seq="1"][data-mark="kept"]')).to_have_count(1)
    joins = await page.evaluate("joins")
    assert [(j["seq"], j.get("recovered")) for j in joins] == [(4, True)]
    assert "?since=" not in sockets[0]
    assert len(sockets) >= 2 and all(url.endswith("?since=1") for url in sockets[1:]), sockets
    # The socket the server dropped on shutdown is the only one the page saw fail.
    assert all("WebSocket" in e for e in errors), errors


async def test_cross_origin_page_cannot_open_the_socket(browser: Browser, serve: Any) -> None:
    """A page on another site gets its handshake refused (HTTP 403) and hears nothing."""
    server = serve()
    ws_url = server.ws_url("lobby")
    html = PROBE_HTML.replace("URL_JSON", json.dumps(ws_url))
    errors: list[str] = []

    async def probe(page_url: str) -> tuple[list[str], list[str]]:
        page = await new_page(browser, errors)
        socket_errors: list[str] = []
        page.on("websocket", lambda ws: ws.on("socketerror", lambda e: socket_errors.append(e)))
        await page.route(page_url, lambda route: route.fulfill(body=html, content_type="text/html"))
        await page.goto(page_url)
        await page.wait_for_function("probe.done", timeout=WAIT_MS)
        return list(await page.evaluate("probe.events")), socket_errors

    # The same script from the server's own origin connects: the probe itself works.
    events, socket_errors = await probe(server.http_url + "/probe/")
    assert events[0] == "open" and events[-1] == "close 1000", events
    assert json.loads(events[1].removeprefix("message "))["type"] == "joined"
    assert socket_errors == []

    # https: Chromium gives local network access to secure contexts only, even with the
    # permission; over http the browser itself would refuse, and the server go untested.
    events, socket_errors = await probe("https://evil.example/")
    assert events == ["error", "close 1006"]
    assert any("403" in e for e in socket_errors), socket_errors


# -- the page never ends up silently dead ----------------------------------------------------

CLIENT_PATH = "/static/roomcast/roomcast.js"


async def shot(page: Page, tmp_path: Path, name: str) -> None:
    """A screenshot in the test's tmp dir, to look at when the page's states change."""
    await page.screenshot(path=tmp_path / f"{name}.png", full_page=True)


def frames_sent(page: Page) -> list[int]:
    """UTF-8 sizes of the text frames the page's sockets send, appended as they go."""
    sizes: list[int] = []

    def on_socket(ws: Any) -> None:
        ws.on("framesent", lambda payload: sizes.append(len(str(payload).encode("utf-8"))))

    page.on("websocket", on_socket)
    return sizes


@pytest.mark.parametrize("failure", ["404", "network"])
async def test_room_page_says_when_its_script_cannot_load(
    browser: Browser, serve: Any, tmp_path: Path, failure: str
) -> None:
    """roomcast.js answered 404, or not at all: the status line says so, no "connecting…"."""
    server = serve()
    errors: list[str] = []
    page = await new_page(browser, errors)

    async def block(route: Any) -> None:
        if failure == "404":
            await route.fulfill(status=404, body="Not Found", content_type="text/plain")
        else:
            await route.abort("connectionrefused")

    await page.route(server.http_url + CLIENT_PATH, block)
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    await page.goto(room_url(server, "lobby"))
    status = page.locator("#status")
    why = "HTTP 404" if failure == "404" else "network error"
    await expect(status).to_have_text(
        f"could not load the page's script {CLIENT_PATH} ({why}); reload the page",
        timeout=WAIT_MS,
    )
    await expect(status).to_have_class("error")
    await expect(page.locator("#chat-message-submit")).to_be_disabled()
    await shot(page, tmp_path, f"script-{failure}")
    assert sockets == []
    # The browser reports the failed load itself; nothing else went wrong.
    assert errors and all("Failed to" in e or "roomcast.js" in e for e in errors), errors


async def test_room_page_says_when_its_socket_is_refused(
    browser: Browser, serve: Any, tmp_path: Path
) -> None:
    """A server gone between the page and its socket: the status names the socket and
    keeps trying. (The page's script is held until the server has stopped, so its first
    socket meets a closed port: a real refusal, never an open socket.)"""
    server = serve()
    errors: list[str] = []
    page = await new_page(browser, errors)
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))

    async def hold_script(route: Any) -> None:
        response = await route.fetch()
        server.stop()
        await route.fulfill(response=response)

    await page.route("**/roomcast.js", hold_script)
    await page.goto(room_url(server, "拒绝 refused"))
    status = page.locator("#status")
    await expect(status).to_have_text(
        re.compile(
            r"^cannot connect to ws://127\.0\.0\.1:\d+/ws/chat/%E6%8B%92%E7%BB%9D%20refused/: "
            r"connection failed or dropped \(1006\); trying again in [\d.]+ s$"
        ),
        timeout=WAIT_MS,
    )
    await expect(status).to_have_class("error")
    await shot(page, tmp_path, "socket-refused")
    # It keeps trying (the server may come back), each attempt refused.
    async with page.expect_websocket(timeout=WAIT_MS):
        pass
    assert len(sockets) >= 2
    assert all("WebSocket" in e or "REFUSED" in e for e in errors), errors


async def test_room_page_refuses_a_message_over_the_frame_limit(
    browser: Browser, serve: Any, tmp_path: Path
) -> None:
    """17,000 characters: refused before sending, kept in the box, the socket stays up; and a
    limit the page got wrong ends in a 1009 the page recovers from, text given back."""
    server = serve()
    room = "长 long"
    errors: list[str] = []
    page = await new_page(browser, errors)
    await page.set_viewport_size({"width": 900, "height": 700})
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    sent = frames_sent(page)
    await page.goto(room_url(server, room))
    status, note = page.locator("#status"), page.locator("#note")
    box = page.locator("#chat-message-input")
    await expect(status).to_have_text("connected", timeout=WAIT_MS)
    assert await page.evaluate("roomcastRoom.maxFrameBytes") == 16384  # from the view

    long_text = "x" * 17_000
    await box.fill(long_text)
    await box.press("Enter")
    await expect(note).to_be_visible()
    # The whole frame: the text plus the JSON around it and a client_id.
    await expect(note).to_contain_text(re.compile(r"this message is 17,0\d\d bytes as a frame"))
    await expect(note).to_contain_text("the room's limit of 16,384")
    await expect(box).to_have_value(long_text)
    await shot(page, tmp_path, "frame-limit-refused")

    # Bytes, not characters: 6,000 CJK characters are 18,000 bytes of UTF-8.
    await box.fill("字" * 6000)
    await expect(note).to_contain_text(re.compile(r"this message is 18,0\d\d bytes"))
    await box.press("Enter")
    await expect(box).to_have_value("字" * 6000)
    # Editing to under the limit clears the note; it is sent and stored.
    fits = "y" * 16_000
    await box.fill(fits)
    await expect(note).to_be_hidden()
    await box.press("Enter")
    await expect(box).to_have_value("")
    assert (await wait_for_rows(page, 1))[0][:2] == ["1", "chat"]
    # RoomClient.send() checks the same limit: a named error, the text in it, nothing queued.
    rejected = await page.evaluate(
        """() => roomcastRoom.send("z".repeat(17000)).then(
            () => null, (e) => [e.name, e.text.length, e.bytes, e.limit, roomcastRoom.waiting])"""
    )
    assert rejected[0] == "FrameTooLargeError"
    assert rejected[1] == 17_000 and rejected[2] > 17_000 and rejected[3:] == [16384, 0]
    assert max(sent) <= 16384 and len(sockets) == 1  # nothing over the limit left the page

    # A page whose limit is wrong (here: raised by hand) sends it; the server closes with
    # 1009. The text comes back with the reason and the page reconnects by itself.
    await page.evaluate("roomcastRoom.maxFrameBytes = 1 << 20")
    await box.fill(long_text)
    await box.press("Enter")
    await expect(note).to_contain_text(
        "Not sent: a message was over the server's size limit: "
        "Frames are limited to 16384 bytes (1009). The text is back in the box.",
        timeout=WAIT_MS,
    )
    await expect(box).to_have_value(long_text)
    await expect(status).to_have_text("connected", timeout=WAIT_MS)
    await shot(page, tmp_path, "frame-limit-1009-recovered")
    assert len(sockets) == 2 and sockets[1].endswith("?since=1"), sockets
    assert await page.evaluate("roomcastRoom.waiting") == 0
    # The connection works again: a message sent now is stored and shown.
    await box.fill("after 1009")
    await box.press("Enter")
    rows = await wait_for_rows(page, 2)
    assert rows[1] == ["2", "chat", "after 1009"]
    assert all("WebSocket" in e for e in errors), errors


async def test_room_page_after_a_disconnect_offers_reconnect(
    browser: Browser, serve: Any, tmp_path: Path
) -> None:
    """Closed with 4000 (roomcast disconnect): the page says so and why, sends nothing,
    keeps what is typed, and its Reconnect button brings the room back."""
    server = serve()
    room = "断开 disconnect"
    errors: list[str] = []
    page = await new_page(browser, errors)
    await page.set_viewport_size({"width": 900, "height": 600})
    await page.goto(room_url(server, room))
    status, note = page.locator("#status"), page.locator("#note")
    box, button = page.locator("#chat-message-input"), page.locator("#reconnect")
    await expect(status).to_have_text("connected", timeout=WAIT_MS)
    await expect(button).to_be_hidden()

    result = await asyncio.to_thread(
        server.cli, "disconnect", room, "--reason", "maintenance", "--server", server.http_url
    )
    assert result.returncode == 0, result.stderr
    await expect(status).to_have_text(
        "disconnected by the server: maintenance (4000)", timeout=WAIT_MS
    )
    await expect(status).to_have_class("error")
    await expect(button).to_be_visible()
    await expect(page.locator("#chat-message-submit")).to_be_disabled()
    # Typed while stopped: not queued, not lost.
    await box.fill("still here?")
    await box.press("Enter")
    await page.locator("#chat-form").evaluate("(f) => f.requestSubmit()")
    await expect(note).to_have_text("Not sent: not connected. Press Reconnect first.")
    await expect(box).to_have_value("still here?")
    rejected = await page.evaluate(
        "() => roomcastRoom.send('x').then(() => null, (e) => [e.name, e.code, e.message])"
    )
    assert rejected == ["ClosedError", 4000, "disconnected by the server: maintenance (4000)"]
    assert await page.evaluate("roomcastRoom.waiting") == 0
    await shot(page, tmp_path, "disconnected")

    await button.click()
    await expect(status).to_have_text("connected", timeout=WAIT_MS)
    await expect(button).to_be_hidden()
    await box.press("Enter")
    assert await wait_for_rows(page, 1) == [["1", "chat", "still here?"]]
    await shot(page, tmp_path, "reconnected")
    assert errors == []


async def test_room_page_gives_back_messages_a_stopped_client_drops(
    browser: Browser, serve: Any, tmp_path: Path
) -> None:
    """A message queued while the server is down, then a reconnect refused with 4400: the
    queue is emptied with the reason, the text is back in the box, nothing waits."""
    server = serve()
    room = "queued"
    errors: list[str] = []
    page = await new_page(browser, errors)
    await page.goto(room_url(server, room))
    status, box = page.locator("#status"), page.locator("#chat-message-input")
    await expect(status).to_have_text("connected", timeout=WAIT_MS)
    await asyncio.to_thread(server.stop)
    await expect(status).to_contain_text("reconnecting", timeout=WAIT_MS)
    await box.fill("typed offline")
    await box.press("Enter")
    await expect(box).to_have_value("")
    await expect(status).to_contain_text("1 waiting to be sent")
    # Back, but now room names are limited to 3 characters: the socket is closed with 4400.
    server.env["ROOMCAST_ROOM_NAME_MAX_CHARS"] = "3"
    await asyncio.to_thread(server.start)
    await expect(status).to_have_text(
        "disconnected: bad request: Room names are limited to 3 characters (4400)",
        timeout=WAIT_MS,
    )
    await expect(box).to_have_value("typed offline")
    await expect(page.locator("#note")).to_have_text(
        "Not sent: bad request: Room names are limited to 3 characters (4400). "
        "The text is back in the box."
    )
    assert await page.evaluate("roomcastRoom.waiting") == 0
    await shot(page, tmp_path, "queue-dropped-4400")
    assert all("WebSocket" in e for e in errors), errors


async def test_room_page_gives_back_a_message_the_server_refuses(
    browser: Browser, serve: Any
) -> None:
    """ALLOW_ANONYMOUS off: the server answers "forbidden"; the send settles, text given back."""
    server = serve(ROOMCAST_ALLOW_ANONYMOUS="false")
    errors: list[str] = []
    page = await new_page(browser, errors)
    await page.goto(room_url(server, "members only"))
    status, box = page.locator("#status"), page.locator("#chat-message-input")
    await expect(status).to_have_text("connected", timeout=WAIT_MS)
    await box.fill("hello?")
    await box.press("Enter")
    await expect(page.locator("#note")).to_have_text(
        "Not sent: Log in to post in this room. The text is back in the box.", timeout=WAIT_MS
    )
    await expect(box).to_have_value("hello?")
    assert await page.evaluate("roomcastRoom.waiting") == 0
    await expect(status).to_have_text("connected")
    assert errors == []


# -- roomcast's URLs under a prefix -----------------------------------------------------------


@pytest.fixture
def prefixed_server(tmp_path: Path) -> Iterator[str]:
    """A uvicorn process serving roomcast.server.asgi with roomcast.urls under ``/rt/``
    (tests/prefix_settings.py); yields its http URL."""
    repo = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.prefix_settings",
        "ROOMCAST_DATA_DIR": str(tmp_path / "data"),
        "PYTHONPATH": str(repo),
    }
    django_admin = str(Path(sys.executable).with_name("django-admin"))
    subprocess.run(
        [django_admin, "migrate", "--verbosity", "0"], cwd=repo, env=env, check=True, timeout=60
    )
    port = free_port()
    log = open(tmp_path / "uvicorn.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "roomcast.server.asgi:application", "--port", str(port)],
        cwd=repo,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, timeout=30, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        print((tmp_path / "uvicorn.log").read_text(errors="replace")[-8000:])


async def test_pages_work_with_roomcast_urls_under_a_prefix(
    browser: Browser, prefixed_server: str, tmp_path: Path
) -> None:
    """``path("rt/", include("roomcast.urls"))``: the form, the links and the socket follow."""
    base = prefixed_server
    room = "前缀 prefix"
    quoted = urllib.parse.quote(room, safe="")
    errors: list[str] = []
    page = await new_page(browser, errors)
    await page.goto(base + "/rt/chat/")
    await page.locator("#room-name-input").fill(room)
    await page.locator("#room-name-submit").click()
    await page.wait_for_url(f"{base}/rt/chat/{quoted}/", timeout=WAIT_MS)
    await expect(page.locator("#status")).to_have_text("connected", timeout=WAIT_MS)
    await page.locator("#chat-message-input").fill("under /rt/")
    await page.locator("#chat-message-input").press("Enter")
    assert await wait_for_rows(page, 1) == [["1", "chat", "under /rt/"]]
    await shot(page, tmp_path, "prefix-room")

    # Back to the index by the page's own link; the room is listed, its link works.
    await page.locator(".nav a").click()
    await page.wait_for_url(f"{base}/rt/chat/", timeout=WAIT_MS)
    await page.locator("#rooms a", has_text=room).click()
    await page.wait_for_url(f"{base}/rt/chat/{quoted}/", timeout=WAIT_MS)
    await expect(page.locator("#status")).to_have_text("connected", timeout=WAIT_MS)
    # A bad room name's page (the index, with the error) has a form that works too.
    response = await page.goto(f"{base}/rt/chat/{'x' * 201}/")
    assert response is not None and response.status == 400
    await expect(page.locator(".error")).to_contain_text("200")
    await page.locator("#room-name-input").fill("lobby")
    await page.locator("#room-name-submit").click()
    await page.wait_for_url(f"{base}/rt/chat/lobby/", timeout=WAIT_MS)
    await expect(page.locator("#status")).to_have_text("connected", timeout=WAIT_MS)
    # The 400 page is the one failed load the browser reports.
    assert all("400" in e for e in errors), errors
