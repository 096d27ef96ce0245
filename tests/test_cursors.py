"""Read cursors and unread counts (roomcast.cursors): forward only, what counts as unread,
the bound on counting, queries per subscribe, the published ``unread`` frame, and
``GET /api/users/<name>/rooms``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from django.test import Client, override_settings
from django.utils import timezone

from roomcast import access, auth, cursors, edits, fanout, push, services
from roomcast.exceptions import PermissionDeniedError
from roomcast.models import ReadCursor, Room, RoomMember
from tests.conftest import free_port, identities, make_users

pytestmark = pytest.mark.django_db(transaction=True)

API_KEY = "test-api-key-0123456789"


@pytest.fixture
def people() -> dict[str, Any]:
    return identities(make_users(["alice", "bob", "staff"], staff={"staff"}))


@pytest.fixture
def lobby(people: dict[str, Any]) -> str:
    """Room "lobby": 1 alice, 2 bob, 3 bob, 4 system, 5 alice."""
    users = people["users"]
    for text, user in [
        ("a1", "alice"),
        ("b1", "bob"),
        ("b2", "bob"),
        (None, None),
        ("a2", "alice"),
    ]:
        if user is None:
            push.send_to_room("lobby", "system note")
        else:
            services.store_message("lobby", text, user=users[user])
    return "lobby"


def cursor_of(identity: access.Identity, room: str) -> int | None:
    row = ReadCursor.objects.filter(user_id=identity.user_id, room__name=room).first()
    return None if row is None else row.seq


def test_unread_counts_others_chat_and_system_messages_not_deleted(people, lobby):
    """alice has unread: bob's two and the system message; not her own posts, not
    deleted messages, not edit or delete events."""
    alice, bob = people["alice"], people["bob"]
    assert cursors.read_state(alice, [lobby]) == {lobby: (0, 3)}
    assert cursors.read_state(bob, [lobby]) == {lobby: (0, 3)}  # alice's two + system
    edits.edit_message(lobby, 2, "b1 edited")  # 6: an edit event
    edits.delete_message(lobby, 3)  # 7: a delete; 3 is deleted
    assert cursors.read_state(alice, [lobby]) == {lobby: (0, 2)}
    assert cursors.mark_read(alice, lobby, 2) == (2, 1)  # the system message is left


def test_the_cursor_only_moves_forward_and_is_clamped(people, lobby):
    """A smaller seq leaves the cursor where it is; a seq past the room's end stops at
    it; a negative one is 0; every device shares the one row."""
    alice = people["alice"]
    assert cursors.mark_read(alice, lobby, 3) == (3, 1)
    assert cursors.mark_read(alice, lobby, 1) == (3, 1)
    assert cursor_of(alice, lobby) == 3
    assert cursors.mark_read(alice, lobby, 10**12) == (5, 0)
    assert cursors.mark_read(alice, lobby, -4) == (5, 0)
    assert ReadCursor.objects.count() == 1
    assert cursors.mark_read(people["bob"], lobby, -4) == (0, 3)
    assert cursors.mark_read(alice, "nowhere", 3) == (0, 0)  # nothing stored: nothing to read
    assert not Room.objects.filter(name="nowhere").exists()


def test_guests_have_no_cursors(lobby):
    with pytest.raises(PermissionDeniedError) as refused:
        cursors.mark_read(access.anonymous(), lobby, 1)
    assert refused.value.code == "forbidden"
    assert cursors.read_state(access.anonymous(), [lobby]) == {}


async def test_concurrent_marks_leave_the_largest(people, lobby):
    """Devices racing: whatever the order, the cursor ends at the largest seq."""
    alice = people["alice"]
    await asyncio.gather(*(cursors.amark_read(alice, lobby, seq) for seq in [2, 5, 1, 4, 3] * 4))
    assert await asyncio.to_thread(cursor_of, alice, lobby) == 5


def test_unread_is_counted_up_to_a_bound(people, monkeypatch):
    """Counting stops at UNREAD_COUNT_MAX: a room of many unread messages costs a
    bounded scan, and says at least that many."""
    for i in range(7):
        push.send_to_room("busy", f"m{i}")
    monkeypatch.setattr(cursors, "UNREAD_COUNT_MAX", 4)
    assert cursors.read_state(people["alice"], ["busy"]) == {"busy": (0, 4)}
    assert cursors.mark_read(people["alice"], "busy", 5) == (5, 2)


def test_read_state_of_many_rooms_is_one_query(people, lobby, django_assert_num_queries):
    """One subscribe costs one query, and so do a hundred rooms; rooms not stored yet
    are (0, 0)."""
    alice = people["alice"]
    cursors.mark_read(alice, lobby, 2)
    for i in range(3):
        push.send_to_room(f"room {i}", "x")
    names = [lobby, "room 0", "room 1", "room 2", *(f"empty {i}" for i in range(96))]
    with django_assert_num_queries(1):
        state = cursors.read_state(alice, names)
    assert state[lobby] == (2, 2) and state["room 1"] == (0, 1) and state["empty 5"] == (0, 0)
    assert len(state) == 100
    with django_assert_num_queries(1):
        assert cursors.read_state(alice, [lobby]) == {lobby: (2, 2)}


async def test_a_mark_is_published_to_the_users_own_stream(people, lobby):
    """Every socket of the user, on every process, learns of the move: an ephemeral
    room.event on the group of the user's stream, sync (after commit) and async."""
    alice = people["alice"]
    layer = fanout.get_layer()
    channel = await layer.new_channel("test.")
    await layer.group_add(fanout.room_group(fanout.user_room(alice.user_id)), channel)
    assert await cursors.amark_read(alice, lobby, 2) == (2, 2)
    message = await asyncio.wait_for(layer.receive(channel), 5)
    assert message == {
        "type": "room.event",
        "frame": '{"type":"unread","room":"lobby","read_seq":2,"unread":2}',
    }
    fanout.set_server_loop(asyncio.get_running_loop())  # the sync path publishes here
    assert await asyncio.to_thread(cursors.mark_read, alice, lobby, 4) == (4, 0)
    message = await asyncio.wait_for(layer.receive(channel), 5)
    assert json.loads(message["frame"]) == {
        "type": "unread",
        "room": "lobby",
        "read_seq": 4,
        "unread": 0,
    }


