"""The Origin check on real ``roomcast serve`` processes: only the site's own origin (and
origins listed in ``ROOMCAST_ALLOWED_ORIGINS``) may open a socket that carries a session.

A handshake with the session cookie of a logged-in user is what a browser sends for a
page of any origin, so each refused origin below is a page that could otherwise post as
that user. Chromium, driving a page on another port of the same host, is in the last test.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.conftest import free_port
from tests.e2e.conftest import Client, connect
from tests.e2e.test_example import example_env, example_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.e2e

#: What the server logs, once, for each handshake it refuses (roomcast.security).
REFUSED = "WebSocket handshake refused"

# Longest wait for something a page should show; only a failing test waits this long.
WAIT_MS = 10_000


def session_cookie(server: Any, username: str) -> str:
    """A ``Cookie`` header value with the session of a new user ``username``, logged in."""
    code = (
        "from django.contrib.auth import get_user_model; from django.test import Client; "
        f"user = get_user_model().objects.create_user({username!r}, password='pw-12345678'); "
        "client = Client(); client.force_login(user); print(client.cookies['sessionid'].value)"
    )
    result = server.cli("manage", "shell", "--no-imports", "-c", code)
    assert result.returncode == 0, result.stderr
    return f"sessionid={result.stdout.strip()}"


async def refused(url: str, headers: dict[str, str]) -> InvalidStatus:
    """The refusal of a handshake with ``headers``; fails if the server accepted it."""
    with pytest.raises(InvalidStatus) as info:
        ws = await websockets.connect(url, additional_headers=headers, open_timeout=10)
        await ws.close()  # accepted: close it before pytest.raises reports the failure
    return info.value


async def accepted(url: str, headers: dict[str, str]) -> Client:
    """A v1 client connected with ``headers``, its ``joined`` frame read."""
    client = await connect(url, additional_headers=headers)
    await client.recv_type("joined")
    return client


async def test_only_the_sites_own_origin_gets_the_session(serve):
    """Another port, scheme or host name of the same machine is another origin: refused
    with 403, one log line each, no traceback; the site's own origin posts as the user."""
    server = serve(ROOMCAST_LOG_LEVEL="DEBUG")
    cookie = session_cookie(server, "alice")
    url = server.ws_url("lobby")
    others = [
        f"http://127.0.0.1:{free_port()}",  # another app on this host, e.g. a dev server
        "http://127.0.0.1",  # port 80
        f"https://127.0.0.1:{server.port}",
        f"http://localhost:{server.port}",  # an allowed host, but not the one connected to
        f"http://127.0.0.1.evil.example:{server.port}",
        "null",  # sandboxed iframes, file: and data: pages
        "https://evil.example",
    ]
    for origin in others:
        refusal = await refused(url, {"Origin": origin, "Cookie": cookie})
        assert refusal.response.status_code == 403, origin

    own = await accepted(url, {"Origin": server.http_url, "Cookie": cookie})
    await own.send({"type": "message", "message": "from my own page", "client_id": "c1"})
    (message,) = await own.messages(1)
    assert (message["seq"], message["user"]) == (1, "alice")
    # A client that sends no Origin is not a browser, which alone sends cookies unasked.
    cli = await accepted(url, {"Cookie": cookie})
    await cli.ws.close()
    await own.ws.close()

    log = server.log()
    assert "Traceback" not in log and "ERROR" not in log, log
    lines = [line for line in log.splitlines() if REFUSED in line]
    assert len(lines) == len(others), lines
    assert f"Origin 'http://localhost:{server.port}'" in lines[3], lines[3]
    assert " DEBUG " in lines[3], lines[3]  # opt-in noise: any page can cause one


async def test_listed_origins_are_allowed_besides_the_own(serve):
    """ROOMCAST_ALLOWED_ORIGINS adds exact origins and *. subdomains; nothing else."""
    server = serve(ROOMCAST_ALLOWED_ORIGINS="http://localhost:3000, https://*.example.com")
    url = server.ws_url("lobby")
    for origin in (
        server.http_url,
        "http://localhost:3000",
        "https://chat.example.com",
        "https://a.b.example.com",
        "https://example.com",
    ):
        client = await accepted(url, {"Origin": origin})
        await client.ws.close()
    for origin in (
        "http://localhost:3001",
        "https://localhost:3000",
        "http://chat.example.com",
        "https://chat.example.com:8443",
        "https://badexample.com",
        "null",
    ):
        assert (await refused(url, {"Origin": origin})).response.status_code == 403, origin


