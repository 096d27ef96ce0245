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
        "templates/roomcast/app_base.html",
        "templates/roomcast/app.html",
        "templates/roomcast/login.html",
        "static/roomcast/roomcast.js",
        "static/roomcast/connection.js",
        "static/roomcast/app.js",
        "static/roomcast/app_room.js",
        "static/roomcast/app_messages.js",
    ],
)
def test_no_hard_coded_paths(name: str) -> None:
    """Pages get their URLs from {% url %}, {% static %} or the view, never as literals (a
    page that assumed /chat/ broke under any other prefix). roomcast.js's one literal is
    defaultUrl's, and connection.js's its default "/ws/", for pages of a site whose routes
    are at the root; the app's page passes the view's socket path instead."""
    text = re.sub(r"\{%.*?%\}", "", (SRC / name).read_text())
    if name.endswith(".js"):
        # Comments (usage examples) are not code.
        text = re.sub(r"/\*.*?\*/|^\s*//[^\n]*", "", text, flags=re.DOTALL | re.MULTILINE)
    found = _ABSOLUTE_PATH.findall(text)
    defaults = {
        "static/roomcast/roomcast.js": ["`/ws/chat/${encodeURIComponent(room)}/"],
        "static/roomcast/connection.js": ['"/ws/'],
    }
    assert found == defaults.get(name, [])


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


# -- the web app (roomcast.app_views) -------------------------------------------------------

APP_PASSWORD = "pw-app-user-1"


def app_data(html: str) -> dict[str, Any]:
    """The ``roomcast-app`` json_script of an app page."""
    match = re.search(r'<script id="roomcast-app" type="application/json">(.*?)</script>', html)
    assert match, html
    return dict(json.loads(match.group(1)))


def user_client(name: str, **extra: Any) -> Client:
    """A test client logged in as a new user ``name``."""
    from django.contrib.auth.models import User

    User.objects.create_user(name, password=APP_PASSWORD, **extra)
    client = Client()
    assert client.login(username=name, password=APP_PASSWORD)
    return client


def guest_client(name: str = "") -> Client:
    client = Client()
    response = client.post("/guest/", {"name": name})
    assert response.status_code == 302, response.content
    return client


def test_app_sends_a_visitor_to_the_login_page_and_back() -> None:
    """Neither logged in nor a guest: the rooms redirect to the login page with next=,
    and logging in there (Django's username/password form) comes back."""
    from django.contrib.auth.models import User

    User.objects.create_user("alice", password=APP_PASSWORD)
    client = Client()
    room = "/rooms/" + urllib.parse.quote("café") + "/"
    response = client.get(room)
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=" + urllib.parse.quote(room)
    page = client.get(response["Location"]).content.decode()
    assert 'name="username"' in page and 'name="password"' in page
    assert 'id="guest-form"' in page
    assert f'name="next" value="{room}"' in page
    bad = client.post("/login/", {"username": "alice", "password": "wrong", "next": room})
    assert bad.status_code == 200
    assert 'id="login-error"' in bad.content.decode()
    good = client.post("/login/", {"username": "alice", "password": APP_PASSWORD, "next": room})
    assert good.status_code == 302 and good["Location"] == room
    assert client.get(room).status_code == 200
    # Elsewhere than this site, next= is not followed.
    client.logout()
    away = client.post(
        "/login/", {"username": "alice", "password": APP_PASSWORD, "next": "https://evil.example/"}
    )
    assert away["Location"] == "/rooms/"


def test_logout_is_a_post_and_ends_on_the_login_page() -> None:
    """Log out with a POST (a link or an image cannot log anyone out); the rooms then ask
    for a login again."""
    client = user_client("alice")
    assert client.get("/logout/").status_code == 405
    response = client.post("/logout/")
    assert response.status_code == 302 and response["Location"] == "/login/"
    assert client.get("/rooms/").status_code == 302


def test_app_page_data_for_a_user() -> None:
    """What app.js is given: the user, the /ws/ socket's path, the client's URL, the
    limits, and the rooms of the sidebar (the open room among them, even unused)."""
    client = user_client("alice")
    data = app_data(client.get("/rooms/" + urllib.parse.quote("技术 交流") + "/").content.decode())
    assert data == {
        "room": "技术 交流",
        "user": "alice",
        "isUser": True,
        "isModerator": False,
        "mayPost": True,
        "rooms": [{"name": "技术 交流", "visibility": "public", "lastSeq": 0}],
        "roomUrl": ["/rooms/", "/"],
        "socketPath": "/ws/",
        "connectionUrl": "/static/roomcast/connection.js",
        "maxFrameBytes": 16384,
        "editWindowSecs": 900.0,
        "typingIntervalSecs": 2.0,
    }
    assert app_data(client.get("/rooms/").content.decode())["room"] is None


def test_app_socket_path_is_the_websocket_route() -> None:
    """The path app.js opens (minus the script prefix) is the /ws/ route."""
    from roomcast import app_views

    matches = [
        route for route in websocket_urlpatterns if route.pattern.match(app_views.MUX_SOCKET_PATH)
    ]
    assert [str(route.pattern) for route in matches] == ["ws/"]


def test_the_sidebar_lists_what_the_visitor_may_see() -> None:
    """Public and read-only rooms for everyone; a private room for its members and staff;
    users' own channels for no one."""
    from roomcast import rooms
    from roomcast.models import Room

    rooms.create_room("plaza")
    rooms.create_room("news", visibility="read_only")
    rooms.create_room("secret board", visibility="private")
    Room.objects.create(name="user/1")
    alice = user_client("alice")
    rooms.add_members("secret board", ["alice"])

    def listed(client: Client) -> list[str]:
        return [r["name"] for r in app_data(client.get("/rooms/").content.decode())["rooms"]]

    assert listed(guest_client()) == ["news", "plaza"]
    assert listed(user_client("bob")) == ["news", "plaza"]
    assert listed(alice) == ["news", "plaza", "secret board"]
    assert listed(user_client("sam", is_staff=True)) == ["news", "plaza", "secret board"]
    html = user_client("carol").get("/rooms/").content.decode()
    assert "secret board" not in html


