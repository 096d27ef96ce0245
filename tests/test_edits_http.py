"""Edits and deletes over HTTP (``PATCH`` / ``DELETE /api/rooms/<room>/messages/<seq>``)
and in the Django admin, which both go through roomcast.edits: every status code, the
admin action, the admin form, the admin log, and the event reaching a live socket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.test import Client, override_settings

from roomcast import auth, hub, push, services
from roomcast.models import Message, Room, RoomMember
from roomcast.routing import websocket_application
from roomcast.testing import RoomCommunicator
from tests.conftest import make_users
from tests.test_enforce import expired_token

pytestmark = pytest.mark.django_db(transaction=True)

API_KEY = "test-api-key-0123456789"


@pytest.fixture
def users() -> dict[str, Any]:
    return make_users(["alice", "bob", "root"], superusers={"root"})


@pytest.fixture
def lobby(users: dict[str, Any]) -> str:
    """Room "lobby": alice's 1 and bob's 2."""
    services.store_message("lobby", "hello", user=users["alice"])
    services.store_message("lobby", "bob here", user=users["bob"])
    return "lobby"


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def token(user: Any, ttl: float = 60) -> dict[str, str]:
    return bearer(auth.issue_token(user, ttl=ttl))


KEY = bearer(API_KEY)


def call(method: str, path: str, body: Any = None, *, raw: str | bytes | None = None, **headers):
    data = raw if raw is not None else ("" if body is None else json.dumps(body))
    return Client().generic(method, path, data, content_type="application/json", headers=headers)


def refused(response, status: int, code: str) -> None:
    assert response.status_code == status, response.content[:300]
    body = response.json()
    assert body["error"] == code and isinstance(body["detail"], str), body


def text_of(seq: int, room: str = "lobby") -> str:
    return Message.objects.get(room__name=room, seq=seq).text


# -- the HTTP API ---------------------------------------------------------------------------------


def test_an_api_key_edits_and_deletes_as_the_site(lobby):
    """200 {"room", "seq": the event's, "target"}; the event's user is null."""
    response = call("PATCH", "/api/rooms/lobby/messages/2", {"message": "tidied"}, **KEY)
    assert response.status_code == 200 and response.json() == {
        "room": "lobby",
        "seq": 3,
        "target": 2,
    }
    assert text_of(2) == "tidied"
    response = call("DELETE", "/api/rooms/lobby/messages/1", **KEY)
    assert response.json() == {"room": "lobby", "seq": 4, "target": 1}
    assert text_of(1) == "" and Message.objects.get(seq=4).user_id is None


def test_a_users_token_or_session_acts_as_that_user(users, lobby):
    """The author edits with a token and deletes with a session; another user is 403."""
    ok = call("PATCH", "/api/rooms/lobby/messages/1", {"message": "mine"}, **token(users["alice"]))
    assert ok.status_code == 200 and Message.objects.get(seq=3).username == "alice"
    theirs = call("PATCH", "/api/rooms/lobby/messages/2", {"message": "x"}, **token(users["alice"]))
    refused(theirs, 403, "forbidden")
    client = Client()
    client.force_login(users["bob"])
    response = client.delete("/api/rooms/lobby/messages/2")
    assert response.status_code == 200 and response.json()["target"] == 2
    refused(client.delete("/api/rooms/lobby/messages/1"), 403, "forbidden")
    root = Client()
    root.force_login(users["root"])
    assert root.delete("/api/rooms/lobby/messages/1").status_code == 200  # staff moderate
    assert Room.objects.get(name="lobby").last_seq == 5


def test_not_found_answers(users, lobby):
    """No such message, an event, a deleted one, no such room, and a private room the
    user is not in (its messages are not theirs to know of): 404 not_found."""
    call("DELETE", "/api/rooms/lobby/messages/2", **KEY)  # 3
    for path in ["lobby/messages/99", "lobby/messages/3", "lobby/messages/2", "nowhere/messages/1"]:
        refused(call("DELETE", f"/api/rooms/{path}", **KEY), 404, "not_found")
    secret = Room.objects.create(name="secret", visibility=Room.Visibility.PRIVATE)
    services.store_message("secret", "psst", user=users["alice"])
    RoomMember.objects.create(room=secret, user=users["alice"])
    path = "/api/rooms/secret/messages/1"
    refused(call("PATCH", path, {"message": "x"}, **token(users["bob"])), 404, "not_found")
    assert call("PATCH", path, {"message": "y"}, **token(users["alice"])).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("PATCH", "lobby/messages/abc", {"message": "x"}, 400, "invalid_frame"),
        ("PATCH", "lobby/messages/0", {"message": "x"}, 400, "invalid_frame"),
        ("DELETE", "lobby/messages/" + "9" * 19, None, 400, "invalid_frame"),
        ("PATCH", "lobby/messages/1", {"text": "x"}, 400, "invalid_frame"),
        ("PATCH", "lobby/messages/1", {"message": 5}, 400, "invalid_frame"),
        ("PATCH", "lobby/messages/1", {"message": "  "}, 400, "invalid_frame"),
        ("PATCH", "lobby/messages/1", {"message": "a\x00b"}, 400, "invalid_frame"),
        ("PATCH", "lobby/messages/1", "[1", 400, "invalid_json"),
        ("PATCH", "lobby/messages/1", ["x"], 400, "invalid_frame"),
        ("PATCH", "lobby/messages/1", {"message": "x" * 20000}, 413, "frame_too_large"),
        ("PATCH", "%20/messages/1", {"message": "x"}, 400, "invalid_room"),
    ],
)
def test_bad_requests(lobby, method, path, body, status, code):
    raw = body if isinstance(body, str) else None
    response = call(method, f"/api/rooms/{path}", None if raw else body, raw=raw, **KEY)
    refused(response, status, code)
    assert Room.objects.get(name="lobby").last_seq == 2


def test_who_is_refused_before_anything(users, lobby):
    """No credentials 401, a wrong key 401, an expired token 401 token_expired, a token
    in the URL 400, another method 405; without any key configured, 403 api_disabled."""
    refused(call("DELETE", "/api/rooms/lobby/messages/1"), 401, "unauthorized")
    refused(call("DELETE", "/api/rooms/lobby/messages/1", **bearer("w" * 20)), 401, "invalid_token")
    expired = expired_token(users["alice"])
    refused(call("DELETE", "/api/rooms/lobby/messages/1", **bearer(expired)), 401, "token_expired")
    refused(call("DELETE", "/api/rooms/lobby/messages/1?token=x", **KEY), 400, "token_in_url")
    assert call("POST", "/api/rooms/lobby/messages/1", **KEY).status_code == 405
    with override_settings(ROOMCAST={"API_KEYS": []}):
        refused(call("DELETE", "/api/rooms/lobby/messages/1"), 403, "api_disabled")
    assert text_of(1) == "hello"


def test_an_idempotency_key_makes_the_request_idempotent(lobby):
    """The Idempotency-Key header is the change's client_id: a retried request stores
    nothing new and answers the first event's seq."""
    headers = {**KEY, "Idempotency-Key": "retry-1"}
    first = call("PATCH", "/api/rooms/lobby/messages/1", {"message": "v2"}, **headers).json()
    second = call("PATCH", "/api/rooms/lobby/messages/1", {"message": "v2"}, **headers).json()
    assert first == second == {"room": "lobby", "seq": 3, "target": 1}
    long_key = {**KEY, "Idempotency-Key": "k" * 65}
    refused(call("DELETE", "/api/rooms/lobby/messages/1", **long_key), 400, "invalid_frame")


# -- the Django admin -------------------------------------------------------------------------


@pytest.fixture
def admin_client(users: dict[str, Any]) -> Client:
    client = Client()
    client.force_login(users["root"])
    return client


def ids(room: str, *seqs: int) -> list[str]:
    rows = Message.objects.filter(room__name=room, seq__in=seqs)
    return [str(pk) for pk in rows.values_list("pk", flat=True)]


def test_the_admin_deletes_as_stream_events_and_logs_it(admin_client, lobby):
    """The action leaves tombstones and delete events, skips what cannot be deleted
    (an event, a tombstone), and records each deletion in the admin log; the plain
    "delete selected" (rows gone, holes in the stream) is not offered."""
    page = admin_client.get("/admin/roomcast/message/")
    actions = [value for value, _ in page.context["action_form"].fields["action"].choices]
    assert "delete_as_events" in actions and "delete_selected" not in actions
    push.edit_message(lobby, 1, "edited first")  # 3, an event
    response = admin_client.post(
        "/admin/roomcast/message/",
        {"action": "delete_as_events", "_selected_action": ids(lobby, 1, 2, 3)},
        follow=True,
    )
    notes = [str(m) for m in response.context["messages"]]
    assert notes == [
        "Deleted 2 message(s) as stream events.",
        "Skipped 1 (events, deleted already, or users' channels).",
    ]
    kinds = list(Message.objects.filter(room__name=lobby).values_list("seq", "kind", "text"))
    assert kinds == [
        (1, "chat", ""),
        (2, "chat", ""),
        (3, "edit", ""),  # the edit of a deleted message lost its text too
        (4, "delete", ""),
        (5, "delete", ""),
    ]
    log = LogEntry.objects.filter(action_flag=CHANGE).order_by("pk")
    assert [entry.get_change_message() for entry in log] == [
        "Deleted as stream event 4.",
        "Deleted as stream event 5.",
    ]


def test_the_admin_form_saves_a_text_change_as_an_edit(admin_client, lobby):
    """Saving a message's text stores an edit event (the change is logged by the admin);
    a tombstone's text cannot be changed, nor can it be deleted again; no messages are
    added by hand."""
    message = Message.objects.get(room__name=lobby, seq=2)
    url = f"/admin/roomcast/message/{message.pk}/change/"
    response = admin_client.post(url, {"text": "corrected by root"})
    assert response.status_code == 302, response.content[:500]
    event = Message.objects.get(room__name=lobby, seq=3)
    assert (event.kind, event.target_seq, event.text) == ("edit", 2, "corrected by root")
    assert text_of(2) == "corrected by root"
    entry = LogEntry.objects.get(object_id=str(message.pk))
    assert entry.action_flag == CHANGE and "Text" in entry.get_change_message()
    bad = admin_client.post(url, {"text": "é" * 9000})  # the client's rules: MAX_FRAME_BYTES
    assert bad.status_code == 200 and "16384 bytes" in str(bad.context["errors"])
    assert Room.objects.get(name=lobby).last_seq == 3
    delete_page = f"/admin/roomcast/message/{message.pk}/delete/"
    assert admin_client.post(delete_page, {"post": "yes"}).status_code == 302
    assert text_of(2) == "" and Message.objects.get(seq=4).kind == "delete"
    assert admin_client.get(delete_page).status_code == 403  # a tombstone
    page = admin_client.get(url)
    assert 'name="text"' not in page.content.decode()  # read-only now
    assert admin_client.get("/admin/roomcast/message/add/").status_code == 403


def test_users_channels_are_listed_apart_from_chat_rooms(admin_client, users, lobby):
    """Rooms and messages: chat rooms by default, users' channels with stream=user."""
    push.send_to_user(users["alice"], "for alice")
    rooms = admin_client.get("/admin/roomcast/room/").context["cl"].result_list
    assert [r.name for r in rooms] == ["lobby"]
    stream = admin_client.get("/admin/roomcast/room/?stream=user").context["cl"].result_list
    assert [r.name for r in stream] == [f"user/{users['alice'].pk}"]
    messages = admin_client.get("/admin/roomcast/message/").context["cl"].result_list
    assert {m.room.name for m in messages} == {"lobby"}
    mine = admin_client.get("/admin/roomcast/message/?stream=user").context["cl"].result_list
    assert [m.text for m in mine] == ["for alice"]


async def test_an_admin_deletion_reaches_a_live_socket(admin_client, lobby):
    """Live members see the admin's deletion at once, as a delete event."""
    member = RoomCommunicator(websocket_application(), lobby)
    await member.join()
    await member.receive_messages(2)
    selected = await asyncio.to_thread(ids, lobby, 2)
    await asyncio.to_thread(
        admin_client.post,
        "/admin/roomcast/message/",
        {"action": "delete_as_events", "_selected_action": selected},
    )
    frame = await member.receive_event("delete")
    assert (frame["seq"], frame["target"], frame["user"]) == (3, 2, None)
    await member.disconnect()
    if (running := hub.running_hub()) is not None:
        await running.close()
