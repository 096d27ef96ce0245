"""roomcast.js with connection tokens, in Debian's Chromium: ``{token}`` and
``{getToken}``, the first-frame auth, and what the client does when a token is refused
(4401) or expires (4501).

Three kinds of test:

* against a real ``roomcast serve``: what the page sends (the URL carries ``?auth=1`` and
  never the token; the first frame is the auth frame), and a ``getToken`` that fails;
* against a real server enforcing tokens (``needs i7-enforce``: strict xfail until the
  server side is merged; the integrator removes the marks): a private room joined with a
  token, a 4501 answered with a fresh token, forged tokens ending in a stopped client;
* against a scripted server (Playwright's ``route_web_socket``) that plays the auth part
  of docs/protocol.md exactly, to pin down the client's side of it: which token each
  attempt sends, the backoff, and that failures end in status ``closed``, never a loop.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, WebSocketRoute, async_playwright

from tests.e2e.conftest import launch
from tests.e2e.test_browser import WAIT_MS, new_page

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CLIENT_JS = (
    Path(__file__).resolve().parents[2] / "src" / "roomcast" / "static" / "roomcast" / "roomcast.js"
)

# A page that loads roomcast.js and writes down what its client does.
HARNESS_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>harness</title></head><body><script type="module">
  import * as roomcast from "/static/roomcast/roomcast.js";
  window.roomcast = roomcast;
  window.events = [];     // [type, detail] of the client's events, in order
  window.tokenCalls = 0;  // how often getToken() was called
  window.start = (room, options) => {
    const client = new roomcast.RoomClient(room, options);
    for (const type of ["status", "close", "joined", "error", "message"]) {
      client.addEventListener(type, (e) => events.push([type, e.detail]));
    }
    window.client = client;
  };
  // A getToken() that gives `answers` in turn: a token, "throw" (it fails), "hang" (it
  // never answers); the last one repeats.
  window.scriptedGetToken = (answers) => async () => {
    const answer = answers[Math.min(tokenCalls++, answers.length - 1)];
    if (answer === "throw") throw new Error("token service down");
    if (answer === "hang") return new Promise(() => {});
    return answer;
  };
  window.harnessReady = true;
</script></body></html>
"""


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, for one test (as tests/e2e/test_browser.py's)."""
    async with async_playwright() as playwright:
        browser = await launch(playwright)
        yield browser
        await browser.close()


# Fast backoff, so that a client that loops would loop many times within a wait.
FAST = "minDelayMs: 10, maxDelayMs: 40"


async def harness(browser: Browser, origin: str, errors: list[str], *, client_js: bool) -> Page:
    """The harness page at ``origin``/harness/; ``client_js``: serve roomcast.js from the
    source tree (no server at ``origin``), else the server's own static file."""
    page = await new_page(browser, errors)
    await page.route(
        f"{origin}/harness/",
        lambda route: route.fulfill(body=HARNESS_HTML, content_type="text/html"),
    )
    if client_js:
        await page.route(
            f"{origin}/static/roomcast/roomcast.js",
            lambda route: route.fulfill(body=CLIENT_JS.read_text(), content_type="text/javascript"),
        )
    await page.goto(f"{origin}/harness/")
    await page.wait_for_function("window.harnessReady === true", timeout=WAIT_MS)
    return page


def sent_frames(page: Page) -> list[tuple[str, list[dict[str, Any]]]]:
    """(url, frames sent) of each socket the page opens, appended as they go."""
    sockets: list[tuple[str, list[dict[str, Any]]]] = []

    def on_socket(ws: Any) -> None:
        frames: list[dict[str, Any]] = []
        sockets.append((ws.url, frames))
        ws.on("framesent", lambda payload: frames.append(json.loads(payload)))

    page.on("websocket", on_socket)
    return sockets


async def status_of(page: Page) -> dict[str, Any]:
    """The client's last status event."""
    statuses = [d for t, d in await page.evaluate("events") if t == "status"]
    return statuses[-1] if statuses else {}


async def wait_status(page: Page, status: str) -> dict[str, Any]:
    await page.wait_for_function(f"client.status === {json.dumps(status)}", timeout=WAIT_MS)
    return await status_of(page)


# -- a real server: what the page sends -------------------------------------------------------


def make_user(server: Any, name: str) -> None:
    result = server.cli("user", "create", name)
    assert result.returncode == 0, result.stderr


def token_for(server: Any, name: str, ttl: int = 600) -> str:
    result = server.cli("token", name, "--ttl", str(ttl))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("how", ["token", "getToken"])
async def test_the_token_goes_in_the_first_frame_never_the_url(
    chromium: Browser, serve: Any, how: str
) -> None:
    """``?auth=1`` in the URL, the token as the first frame, the messages after it."""
    server = serve()
    await asyncio.to_thread(make_user, server, "alice")
    token = await asyncio.to_thread(token_for, server, "alice")
    errors: list[str] = []
    page = await harness(chromium, server.http_url, errors, client_js=False)
    sockets = sent_frames(page)
    url = server.ws_url("lobby")
    option = (
        f"token: {json.dumps(token)}"
        if how == "token"
        else (f"getToken: scriptedGetToken([{json.dumps(token)}])")
    )
    await page.evaluate(f"start('lobby', {{url: {json.dumps(url)}, {option}}})")
    await wait_status(page, "open")
    seq = await page.evaluate("client.send('hello')")
    assert seq == 1
    (socket_url, frames), *_ = sockets
    assert socket_url == url + "?auth=1"
    assert token not in socket_url
    assert frames[0] == {"type": "auth", "token": token}
    assert [f.get("type") for f in frames[1:]] == ["message"]
    assert await page.evaluate("tokenCalls") == (1 if how == "getToken" else 0)


async def test_a_session_page_sends_no_auth(chromium: Browser, serve: Any) -> None:
    """Without token or getToken: the URL and frames are as before (the cookie says who)."""
    server = serve()
    errors: list[str] = []
    page = await harness(chromium, server.http_url, errors, client_js=False)
    sockets = sent_frames(page)
    url = server.ws_url("lobby")
    await page.evaluate(f"start('lobby', {{url: {json.dumps(url)}, since: 0}})")
    await wait_status(page, "open")
    await page.evaluate("client.send('plain')")
    assert sockets[0][0] == url + "?since=0"
    assert [f["type"] for f in sockets[0][1]] == ["message"]
    assert errors == []


async def test_a_get_token_that_keeps_failing_stops_the_client(
    chromium: Browser, serve: Any
) -> None:
    """getToken() throws every time: no socket is opened, and after MAX_TOKEN_FAILURES
    the client stops with the reason; send() is refused at once."""
    server = serve()
    await asyncio.to_thread(make_user, server, "alice")
    token = await asyncio.to_thread(token_for, server, "alice")
    errors: list[str] = []
    page = await harness(chromium, server.http_url, errors, client_js=False)
    sockets = sent_frames(page)
    url = json.dumps(server.ws_url("lobby"))
    await page.evaluate(
        f"start('lobby', {{url: {url}, getToken: scriptedGetToken(['throw']), {FAST}}})"
    )
    stopped = await wait_status(page, "closed")
    limit = await page.evaluate("roomcast.MAX_TOKEN_FAILURES")
    assert stopped["code"] == 4401
    assert stopped["reason"] == (
        f"could not get a token: token service down ({limit} times in a row)"
    )
    assert await page.evaluate("tokenCalls") == limit
    statuses = [d["status"] for t, d in await page.evaluate("events") if t == "status"]
    assert statuses == ["reconnecting"] * (limit - 1) + ["closed"]
    refused = await page.evaluate(
        "client.send('x').then(() => null, (e) => [e.name, e.code, e.message])"
    )
    assert refused == [
        "ClosedError",
        4401,
        "not authorized: could not get a token: token service down "
        f"({limit} times in a row) (4401)",
    ]
    await page.wait_for_timeout(300)  # a loop would have called it again by now
    assert await page.evaluate("tokenCalls") == limit
    assert sockets == []
    # reconnect() starts over: a getToken() that works now connects.
    await page.evaluate(
        f"tokenCalls = 0; client._getToken = scriptedGetToken([{json.dumps(token)}]); "
        "client.reconnect()"
    )
    await wait_status(page, "open")
    assert sockets[0][1][0] == {"type": "auth", "token": token}


async def test_a_get_token_that_never_answers_is_a_failure(chromium: Browser, serve: Any) -> None:
    server = serve()
    errors: list[str] = []
    page = await harness(chromium, server.http_url, errors, client_js=False)
    url = json.dumps(server.ws_url("lobby"))
    await page.evaluate(
        f"start('lobby', {{url: {url}, getToken: scriptedGetToken(['hang']), "
        f"getTokenTimeoutMs: 100, {FAST}}})"
    )
    stopped = await wait_status(page, "closed")
    assert stopped["reason"].startswith("could not get a token: no answer within 0.1 s ("), stopped


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("{getToken: 'abc'}", "getToken must be a function"),
        ("{token: ''}", "token must be a non-empty string"),
        ("{token: 42}", "token must be a non-empty string"),
    ],
)
async def test_bad_token_options_throw(
    chromium: Browser, serve: Any, options: str, message: str
) -> None:
    server = serve()
    page = await harness(chromium, server.http_url, [], client_js=False)
    thrown = await page.evaluate(
        f"(() => {{ try {{ start('x', {options}); }} catch (e) {{ return e.message; }} }})()"
    )
    assert message in thrown


