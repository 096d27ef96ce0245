"""The chat pages' context: the URLs and the frame limit their scripts are given.

The browser side of these is tested in tests/e2e/test_browser.py; here, what the views
put in the pages, under a URL prefix and a script prefix, and a check that no template
or roomcast.js hard-codes a path.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from channels.testing import HttpCommunicator
from django.core.asgi import get_asgi_application
from django.test import Client, override_settings

from roomcast import views
from roomcast.routing import websocket_urlpatterns

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.urls")]

SRC = Path(views.__file__).resolve().parent


def page_data(html: str) -> dict[str, Any]:
    """The ``roomcast-page`` json_script of a page."""
    match = re.search(r'<script id="roomcast-page" type="application/json">(.*?)</script>', html)
    assert match, html
    return dict(json.loads(match.group(1)))


def test_room_page_gets_socket_path_client_url_and_frame_limit() -> None:
    """The room page's data: its socket's path, roomcast.js's URL and MAX_FRAME_BYTES."""
    response = Client().get("/chat/" + urllib.parse.quote("技术 交流") + "/")
    assert response.status_code == 200
    assert page_data(response.content.decode()) == {
        "room": "技术 交流",
        "clientUrl": "/static/roomcast/roomcast.js",
        "socketPath": "/ws/chat/%E6%8A%80%E6%9C%AF%20%E4%BA%A4%E6%B5%81/",
        "maxFrameBytes": 16384,
    }


@override_settings(ROOMCAST={"MAX_FRAME_BYTES": 1000})
def test_room_page_gets_the_configured_frame_limit() -> None:
    """MAX_FRAME_BYTES reaches the page, which refuses larger frames before sending."""
    response = Client().get("/chat/lobby/")
    assert page_data(response.content.decode())["maxFrameBytes"] == 1000


def test_socket_path_is_the_websocket_route() -> None:
    """The path the page is given (minus the script prefix) is the one routing serves, with
    the room name the consumer would get back."""
    room = "café 技术"
    path = views.SOCKET_PATH.format(room=urllib.parse.quote(room, safe=""))
    # The route is matched against the decoded path, as the ASGI server gives it.
    match = websocket_urlpatterns[0].pattern.match(urllib.parse.unquote(path))
    assert match is not None
    assert match[2] == {"room_name": room}


@pytest.mark.django_db(transaction=True)
async def test_pages_follow_the_script_prefix() -> None:
    """A site mounted under /sub (ASGI root_path, behind a proxy): links, script and socket
    are under it. Through Django's ASGI handler, which sets the script prefix."""
    app = get_asgi_application()

    async def get(path: str) -> str:
        communicator = HttpCommunicator(app, "GET", "/sub" + path)
        communicator.scope["root_path"] = "/sub"
        response = await communicator.get_response()
        # Let the handler finish (it listens for the disconnect, then closes the body file).
        await communicator.send_input({"type": "http.disconnect"})
        await communicator.wait()
        assert response["status"] == 200, response
        return bytes(response["body"]).decode()

    room = await get("/chat/lobby/")
    data = page_data(room)
    assert data["socketPath"] == "/sub/ws/chat/lobby/"
    # (clientUrl is {% static %}'s: Django prefixes a relative STATIC_URL with the script
    # prefix of the first request that reads it, so in this test process, none.)
    assert 'href="/sub/chat/"' in room
    assert page_data(await get("/chat/")) == {"roomUrl": ["/sub/chat/", "/"]}


@pytest.mark.urls("tests.prefix_urls")
def test_pages_follow_the_urlconf_prefix() -> None:
    """roomcast.urls included under rt/: the index form and the bad-name page's form build
    /rt/chat/<room>/, the room page links back to /rt/chat/."""
    client = Client()
    index = client.get("/rt/chat/")
    assert page_data(index.content.decode()) == {"roomUrl": ["/rt/chat/", "/"]}
    bad = client.get("/rt/chat/" + "x" * 201 + "/")
    assert bad.status_code == 400
    assert page_data(bad.content.decode()) == {"roomUrl": ["/rt/chat/", "/"]}
    room = client.get("/rt/chat/lobby/")
    assert 'href="/rt/chat/"' in room.content.decode()
    assert page_data(room.content.decode())["socketPath"] == "/ws/chat/lobby/"


# Absolute paths written into a template or script: "/chat/...", '/ws/...', `/api/...`.
_ABSOLUTE_PATH = re.compile(r"""["'`]/(?!/)[^"'`\s]*""")


@pytest.mark.parametrize(
    "name",
    [
        "templates/roomcast/base.html",
        "templates/roomcast/index.html",
        "templates/roomcast/room.html",
        "static/roomcast/roomcast.js",
    ],
)
def test_no_hard_coded_paths(name: str) -> None:
    """Pages get their URLs from {% url %}, {% static %} or the view, never as literals (a
    page that assumed /chat/ broke under any other prefix). roomcast.js's one literal is
    defaultUrl's, for pages of a site whose routes are at the root."""
    text = re.sub(r"\{%.*?%\}", "", (SRC / name).read_text())
    if name.endswith(".js"):
        # Comments (usage examples) are not code.
        text = re.sub(r"/\*.*?\*/|^\s*//[^\n]*", "", text, flags=re.DOTALL | re.MULTILINE)
    found = _ABSOLUTE_PATH.findall(text)
    assert found == (["`/ws/chat/${encodeURIComponent(room)}/"] if name.endswith(".js") else [])


def test_the_index_lists_a_private_room_only_to_those_inside_it():
    """Private rooms' names stay out of the index for guests and non-members (the socket
    and the HTTP API do not tell them either); members and staff see them."""
    from django.contrib.auth.models import User

    from roomcast import rooms

    alice = User.objects.create_user("alice", password="pw-alice-1")
    User.objects.create_user("bob", password="pw-bob-1")
    User.objects.create_user("sam", password="pw-sam-1", is_staff=True)
    rooms.create_room("plaza")
    rooms.create_room("news", visibility="read_only")
    rooms.create_room("secret board", visibility="private")
    rooms.add_members("secret board", [alice])

    def listed(username: str | None) -> set[str]:
        client = Client()
        if username:
            assert client.login(username=username, password=f"pw-{username}-1")
        html = client.get("/chat/").content.decode()
        return {name for name in ("plaza", "news", "secret board") if f">{name}<" in html}

    assert listed(None) == {"plaza", "news"}
    assert listed("bob") == {"plaza", "news"}
    assert listed("alice") == {"plaza", "news", "secret board"}
    assert listed("sam") == {"plaza", "news", "secret board"}
