"""The HTTP management API (roomcast.api): tokens, rooms, members, with an API key.

Django's sync test client (WSGI) against tests.settings (roomcast.urls at the root).
Hostile bodies get the push API's answers; a fuzz run checks that no body is a 500.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client, override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roomcast import auth, rooms
from roomcast.api import TOKEN_TTL_MAX_SECS
from roomcast.models import Message, Room, RoomMember
from roomcast.signals import access_changed

pytestmark = pytest.mark.django_db(transaction=True)

API_KEY = "test-api-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def call(
    method: str, path: str, body: Any = None, *, raw: bytes | str | None = None, **headers: str
):
    """``method`` ``path`` with the API key and ``body`` as JSON (or ``raw`` bytes)."""
    data = raw if raw is not None else ("" if body is None else json.dumps(body))
    client = Client()
    return client.generic(
        method, path, data, content_type="application/json", headers={**AUTH, **headers}
    )


def refused(response, status: int, code: str) -> dict[str, Any]:
    """A JSON error with ``status`` and ``code``; returns the body."""
    assert response.status_code == status, response.content[:300]
    body = response.json()
    assert body["error"] == code and isinstance(body["detail"], str), body
    return body


@pytest.fixture
def users() -> dict[str, Any]:
    User = get_user_model()
    return {
        "alice": User.objects.create_user("alice", password="pw"),
        "bob": User.objects.create_user("bob"),
        "carol": User.objects.create_user("carol", is_active=False),
    }


@pytest.fixture
def changes() -> Iterator[list[dict[str, Any]]]:
    """The access_changed signals sent (after commit), as {room, user_id} dicts."""
    sent: list[dict[str, Any]] = []

    def receiver(sender: Any, room: str | None = None, user_id: int | None = None, **kw: Any):
        sent.append({"room": room, "user_id": user_id})

    access_changed.connect(receiver, weak=False)
    yield sent
    access_changed.disconnect(receiver)


# -- the key -----------------------------------------------------------------------------

ENDPOINTS = [
    ("POST", "/api/tokens", {"user": "alice"}),
    ("POST", "/api/rooms", {"name": "x"}),
    ("GET", "/api/rooms/lobby", None),
    ("PATCH", "/api/rooms/lobby", {"visibility": "private"}),
    ("POST", "/api/rooms/lobby/members", {"users": ["alice"]}),
    ("DELETE", "/api/rooms/lobby/members/alice", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_every_endpoint_needs_the_key(users, method, path, body):
    """No key, a wrong key, a key with another scheme: 401 with WWW-Authenticate; nothing
    is created or changed."""
    rooms.create_room("lobby")
    for header in ("", "Bearer wrong", f"Basic {API_KEY}", f"Bearer {API_KEY}x", "Bearer"):
        response = call(method, path, body, Authorization=header)
        refused(response, 401, "unauthorized")
        assert response["WWW-Authenticate"] == "Bearer"
    assert list(Room.objects.values_list("name", "visibility")) == [("lobby", "public")]
    assert RoomMember.objects.count() == 0


@override_settings(ROOMCAST={"API_KEYS": []})
@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_without_keys_the_api_is_off(method, path, body):
    refused(call(method, path, body), 403, "api_disabled")


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_other_methods_are_405(method, path, body):
    other = "PUT" if method != "PUT" else "POST"
    assert call(other, path, body).status_code == 405


# -- tokens ------------------------------------------------------------------------------


def test_a_token_names_its_user_and_expires_when_it_says(users):
    before = time.time()
    response = call("POST", "/api/tokens", {"user": "alice", "ttl": 90})
    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {"token", "user", "expires_at"} and body["user"] == "alice"
    assert before + 89 <= body["expires_at"] <= time.time() + 90
    user, expires = auth.verify_token(body["token"])
    assert user == users["alice"] and int(expires) == body["expires_at"]
    # Without ttl: TOKEN_TTL_SECS (an hour by default).
    default = call("POST", "/api/tokens", {"user": "bob"}).json()
    assert abs(default["expires_at"] - (time.time() + 3600)) < 5
    assert auth.verify_token(default["token"])[0] == users["bob"]


def test_a_fractional_ttl_is_taken(users):
    assert call("POST", "/api/tokens", {"user": "alice", "ttl": 1.5}).status_code == 201


def test_tokens_for_unknown_or_inactive_users_are_refused(users):
    refused(call("POST", "/api/tokens", {"user": "nobody"}), 404, "user_not_found")
    detail = refused(call("POST", "/api/tokens", {"user": "carol"}), 409, "inactive_user")
    assert "carol" in detail["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"user": None},
        {"user": 7},
        {"user": ""},
        {"user": "x" * 255},
        {"user": "a\x00b"},
        {"user": "\ud800"},
        {"user": ["alice"]},
        {"user": "alice", "ttl": 0},
        {"user": "alice", "ttl": 0.5},
        {"user": "alice", "ttl": -60},
        {"user": "alice", "ttl": "60"},
        {"user": "alice", "ttl": True},
        {"user": "alice", "ttl": TOKEN_TTL_MAX_SECS + 1},
        {"user": "alice", "ttl": 10**400},
    ],
)
def test_bad_token_requests_are_400(users, body):
    refused(call("POST", "/api/tokens", body), 400, "invalid_frame")


@pytest.mark.parametrize("ttl", ["1e400", "-1e400", "NaN", "Infinity"])
def test_non_finite_ttls_are_400(users, ttl):
    """Python's JSON reader makes these inf and nan: refused, not a 500 from int(inf)."""
    raw = '{"user": "alice", "ttl": ' + ttl + "}"
    refused(call("POST", "/api/tokens", raw=raw), 400, "invalid_frame")