# -- a real server that enforces tokens (after merging i7-enforce) ---------------------------


async def test_token_join_of_a_private_room_and_refresh_after_expiry(
    chromium: Browser, serve: Any
) -> None:
    """alice (token only) joins her private room; her 2-second token expires, the server
    closes with 4501, getToken() gives a fresh one and the client is back, with what it
    missed. A page without a token is refused (4403)."""
    server = serve()
    for args in (
        ("user", "create", "alice"),
        ("room", "create", "board", "--private"),
        ("room", "members", "board", "add", "alice"),
    ):
        result = await asyncio.to_thread(server.cli, *args)
        assert result.returncode == 0, result.stderr
    calls: list[str] = []

    async def fetch_token() -> str:
        # The first token lives 2 s (the server closes the socket then), the next ones 10 min.
        ttl = 2 if not calls else 600
        token = await asyncio.to_thread(token_for, server, "alice", ttl)
        calls.append(token)
        return token

    errors: list[str] = []
    page = await harness(chromium, server.http_url, errors, client_js=False)
    await page.expose_function("fetchToken", fetch_token)
    sockets = sent_frames(page)
    url = json.dumps(server.ws_url("board"))
    await page.evaluate(f"start('board', {{url: {url}, getToken: () => fetchToken()}})")
    await wait_status(page, "open")
    assert await page.evaluate("client.send('from alice')") == 1
    await page.wait_for_function("events.some(([t]) => t === 'message')", timeout=WAIT_MS)
    shown = [d for t, d in await page.evaluate("events") if t == "message"]
    assert [(m["message"], m["user"]) for m in shown] == [("from alice", "alice")]
    await page.wait_for_function(
        "events.some(([t, d]) => t === 'close' && d.code === 4501)", timeout=WAIT_MS
    )
    push = await asyncio.to_thread(
        server.cli, "push", "board", "while away", "--server", server.http_url
    )
    assert push.returncode == 0, push.stderr
    await page.wait_for_function(
        "client.status === 'open' && client.lastSeq === 2", timeout=WAIT_MS
    )
    assert len(calls) == 2
    assert [frames[0] for _, frames in sockets] == [
        {"type": "auth", "token": calls[0]},
        {"type": "auth", "token": calls[1]},
    ]
    assert sockets[1][0].endswith("?auth=1&since=1")
    closes = [d for t, d in await page.evaluate("events") if t == "close"]
    assert closes[0]["reason"] == "token expired: reconnect with a new token"

    guest = await harness(chromium, server.http_url, errors, client_js=False)
    await guest.evaluate(f"start('board', {{url: {url}}})")
    stopped = await wait_status(guest, "closed")
    assert stopped["code"] == 4403


