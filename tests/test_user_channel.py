"""A user's own channel (``push.send_to_user``, ``POST /api/users/<name>/messages``):
stored in the user's stream with per-user seqs, its frames, what is refused, what is
published, and that it is never listed as a chat room."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from django.db import transaction
from django.test import Client, override_settings

from roomcast import fanout, push, services
from roomcast.models import Message, Room
from tests.conftest import make_users

pytestmark = pytest.mark.django_db(transaction=True)

API_KEY = "test-api-key-0123456789"
KEY = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def users() -> dict[str, Any]:
    return make_users(["alice", "bob", "root"], superusers={"root"})


def stream_of(user: Any) -> list[tuple[int, str, str]]:
    return list(
        Message.objects.filter(room__name=fanout.user_room(user.pk))
        .order_by("seq")
        .values_list("seq", "kind", "text")
    )


def test_send_to_user_stores_in_the_users_own_stream(users):
    """By user, username or id: each user's stream counts its own seqs; text is a system
    message, anything else its JSON; the stream's row is private."""
    alice, bob = users["alice"], users["bob"]
    first = push.send_to_user(alice, "your export is ready")
    assert (first.room, first.seq) == (f"user/{alice.pk}", 1)
    assert push.send_to_user("alice", {"kind": "invoice", "id": 7, "note": "café"}).seq == 2
    assert push.send_to_user(bob.pk, [1, None, True]).seq == 1
    assert push.send_to_user(alice.pk, None).seq == 3
    assert stream_of(alice) == [
        (1, "system", "your export is ready"),
        (2, "data", '{"kind":"invoice","id":7,"note":"café"}'),
        (3, "data", "null"),
    ]
    assert stream_of(bob) == [(1, "data", "[1,null,true]")]
    assert Room.objects.get(name=f"user/{alice.pk}").visibility == Room.Visibility.PRIVATE


def test_the_frames_are_user_messages_live_and_read_back(users):
    """user_message frames, no room key: the same bytes when stored and when a
    reconnecting socket's catch-up reads them back."""
    alice = users["alice"]
    text = push.send_to_user(alice, "hello")
    data = push.send_to_user(alice, {"n": 1})
    assert list(json.loads(text.frame)) == ["type", "seq", "message", "ts"]
    assert json.loads(data.frame)["data"] == {"n": 1}
    assert text.frame.startswith('{"type":"user_message","seq":1,')
    last, frames, recovered = services.read_catch_up(fanout.user_room(alice.pk), 0)
    assert (last, recovered) == (2, True)
    assert [frame for _, frame in frames] == [text.frame, data.frame]


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ("", ValueError),
        ("  \n", ValueError),
        ("a\x00b", ValueError),
        ({"x": float("nan")}, ValueError),
        ({"x": object()}, ValueError),
        ({"bad": "\ud800"}, ValueError),
        ("é" * 9000, ValueError),  # over MAX_FRAME_BYTES
        ({"big": "x" * 20000}, ValueError),
    ],
)
def test_what_is_refused(users, payload, error):
    with pytest.raises(error):
        push.send_to_user(users["alice"], payload)
    assert stream_of(users["alice"]) == []


def test_an_unknown_user_is_refused(users):
    for who in ("nobody", 987654):
        with pytest.raises(push.UserNotFoundError):
            push.send_to_user(who, "hi")
    with pytest.raises(TypeError):
        push.send_to_user(1.5, "hi")


async def test_published_to_the_users_stream_group(users):
    """asend_to_user and send_to_user (from a thread, after commit; nothing on rollback)
    publish {"type": "room.message", "seq", "frame"} to the group of the user's stream,
    where the hub of each process holds the user's /ws/ sockets."""
    alice = users["alice"]
    layer = fanout.get_layer()
    channel = await layer.new_channel("test.")
    await layer.group_add(fanout.room_group(fanout.user_room(alice.pk)), channel)
    stored = await push.asend_to_user("alice", {"done": True})
    message = await asyncio.wait_for(layer.receive(channel), 5)
    assert message == {"type": "room.message", "seq": 1, "frame": stored.frame}
    fanout.set_server_loop(asyncio.get_running_loop())

    def rolled_back() -> None:
        with transaction.atomic():
            push.send_to_user(alice, "never")
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        await asyncio.to_thread(rolled_back)
    stored = await asyncio.to_thread(push.send_to_user, alice, "from a thread")
    message = await asyncio.wait_for(layer.receive(channel), 5)
    assert (message["seq"], json.loads(message["frame"])["message"]) == (2, "from a thread")


def test_a_users_stream_is_never_listed_as_a_chat_room(users):
    """Not on the index page, even for staff (who see private rooms there)."""
    push.send_to_room("lobby", "hi")
    push.send_to_user(users["alice"], "private note")
    client = Client()
    client.force_login(users["root"])
    assert client.get("/chat/").context["rooms"] == ["lobby"]


# -- POST /api/users/<name>/messages ---------------------------------------------------------------


def post(path: str, body: Any, *, raw: str | None = None, **headers: str):
    data = raw if raw is not None else json.dumps(body)
    return Client().post(path, data, content_type="application/json", headers=headers)


def test_the_http_api_sends_text_or_data(users):
    response = post("/api/users/alice/messages", {"message": "report ready"}, **KEY)
    assert response.status_code == 201 and response.json() == {"user": "alice", "seq": 1}
    response = post("/api/users/alice/messages", {"data": {"progress": 0.5}}, **KEY)
    assert response.json() == {"user": "alice", "seq": 2}
    post("/api/users/alice/messages", {"data": "a string, as data"}, **KEY)
    assert stream_of(users["alice"]) == [
        (1, "system", "report ready"),
        (2, "data", '{"progress":0.5}'),
        (3, "data", '"a string, as data"'),
    ]


@pytest.mark.parametrize(
    ("path", "body", "raw", "status", "code"),
    [
        ("alice", {}, None, 400, "invalid_frame"),
        ("alice", {"message": "x", "data": 1}, None, 400, "invalid_frame"),
        ("alice", {"message": ""}, None, 400, "invalid_frame"),
        ("alice", {"message": 3}, None, 400, "invalid_frame"),
        ("alice", {"message": "a\x00b"}, None, 400, "invalid_frame"),
        ("alice", None, '{"data": NaN}', 400, "invalid_frame"),
        ("alice", None, "[1", 400, "invalid_json"),
        ("alice", {"message": "x" * 20000}, None, 413, "frame_too_large"),
        ("nobody", {"message": "x"}, None, 404, "user_not_found"),
        ("x" * 255, {"message": "x"}, None, 400, "invalid_frame"),
    ],
)
def test_the_http_api_refuses(users, path, body, raw, status, code):
    response = post(f"/api/users/{path}/messages", body, raw=raw, **KEY)
    assert response.status_code == status, response.content[:300]
    assert response.json()["error"] == code
    assert stream_of(users["alice"]) == []


def test_the_http_api_takes_an_api_key_only(users):
    """A user's token is no key (401); no key configured is 403; GET is 405."""
    from roomcast import auth

    token = auth.issue_token(users["alice"], ttl=60)
    response = post("/api/users/alice/messages", {"message": "x"}, Authorization=f"Bearer {token}")
    assert response.status_code == 401
    with override_settings(ROOMCAST={"API_KEYS": []}):
        response = post("/api/users/alice/messages", {"message": "x"})
        assert response.status_code == 403 and response.json()["error"] == "api_disabled"
    assert Client().get("/api/users/alice/messages", headers=KEY).status_code == 405