# -- rooms -------------------------------------------------------------------------------


def test_create_show_and_change_a_room(users, changes):
    response = call("POST", "/api/rooms", {"name": "board", "visibility": "private"})
    assert response.status_code == 201, response.content
    assert response.json() == {
        "name": "board",
        "visibility": "private",
        "members": [],
        "message_count": 0,
        "last_seq": 0,
    }
    assert Room.objects.get(name="board").visibility == "private"
    # Public by default; "read-only" is read_only; names are NFC-normalised, any Unicode.
    assert call("POST", "/api/rooms", {"name": "技术交流"}).json()["visibility"] == "public"
    made = call("POST", "/api/rooms", {"name": "news", "visibility": "read-only"}).json()
    assert made["visibility"] == "read_only"
    # Creating a private or read-only room re-checks sockets that may be in it already
    # (a room has no row until first used); a public one takes nothing away.
    assert changes == [{"room": "board", "user_id": None}, {"room": "news", "user_id": None}]
    changes.clear()

    patched = call("PATCH", "/api/rooms/news", {"visibility": "public"})
    assert patched.status_code == 200 and patched.json()["visibility"] == "public"
    assert changes == [{"room": "news", "user_id": None}]
    shown = call("GET", "/api/rooms/%E6%8A%80%E6%9C%AF%E4%BA%A4%E6%B5%81")
    assert shown.status_code == 200 and shown.json()["name"] == "技术交流"


def test_show_counts_messages_and_lists_members(users):
    room = rooms.create_room("ops", visibility="private")
    rooms.add_members("ops", ["bob"])
    rooms.add_members("ops", ["alice"], role="admin")
    Message.objects.bulk_create(
        [Message(room=room, seq=n, text=f"m{n}", created_at="2026-01-01T00:00Z") for n in (1, 2)]
    )
    Room.objects.filter(pk=room.pk).update(last_seq=2)
    body = call("GET", "/api/rooms/ops").json()
    assert body["members"] == [
        {"user": "alice", "role": "admin"},
        {"user": "bob", "role": "member"},
    ]
    assert (body["message_count"], body["last_seq"]) == (2, 2)


def test_unknown_rooms_are_404_and_not_created(users):
    refused(call("GET", "/api/rooms/nowhere"), 404, "room_not_found")
    refused(call("PATCH", "/api/rooms/nowhere", {"visibility": "private"}), 404, "room_not_found")
    refused(call("POST", "/api/rooms/nowhere/members", {"users": ["bob"]}), 404, "room_not_found")
    refused(call("DELETE", "/api/rooms/nowhere/members/bob"), 404, "room_not_found")
    assert Room.objects.count() == 0


def test_a_room_that_exists_is_409(users):
    rooms.create_room("lobby", visibility="read_only")
    detail = refused(call("POST", "/api/rooms", {"name": "lobby"}), 409, "room_exists")
    assert "lobby" in detail["detail"]
    assert Room.objects.get(name="lobby").visibility == "read_only"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "invalid_frame"),
        ({"name": 5}, "invalid_frame"),
        ({"name": "a/b"}, "invalid_room"),
        ({"name": "x" * 201}, "invalid_room"),
        ({"name": "lob\u200bby"}, "invalid_room"),
        ({"name": "ok", "visibility": "secret"}, "invalid_frame"),
        ({"name": "ok", "visibility": None}, "invalid_frame"),
        ({"name": "ok", "visibility": ["private"]}, "invalid_frame"),
    ],
)
def test_bad_room_bodies_are_400(body, code):
    refused(call("POST", "/api/rooms", body), 400, code)
    assert Room.objects.count() == 0


@pytest.mark.parametrize("body", [{}, {"visibility": "hidden"}, {"visibility": 1}])
def test_bad_visibility_changes_are_400(body, changes):
    rooms.create_room("lobby")
    refused(call("PATCH", "/api/rooms/lobby", body), 400, "invalid_frame")
    assert Room.objects.get(name="lobby").visibility == "public" and changes == []