async def test_every_origin_only_when_asked_and_with_a_warning(serve):
    """``*`` lets every origin in (null too), and roomcast serve says so as it starts;
    ``null`` alone lets sandboxed pages in, with its own warning."""
    server = serve(ROOMCAST_ALLOWED_ORIGINS="*")
    for origin in ("https://evil.example", "null"):
        client = await accepted(server.ws_url("lobby"), {"Origin": origin})
        await client.ws.close()
    log = server.log()
    assert "roomcast.W001" in log and "every origin" in log, log

    server = serve(ROOMCAST_ALLOWED_ORIGINS="null")
    client = await accepted(server.ws_url("lobby"), {"Origin": "null"})
    await client.ws.close()
    await refused(server.ws_url("lobby"), {"Origin": "https://evil.example"})
    assert "roomcast.W002" in server.log() and "roomcast.W001" not in server.log()


@pytest.mark.parametrize(
    ("value", "fix"),
    [
        ("example.com", "'https://example.com'"),
        (".example.com", "'https://*.example.com'"),
        ("localhost:3000", "'http://localhost:3000'"),
        ("https://example.com/", "'https://example.com'"),
        ("ws://example.com", "'http://example.com'"),
    ],
)
def test_a_host_name_instead_of_an_origin_stops_the_server(serve, value, fix):
    """The old form (a host name, any scheme and port) neither widens nor is dropped:
    roomcast serve stops with the origin to write instead."""
    with pytest.raises(RuntimeError, match="did not start") as info:
        serve(ROOMCAST_ALLOWED_ORIGINS=f"https://ok.example, {value}")
    message = str(info.value)
    assert "roomcast.E011" in message and repr(value) in message and fix in message, message


# Opens a roomcast.v1 socket, posts one message once open, writes down what happens.
POSTING_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>poster</title></head><body><script>
  window.probe = {events: [], done: false};
  const ws = new WebSocket(URL_JSON, ["roomcast.v1"]);
  ws.onopen = () => {
    probe.events.push("open");
    ws.send(JSON.stringify({type: "message", message: TEXT_JSON, client_id: "p1"}));
  };
  ws.onmessage = (e) => {
    const frame = JSON.parse(e.data);
    if (frame.type === "message") { probe.events.push("message " + frame.user); ws.close(1000); }
  };
  ws.onerror = () => probe.events.push("error");
  ws.onclose = (e) => { probe.events.push("close " + e.code); probe.done = true; };
</script></body></html>
"""


@pytest.mark.browser
async def test_page_on_another_port_cannot_post_as_the_logged_in_user(browser, serve):
    """Logged in to roomcast in Chromium, the user opens a page on another port of the same
    host: the browser would send the session cookie (cookies ignore ports), the server
    refuses the socket. The same page from the site's own origin posts as the user."""
    server = serve()
    result = server.cli(
        *("manage", "createsuperuser", "--noinput", "--username", "admin", "--email", "a@x.org"),
        env={"DJANGO_SUPERUSER_PASSWORD": "pw-12345678"},
    )
    assert result.returncode == 0, result.stderr
    context = await browser.new_context(permissions=["local-network-access"])
    page = await context.new_page()
    await page.goto(server.http_url + "/admin/login/?next=/chat/")
    await page.locator("#id_username").fill("admin")
    await page.locator("#id_password").fill("pw-12345678")
    await page.locator("input[type=submit]").click()
    await page.wait_for_url(server.http_url + "/chat/", timeout=WAIT_MS)

    async def post_from(page_url: str, text: str) -> list[str]:
        html = POSTING_PAGE.replace("URL_JSON", json.dumps(server.ws_url("lobby")))
        html = html.replace("TEXT_JSON", json.dumps(text))
        poster = await context.new_page()
        await poster.route(
            page_url, lambda route: route.fulfill(body=html, content_type="text/html")
        )
        await poster.goto(page_url)
        await poster.wait_for_function("probe.done", timeout=WAIT_MS)
        return list(await poster.evaluate("probe.events"))

    other = f"http://127.0.0.1:{free_port()}/"
    assert await post_from(other, "posted by another site") == ["error", "close 1006"]
    own = await post_from(server.http_url + "/poster/", "posted by my page")
    assert own == ["open", "message admin", "close 1000"]
    # Stored: only the own page's post.
    reader = await connect(server.ws_url("lobby"))
    joined = await reader.recv_type("joined")
    history = await reader.messages(joined["seq"])
    assert [m["message"] for m in history] == ["posted by my page"]
    await reader.ws.close()
    assert "Traceback" not in server.log()


@pytest.mark.redis
async def test_the_example_project_takes_its_own_pages_sockets_only(request):
    """example/ (uvicorn, its own settings, DEBUG): a page it served connects, a page on
    another port of the host is refused."""
    port = request.getfixturevalue("example_server")  # imported from test_example.py
    url = f"ws://127.0.0.1:{port}/ws/chat/lobby/"
    client = await accepted(url, {"Origin": f"http://127.0.0.1:{port}"})
    await client.ws.close()
    await refused(url, {"Origin": f"http://127.0.0.1:{free_port()}"})