def test_layer_message_is_json_safe():
    message = cursors.layer_message("技术", 3, 1)
    assert json.loads(json.dumps(message)) == message
    assert message["frame"].startswith('{"type":"unread",')


# -- GET /api/users/<name>/rooms ------------------------------------------------------------------


def get(path: str, **headers: str):
    return Client().get(path, headers=headers)


def key() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def bearer(user: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {auth.issue_token(user, ttl=60)}"}


@pytest.fixture
def sidebar(people, lobby) -> dict[str, Any]:
    """alice: member of "board" (private), has read lobby to 3, has read "secret" (a
    private room she has since left); "news" is public and she never opened it; she has
    her own user channel."""
    users = people["users"]
    alice = people["alice"]
    board = Room.objects.create(name="board", visibility=Room.Visibility.PRIVATE)
    RoomMember.objects.create(room=board, user=users["alice"])
    push.send_to_room("board", "board news")
    Room.objects.create(name="secret", visibility=Room.Visibility.PRIVATE)
    push.send_to_room("secret", "psst")
    push.send_to_room("news", "public news")
    cursors.mark_read(alice, lobby, 3)
    ReadCursor.objects.create(
        user=users["alice"], room=Room.objects.get(name="secret"), seq=0, updated_at=timezone.now()
    )
    push.send_to_user(users["alice"], "a notification")
    return people


def test_a_users_rooms_with_unread_counts(sidebar):
    """The rooms alice joined or read and may still join, by name, with their unread
    counts; not public rooms she never opened, nor her own channel, nor a private room
    she left."""
    response = get("/api/users/alice/rooms", **key())
    assert response.status_code == 200
    assert response.json() == {
        "user": "alice",
        "rooms": [
            {"name": "board", "visibility": "private", "last_seq": 1, "read_seq": 0, "unread": 1},
            {"name": "lobby", "visibility": "public", "last_seq": 5, "read_seq": 3, "unread": 1},
        ],
        "truncated": False,
    }
    own = get("/api/users/alice/rooms", **bearer(sidebar["users"]["alice"]))
    assert own.json() == response.json()
    client = Client()
    client.force_login(sidebar["users"]["alice"])
    assert client.get("/api/users/alice/rooms").json() == response.json()


def test_staff_see_the_private_rooms_they_read(sidebar):
    staff = sidebar["users"]["staff"]
    ReadCursor.objects.create(
        user=staff, room=Room.objects.get(name="secret"), seq=1, updated_at=timezone.now()
    )
    rooms = get("/api/users/staff/rooms", **key()).json()["rooms"]
    assert [(r["name"], r["read_seq"], r["unread"]) for r in rooms] == [("secret", 1, 0)]


def test_a_project_policy_decides_room_by_room(sidebar):
    with override_settings(
        ROOMCAST={"API_KEYS": [API_KEY], "ACCESS_POLICY": "tests.test_cursors.only_lobby"}
    ):
        rooms = get("/api/users/alice/rooms", **key()).json()["rooms"]
    assert [r["name"] for r in rooms] == ["lobby"]


def only_lobby(user: Any, room: str, action: str) -> bool:
    """A project's access policy: lobby only."""
    return room == "lobby"


def test_who_may_list_a_users_rooms(sidebar):
    """An API key, or the user's own token or session; another user's is the 404 of a
    user that does not exist; no credentials 401; bad names 400."""
    users = sidebar["users"]
    for path, headers in [
        ("/api/users/alice/rooms", bearer(users["bob"])),
        ("/api/users/nobody/rooms", key()),
        ("/api/users/nobody/rooms", bearer(users["bob"])),
    ]:
        response = get(path, **headers)
        assert response.status_code == 404 and response.json()["error"] == "user_not_found"
    assert get("/api/users/alice/rooms").status_code == 401
    assert get("/api/users/alice/rooms?token=x", **key()).json()["error"] == "token_in_url"
    too_long = get("/api/users/" + "x" * 255 + "/rooms", **key())
    assert too_long.status_code == 400 and too_long.json()["error"] == "invalid_frame"
    assert Client().post("/api/users/alice/rooms", headers=key()).status_code == 405


def test_the_listing_is_bounded(people, monkeypatch):
    """More rooms than USER_ROOMS_MAX: the first ones by name, and truncated."""
    monkeypatch.setattr(cursors, "USER_ROOMS_MAX", 2)
    for name in ("c", "a", "b"):
        push.send_to_room(name, "x")
        cursors.mark_read(people["alice"], name, 1)
    body = get("/api/users/alice/rooms", **key()).json()
    assert [r["name"] for r in body["rooms"]] == ["a", "b"] and body["truncated"] is True


async def test_a_layer_that_is_down_fails_only_the_unread_frame(people, lobby, settings, caplog):
    """The cursor is stored whatever the layer does: an unread frame that cannot be
    published is logged (the next one, or a reconnect's joined, corrects the client)."""
    port = free_port()  # nothing listens there
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{port}/0"]},
        }
    }
    assert await cursors.amark_read(people["alice"], lobby, 3) == (3, 1)
    assert await asyncio.to_thread(cursor_of, people["alice"], lobby) == 3
    assert "Publishing an unread frame" in caplog.text