async def test_forged_tokens_end_in_a_stopped_client(chromium: Browser, serve: Any) -> None:
    """Every token getToken() gives is refused (4401): MAX_TOKEN_FAILURES sockets, then
    status closed with the server's reason."""
    server = serve()
    await asyncio.to_thread(make_user, server, "alice")
    good = await asyncio.to_thread(token_for, server, "alice")
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    errors: list[str] = []
    page = await harness(chromium, server.http_url, errors, client_js=False)
    sockets = sent_frames(page)
    url = json.dumps(server.ws_url("lobby"))
    await page.evaluate(
        f"start('lobby', {{url: {url}, "
        f"getToken: scriptedGetToken([{json.dumps(forged)}]), {FAST}}})"
    )
    stopped = await wait_status(page, "closed")
    limit = await page.evaluate("roomcast.MAX_TOKEN_FAILURES")
    assert stopped["code"] == 4401 and stopped["reason"].startswith("invalid token")
    assert len(sockets) == limit and await page.evaluate("tokenCalls") == limit


# -- a scripted server: the client's side of the protocol ------------------------------------

ORIGIN = "http://roomcast.test"
SOCKET_URL = "ws://roomcast.test/ws/chat/lobby/"


class ScriptedServer:
    """Plays the server's auth part of docs/protocol.md for each socket the page opens:
    ``answer(token, n)`` says what to do with the auth frame carrying ``token`` on the
    ``n``-th socket: ``"join"``, ``"join-then-expire"`` (joined, then 4501) or a close
    code (4401, 4403)."""

    def __init__(self, answer: Callable[[str, int], Any]) -> None:
        self.answer = answer
        self.sockets: list[dict[str, Any]] = []
        self._closing: set[asyncio.Task[None]] = set()

    def _close(self, ws: WebSocketRoute, code: int, reason: str) -> None:
        # on_message handlers are not coroutines; the close is (kept until done).
        task = asyncio.ensure_future(ws.close(code=code, reason=reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def install(self, page: Page) -> None:
        await page.route_web_socket(re.compile(r"^ws://roomcast\.test/"), self.handle)

    def handle(self, ws: WebSocketRoute) -> None:
        record: dict[str, Any] = {"url": ws.url, "frames": []}
        self.sockets.append(record)
        n = len(self.sockets)

        def on_message(message: str | bytes) -> None:
            frame = json.loads(message)
            record["frames"].append(frame)
            if len(record["frames"]) > 1:
                if frame.get("type") == "message":
                    ws.send(json.dumps({"type": "ack", "client_id": frame["client_id"], "seq": 9}))
                return
            if frame.get("type") != "auth":
                self._close(ws, 4401, "send the auth frame first")
                return
            what = self.answer(frame["token"], n)
            if what in ("join", "join-then-expire"):
                ws.send(
                    json.dumps({"type": "joined", "room": "lobby", "seq": 3, "recovered": True})
                )
                if what == "join-then-expire":
                    self._close(ws, 4501, "token expired: reconnect with a new token")
            else:
                reasons = {4401: "invalid token", 4403: "not allowed in this room"}
                self._close(ws, what, reasons[what])

        ws.on_message(on_message)


async def scripted(
    browser: Browser, answer: Callable[[str, int], Any]
) -> tuple[Page, ScriptedServer]:
    server = ScriptedServer(answer)
    page = await harness(browser, ORIGIN, [], client_js=True)
    await server.install(page)
    return page, server


async def test_scripted_expiry_asks_get_token_again_and_resumes(chromium: Browser) -> None:
    """4501 on a joined socket: getToken() once more, the new token first on the new
    socket, since= kept; it does not count as a failure."""
    page, server = await scripted(
        chromium, lambda token, n: "join-then-expire" if n < 4 else "join"
    )
    await page.evaluate(
        f"start('lobby', {{url: {json.dumps(SOCKET_URL)}, since: 3, "
        f"getToken: scriptedGetToken(['t1', 't2', 't3', 't4', 't5', 't6']), {FAST}}})"
    )
    await page.wait_for_function("client.status === 'open' && tokenCalls === 4", timeout=WAIT_MS)
    assert [s["frames"][0] for s in server.sockets] == [
        {"type": "auth", "token": f"t{n}"} for n in (1, 2, 3, 4)
    ]
    assert all(s["url"] == SOCKET_URL + "?auth=1&since=3" for s in server.sockets)
    closes = [d["code"] for t, d in await page.evaluate("events") if t == "close"]
    assert closes == [4501, 4501, 4501]
    assert await page.evaluate("client.send('after')") == 9
    assert server.sockets[-1]["frames"][1]["message"] == "after"


async def test_scripted_refusals_stop_after_max_failures(chromium: Browser) -> None:
    """Every token refused with 4401: one getToken() and one socket per attempt, then
    status closed with the server's reason; nothing more after that."""
    page, server = await scripted(chromium, lambda token, n: 4401)
    await page.evaluate(
        f"start('lobby', {{url: {json.dumps(SOCKET_URL)}, "
        f"getToken: scriptedGetToken(['bad']), {FAST}}})"
    )
    stopped = await wait_status(page, "closed")
    limit = await page.evaluate("roomcast.MAX_TOKEN_FAILURES")
    assert (stopped["code"], stopped["reason"]) == (4401, f"invalid token ({limit} times in a row)")
    await page.wait_for_timeout(300)  # a loop would have opened more sockets by now
    assert len(server.sockets) == limit and await page.evaluate("tokenCalls") == limit
    delays = [
        d["delayMs"] for t, d in await page.evaluate("events") if t == "status" and "delayMs" in d
    ]
    assert len(delays) == limit - 1


async def test_scripted_recovery_after_refusals_resets_the_count(chromium: Browser) -> None:
    """Refused, refused, accepted: open, and the failure count starts again at 0."""
    page, server = await scripted(chromium, lambda token, n: "join" if token == "good" else 4401)
    await page.evaluate(
        f"start('lobby', {{url: {json.dumps(SOCKET_URL)}, "
        f"getToken: scriptedGetToken(['bad', 'throw', 'good']), {FAST}}})"
    )
    await wait_status(page, "open")
    assert await page.evaluate("tokenCalls") == 3
    assert len(server.sockets) == 2  # 'throw' opened none
    assert await page.evaluate("client._tokenFailures") == 0


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (4501, "token expired: reconnect with a new token"),
        (4401, "invalid token"),
        (4403, "not allowed in this room"),
    ],
)
async def test_scripted_a_fixed_token_is_not_retried(
    chromium: Browser, code: int, reason: str
) -> None:
    """With {token} and no getToken(), nothing can make a new token: the client stops at
    the first 4401 or 4501 (and at 4403, as always) instead of sending the same one again."""
    answer = (lambda token, n: "join-then-expire") if code == 4501 else (lambda token, n: code)
    page, server = await scripted(chromium, answer)
    await page.evaluate(
        f"start('lobby', {{url: {json.dumps(SOCKET_URL)}, token: 'fixed', {FAST}}})"
    )
    stopped = await wait_status(page, "closed")
    assert (stopped["code"], stopped["reason"]) == (code, reason)
    await page.wait_for_timeout(300)
    assert len(server.sockets) == 1
    assert server.sockets[0]["frames"] == [{"type": "auth", "token": "fixed"}]


async def test_scripted_close_while_waiting_for_a_token(chromium: Browser) -> None:
    """close() while getToken() is pending: its answer is dropped, no socket is opened."""
    page, server = await scripted(chromium, lambda token, n: "join")
    await page.evaluate(
        "window.release = null; "
        f"start('lobby', {{url: {json.dumps(SOCKET_URL)}, "
        "getToken: () => new Promise((resolve) => { window.release = resolve; })})"
    )
    await page.wait_for_function("window.release !== null", timeout=WAIT_MS)
    await page.evaluate("client.close(); release('late')")
    await page.wait_for_timeout(200)
    assert server.sockets == []
    assert await page.evaluate("client.status") == "closed"