def test_room_paths_follow_the_room_name_rule():
    refused(call("GET", "/api/rooms/" + "x" * 201), 400, "invalid_room")
    refused(call("GET", "/api/rooms/%E2%80%AEabc"), 400, "invalid_room")
    path = "/api/rooms/%FF"
    response = Client().get(path, headers=AUTH, REQUEST_URI=path)
    refused(response, 400, "invalid_room")


# -- members -----------------------------------------------------------------------------


def test_add_and_remove_members(users, changes):
    rooms.create_room("board", visibility="private")
    # Made private: sockets already in the unused room are re-checked.
    assert changes == [{"room": "board", "user_id": None}]
    changes.clear()
    added = call("POST", "/api/rooms/board/members", {"users": ["alice", "bob"]})
    assert added.status_code == 200, added.content
    assert added.json()["added"] == ["alice", "bob"]
    assert added.json()["members"] == [
        {"user": "alice", "role": "member"},
        {"user": "bob", "role": "member"},
    ]
    promoted = call("POST", "/api/rooms/board/members", {"users": ["alice"], "role": "admin"})
    assert promoted.json()["members"][0] == {"user": "alice", "role": "admin"}
    assert changes == []  # nothing taken away yet

    removed = call("DELETE", "/api/rooms/board/members/bob")
    assert removed.status_code == 200
    assert removed.json()["removed"] == ["bob"]
    assert removed.json()["members"] == [{"user": "alice", "role": "admin"}]
    assert changes == [{"room": "board", "user_id": users["bob"].pk}]
    # Not a member (any more): nothing removed, nothing sent.
    again = call("DELETE", "/api/rooms/board/members/bob")
    assert again.status_code == 200 and again.json()["removed"] == []
    assert len(changes) == 1
    # A demotion takes the admin's rights away: sent too.
    call("POST", "/api/rooms/board/members", {"users": ["alice"], "role": "member"})
    assert changes[-1] == {"room": "board", "user_id": users["alice"].pk}


def test_an_unknown_user_changes_nothing(users):
    rooms.create_room("board", visibility="private")
    body = {"users": ["alice", "nobody"]}
    detail = refused(call("POST", "/api/rooms/board/members", body), 404, "user_not_found")
    assert "nobody" in detail["detail"]
    assert RoomMember.objects.count() == 0
    refused(call("DELETE", "/api/rooms/board/members/nobody"), 404, "user_not_found")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"users": "alice"},
        {"users": []},
        {"users": [1]},
        {"users": [None]},
        {"users": ["alice"] * 1001},
        {"users": ["alice"], "role": "owner"},
        {"users": ["alice"], "role": None},
        {"users": [{"name": "alice"}]},
    ],
)
def test_bad_member_bodies_are_400(users, body):
    rooms.create_room("board")
    refused(call("POST", "/api/rooms/board/members", body), 400, "invalid_frame")
    assert RoomMember.objects.count() == 0


# -- hostile bodies, as the push API answers them ----------------------------------------

BODY_ENDPOINTS = [
    ("POST", "/api/tokens"),
    ("POST", "/api/rooms"),
    ("PATCH", "/api/rooms/lobby"),
    ("POST", "/api/rooms/lobby/members"),
]


@pytest.mark.parametrize(("method", "path"), BODY_ENDPOINTS)
@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        ("[" * 5000, 400, "invalid_json"),
        ('{"user": ' + '{"a":' * 2000 + "1" + "}" * 2001, 400, "invalid_json"),
        (b'{"user": "caf\xe9"}', 400, "invalid_json"),
        (b"\xff\xfe{}", 400, "invalid_json"),
        ("{" + " " * 17000 + "}", 413, "frame_too_large"),
        ("not json", 400, "invalid_json"),
        ("[1, 2]", 400, "invalid_frame"),
        ('"text"', 400, "invalid_frame"),
        ("1" * 5000, 400, "invalid_json"),
    ],
)
def test_hostile_bodies_are_named_errors(users, method, path, raw, status, code):
    rooms.create_room("lobby")
    refused(call(method, path, raw=raw), status, code)
    assert list(Room.objects.values_list("name", "visibility")) == [("lobby", "public")]


@FUZZ
@given(
    endpoint=st.sampled_from(BODY_ENDPOINTS),
    body=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from(["user", "ttl", "name", "visibility", "users", "role"])
                | st.text(max_size=8),
                children,
                max_size=4,
            )
        ),
        max_leaves=12,
    ),
)
def test_any_json_body_is_answered_or_a_named_error(endpoint, body):
    """Any JSON value sent to any endpoint: a success or a JSON error, never a 500."""
    method, path = endpoint
    response = call(method, path, raw=json.dumps(body))
    assert response.status_code in (200, 201, 400, 404, 409, 413), (body, response.content[:300])
    assert response.status_code < 300 or "error" in response.json()
