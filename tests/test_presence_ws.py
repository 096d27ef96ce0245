"""Presence through the real consumers (``/ws/`` and ``/ws/chat/<room>/``) and the HTTP
view, on one process: the in-memory layer, SQLite.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.test import AsyncClient

from roomcast import auth, presence, rooms
from roomcast.testing import RoomCommunicator

pytestmark = pytest.mark.django_db(transaction=True)

User = get_user_model()
API_KEY = "test-api-key-0123456789"  # tests/settings.py


@pytest.fixture(autouse=True)
def short_batches(settings: Any) -> None:
    settings.ROOMCAST = {**settings.ROOMCAST, "PRESENCE_BATCH_SECS": 0.05}


async def token_for(name: str) -> str:
    user = await database_sync_to_async(User.objects.create_user)(name)
    return await database_sync_to_async(auth.issue_token)(user)


async def next_of(socket: Any, *kinds: str) -> dict[str, Any]:
    """The next frame of one of ``kinds``, skipping others (messages, acks)."""
    while True:
        frame = await socket.receive_event(None, 10)
        if frame["type"] in kinds:
            return frame


def listed(frame: dict[str, Any]) -> dict[str, int]:
    return {u["user"]: u["connections"] for u in frame["users"]}


async def test_a_subscriber_gets_presence_then_joins_and_leaves(mux, app):
    """After subscribing: a presence frame, then join/leave as users come and go, on /ws/
    and through a room socket (which counts but hears none of it); asking gives the list."""
    alice = await mux(await token_for("alice"))
    await alice.subscribe("lobby")
    assert await next_of(alice, "presence", "join") == {
        "type": "presence",
        "room": "lobby",
        "users": [{"user": "alice", "connections": 1}],
        "count": 1,
        "anonymous": 0,
        "truncated": False,
    }
    bob = await mux(await token_for("bob"))
    await bob.subscribe("lobby")
    assert listed(await next_of(bob, "presence", "join")) == {"alice": 1, "bob": 1}
    assert await next_of(alice, "join") == {"type": "join", "room": "lobby", "user": "bob"}
    carol_token = await token_for("carol")
    carol = RoomCommunicator(
        app, "lobby", headers=[(b"authorization", f"Bearer {carol_token}".encode())]
    )
    await carol.join()
    assert await next_of(alice, "join") == {"type": "join", "room": "lobby", "user": "carol"}
    guest = RoomCommunicator(app, "lobby")
    await guest.join()
    assert (await next_of(alice, "presence_count"))["anonymous"] == 1
    await alice.send_frame(type="presence", room="lobby")
    frame = await next_of(alice, "presence")
    assert listed(frame) == {"alice": 1, "bob": 1, "carol": 1} and frame["anonymous"] == 1
    await bob.disconnect()
    assert await next_of(alice, "leave") == {"type": "leave", "room": "lobby", "user": "bob"}
    await guest.disconnect()
    assert (await next_of(alice, "presence_count"))["anonymous"] == 0
    assert await presence.amembers("lobby") == {
        "room": "lobby",
        "users": [{"user": "alice", "connections": 1}, {"user": "carol", "connections": 1}],
        "count": 2,
        "anonymous": 0,
        "truncated": False,
    }
    await alice.say("lobby", "marker")
    frame = json.loads(await carol.receive_from(5))  # the first frame after joined
    assert (frame["type"], frame["message"]) == ("message", "marker")
    await carol.disconnect()


async def test_unsubscribing_is_leaving(mux):
    """An unsubscribe ends the user's presence in that room only."""
    alice = await mux(await token_for("alice"))
    bob = await mux(await token_for("bob"))
    for room in ("a", "b"):
        await alice.subscribe(room)
        await bob.subscribe(room)
    seen: set[str] = set()
    while len(seen) < 2:  # bob is in both (else his unsubscribe would fall in his join's batch)
        frame = await next_of(alice, "join", "presence")
        if frame["type"] == "join" or "bob" in listed(frame):
            seen.add(frame["room"])
    await bob.send_frame(type="unsubscribe", room="a")
    assert await next_of(alice, "leave") == {"type": "leave", "room": "a", "user": "bob"}
    await alice.send_frame(type="presence", room="b")
    frame = await next_of(alice, "presence")
    assert frame["room"] == "b" and listed(frame) == {"alice": 1, "bob": 1}


# -- GET /api/rooms/<room>/presence -----------------------------------------------------------


async def get(path: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await AsyncClient().get(path, headers=headers)


async def test_the_presence_api_answers_keys_and_readers(mux):
    """An API key sees any room; a user's token sees the rooms that user may read, and a
    private room of others is 404 like a room that does not exist."""
    alice_token = await token_for("alice")
    alice = await mux(alice_token)
    await alice.subscribe("lobby")
    await next_of(alice, "presence")
    await alice.say("lobby", "the room exists once used")  # as for history, else 404
    await next_of(alice, "ack")
    response = await get("/api/rooms/lobby/presence", API_KEY)
    assert response.status_code == 200
    assert response.json() == {
        "room": "lobby",
        "users": [{"user": "alice", "connections": 1}],
        "count": 1,
        "anonymous": 0,
        "truncated": False,
    }
    assert (await get("/api/rooms/lobby/presence", alice_token)).json()["count"] == 1
    assert (await get("/api/rooms/nowhere/presence", API_KEY)).json()["count"] == 0
    await database_sync_to_async(rooms.create_room)("secret", visibility="private")
    for room in ("secret", "nowhere"):
        response = await get(f"/api/rooms/{room}/presence", alice_token)
        assert response.status_code == 404 and response.json()["error"] == "not_found"


@pytest.mark.parametrize(
    ("path", "token", "status", "code"),
    [
        ("/api/rooms/lobby/presence", None, 401, "unauthorized"),
        ("/api/rooms/lobby/presence", "not-a-token", 401, "invalid_token"),
        ("/api/rooms/lobby/presence?token=x", API_KEY, 400, "token_in_url"),
        ("/api/rooms/%20/presence", API_KEY, 400, "invalid_room"),
    ],
)
async def test_the_presence_api_refuses_bad_requests(path, token, status, code):
    """No credentials, a bad token, a token in the URL, a bad room name: JSON errors."""
    response = await get(path, token)
    assert response.status_code == status and response.json()["error"] == code


async def test_the_presence_api_is_503_when_redis_does_not_answer(settings):
    """With a Redis layer and no Redis (and no view of the room here): 503."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [{"address": "redis://127.0.0.1:1/0"}], "prefix": "nothing"},
        }
    }
    try:
        response = await get("/api/rooms/lobby/presence", API_KEY)
    finally:
        await presence.aclose_shared()
    assert response.status_code == 503 and response.json()["error"] == "presence_unavailable"


async def test_members_from_sync_code_in_a_thread(mux):
    """roomcast.presence.members(room) from a thread of the server process."""
    alice = await mux(await token_for("alice"))
    await alice.subscribe("lobby")
    await next_of(alice, "presence")
    found = await asyncio.to_thread(presence.members, "lobby")
    assert found["users"] == [{"user": "alice", "connections": 1}]