def test_guests_enter_with_a_name_of_their_own() -> None:
    """The guest form keeps "guest-<name>-<4 hex>" in the session, where the room socket
    reads it (so it must pass the socket's check); no name gives guest-xxxxxx; a name
    the rule refuses is a 400 with the reason, and nothing is kept."""
    from roomcast.security import GUEST_NAME_SESSION_KEY, is_guest_name

    client = guest_client("Zoë")
    name = client.session[GUEST_NAME_SESSION_KEY]
    assert re.fullmatch(r"guest-Zoë-[0-9a-f]{4}", name), name
    assert app_data(client.get("/rooms/").content.decode())["user"] == name
    longest = guest_client("x" * 20).session[GUEST_NAME_SESSION_KEY]
    assert is_guest_name(longest)
    assert re.fullmatch(r"guest-[0-9a-f]{6}", guest_client("").session[GUEST_NAME_SESSION_KEY])
    for bad in ("a b", "x" * 21, "<b>", "a\u202eb"):
        refused = Client()
        response = refused.post("/guest/", {"name": bad})
        assert response.status_code == 400, bad
        assert 'id="guest-error"' in response.content.decode()
        assert GUEST_NAME_SESSION_KEY not in refused.session
    # A guest is sent where they were going.
    response = Client().post("/guest/", {"name": "sam", "next": "/rooms/lobby/"})
    assert response["Location"] == "/rooms/lobby/"


@override_settings(ROOMCAST={"ALLOW_ANONYMOUS": False})
def test_no_guests_while_anonymous_access_is_off() -> None:
    """ALLOW_ANONYMOUS off: the login page has no guest form and the guest form's POST
    is refused."""
    client = Client()
    assert 'id="guest-form"' not in client.get("/login/").content.decode()
    response = client.post("/guest/", {"name": "sam"})
    assert response.status_code == 403
    assert client.get("/rooms/").status_code == 302


def test_create_a_room_from_the_sidebar() -> None:
    """Any Unicode name, put in canonical form; a public room that exists is opened; a
    private one is made with its creator as admin; refusals come back with the reason."""
    from roomcast.models import Room, RoomMember

    alice = user_client("alice")
    response = alice.post("/rooms/", {"name": "  cafe\u0301   技术  "})
    assert response.status_code == 302
    assert response["Location"] == "/rooms/" + urllib.parse.quote("café 技术") + "/"
    assert Room.objects.get(name="café 技术").visibility == "public"
    assert alice.post("/rooms/", {"name": "café 技术"}).status_code == 302  # exists: open it

    response = alice.post("/rooms/", {"name": "board", "visibility": "private"})
    assert response.status_code == 302
    assert RoomMember.objects.get(room__name="board", user__username="alice").role == "admin"
    data = app_data(alice.get(response["Location"]).content.decode())
    assert data["isModerator"] is True
    assert [r["name"] for r in data["rooms"]] == ["board", "café 技术"]

    taken = user_client("bob").post("/rooms/", {"name": "board", "visibility": "private"})
    assert taken.status_code == 409
    assert "exists already" in taken.content.decode()
    assert guest_client().post("/rooms/", {"name": "g", "visibility": "private"}).status_code == 403
    assert alice.post("/rooms/", {"name": "x", "visibility": "secret"}).status_code == 400
    for bad in ("", "a/b", "x" * 201, "a\u202eb"):
        response = alice.post("/rooms/", {"name": bad})
        assert response.status_code == 400, bad
        assert 'id="create-error"' in response.content.decode()
    assert not Room.objects.filter(name="g").exists()


def test_app_room_names_canonical_and_bad() -> None:
    """A room URL in another form than the canonical name redirects to it; a name the
    rule refuses is a 400 page with the reason."""
    client = guest_client()
    response = client.get("/rooms/" + urllib.parse.quote("cafe\u0301") + "/")
    assert response.status_code == 302
    assert response["Location"] == "/rooms/" + urllib.parse.quote("café") + "/"
    bad = client.get("/rooms/" + "x" * 201 + "/")
    assert bad.status_code == 400
    assert 'id="create-error"' in bad.content.decode()


def test_guests_may_not_post_where_the_room_says_so() -> None:
    """mayPost follows the access policy: a read-only room is read-only for a guest."""
    from roomcast import rooms

    rooms.create_room("news", visibility="read_only")
    assert app_data(guest_client().get("/rooms/news/").content.decode())["mayPost"] is False


@pytest.mark.urls("tests.prefix_urls")
def test_app_pages_follow_the_urlconf_prefix() -> None:
    """roomcast.urls under rt/: the login, the rooms and their links are under /rt/."""
    client = Client()
    response = client.get("/rt/rooms/")
    assert response["Location"] == "/rt/login/?next=/rt/rooms/"
    assert 'action="/rt/guest/"' in client.get("/rt/login/").content.decode()
    client.post("/rt/guest/", {"name": "sam"})
    html = client.get("/rt/rooms/lobby/").content.decode()
    assert app_data(html)["roomUrl"] == ["/rt/rooms/", "/"]
    assert 'href="/rt/rooms/lobby/"' in html
    assert 'action="/rt/rooms/"' in html
