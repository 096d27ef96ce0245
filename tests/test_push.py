"""Push from anywhere: sync and async twins, transactions, many calls, HTTP, the command."""

from __future__ import annotations

import asyncio
import threading

import pytest
from django.core.management import call_command
from django.db import transaction
from django.test import AsyncClient, override_settings

from roomcast import fanout, push
from roomcast.exceptions import InvalidRoomNameError, SynchronousCallError
from roomcast.models import Message
from roomcast.protocol import CloseCode

pytestmark = pytest.mark.django_db(transaction=True)

API_KEY = "test-api-key-0123456789"


async def test_asend_to_room_stores_a_system_message_and_delivers_it(room_of):
    """The async push stores a system message with the room's next seq and delivers it."""
    alice = await room_of("news")
    stored = await push.asend_to_room("news", "deploy finished")
    frame = await alice.receive_event("message")
    assert frame["message"] == "deploy finished" and frame["kind"] == "system"
    assert frame["seq"] == stored.seq == 1
    assert await Message.objects.filter(room__name="news", kind="system").acount() == 1


async def test_send_to_room_from_a_worker_thread(room_of):
    """The sync push works from a plain thread while the server loop runs."""
    alice = await room_of("技术交流")
    stored = await asyncio.to_thread(push.send_to_room, "技术交流", "from a thread")
    frame = await alice.receive_event("message")
    assert frame["message"] == "from a thread" and frame["seq"] == stored.seq


async def test_send_to_room_in_a_transaction_publishes_on_commit_only(room_of):
    """Inside atomic(), a push is published on commit, and not at all on rollback."""
    alice = await room_of("tx")

    def rolled_back():
        with transaction.atomic():
            push.send_to_room("tx", "never")
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        await asyncio.to_thread(rolled_back)
    assert await alice.receive_nothing(0.2)

    def committed():
        with transaction.atomic():
            stored = push.send_to_room("tx", "after commit")
            assert not delivered.is_set()  # nothing published before the commit
            return stored

    delivered = threading.Event()
    stored = await asyncio.to_thread(committed)
    frame = await alice.receive_event("message")
    delivered.set()
    assert frame["message"] == "after commit" and frame["seq"] == stored.seq == 1
    assert await Message.objects.acount() == 1


async def test_sync_push_from_async_code_raises():
    """Calling the sync API on the event loop raises and names the async twin."""
    with pytest.raises(SynchronousCallError, match="async twin"):
        push.disconnect("lobby")


async def test_thousands_of_sync_pushes_reuse_one_loop(room_of):
    """2,000 sync pushes in a row start no event loop or thread per call and lose nothing."""
    alice = await room_of("flood")
    threads_before = threading.active_count()

    def flood():
        for i in range(2000):
            push.send_to_room("flood", f"m{i}")
        return threading.active_count()

    threads_during = await asyncio.to_thread(flood)
    seqs = [(await alice.receive_event("message"))["seq"] for _ in range(2000)]
    assert seqs == list(range(1, 2001))
    assert threads_during <= threads_before + 2  # the to_thread worker (+ executor), no more


def test_push_without_a_server_loop_uses_one_push_thread():
    """Outside any server (a management command), pushes share one long-lived loop thread."""
    fanout.set_server_loop(None)  # type: ignore[arg-type]
    for i in range(200):
        push.send_to_room("offline", f"m{i}")
    push_threads = [t for t in threading.enumerate() if t.name == "roomcast-push"]
    assert len(push_threads) == 1
    assert Message.objects.filter(room__name="offline").count() == 200


def test_push_rejects_bad_input():
    """A bad room name, empty text, or text no client frame may carry (a lone surrogate,
    NUL) raises before anything is stored."""
    with pytest.raises(InvalidRoomNameError):
        push.send_to_room("a/b", "x")
    with pytest.raises(ValueError, match="non-empty"):
        push.send_to_room("lobby", "  ")
    with pytest.raises(ValueError, match="lone surrogate"):
        push.send_to_room("lobby", "bad \ud800")
    with pytest.raises(ValueError, match="NUL"):
        push.send_to_room("lobby", "bad \x00")
    assert Message.objects.count() == 0


async def test_disconnect_closes_the_room_or_one_user(room_of):
    """adisconnect closes every member of the room with 4000 (do not reconnect)."""
    alice = await room_of("kick")
    bob = await room_of("kick")
    await push.adisconnect("kick", user_id=12345)  # nobody is user 12345
    assert await alice.receive_nothing(0.1)
    await push.adisconnect("kick", reason="bye")
    assert await alice.receive_close() == CloseCode.DISCONNECTED
    assert await bob.receive_close() == CloseCode.DISCONNECTED


def test_management_command_pushes(capsys):
    """manage.py roomcast_push stores the message and prints its seq."""
    fanout.set_server_loop(None)  # type: ignore[arg-type]
    call_command("roomcast_push", "café", "from the shell")
    assert "as seq 1" in capsys.readouterr().out
    assert Message.objects.get().text == "from the shell"


# -- HTTP push API --------------------------------------------------------------------------


async def test_http_push_api(room_of):
    """POST /api/rooms/<room>/messages with the API key pushes; the history GET reads it back."""
    # ASCII room: Django's test client decodes percent-encoded paths as Latin-1 where
    # uvicorn uses UTF-8; Unicode rooms over real HTTP are covered in tests/e2e.
    alice = await room_of("news-room")
    client = AsyncClient()
    auth = {"Authorization": f"Bearer {API_KEY}"}
    response = await client.post(
        "/api/rooms/news-room/messages",
        {"message": "over http"},
        content_type="application/json",
        headers=auth,
    )
    assert response.status_code == 201, response.content
    assert response.json() == {"room": "news-room", "seq": 1}
    assert (await alice.receive_event("message"))["message"] == "over http"
    page = (await client.get("/api/rooms/news-room/messages?limit=10", headers=auth)).json()
    assert [m["message"] for m in page["messages"]] == ["over http"] and page["has_more"] is False


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({}, {"message": "x"}, 401, "unauthorized"),
        ({"Authorization": "Bearer wrong-key-000000000"}, {"message": "x"}, 401, "unauthorized"),
        ({"Authorization": f"Bearer {API_KEY}"}, {"text": "x"}, 400, "invalid_frame"),
        ({"Authorization": f"Bearer {API_KEY}"}, "not json", 400, "invalid_json"),
        ({"Authorization": f"Bearer {API_KEY}"}, {"message": "x" * 20000}, 413, "frame_too_large"),
    ],
)
async def test_http_push_api_refuses_bad_requests(headers, body, status, code):
    """Bad keys and bad bodies get a clear JSON error and store nothing."""
    response = await AsyncClient().post(
        "/api/rooms/lobby/messages", body, content_type="application/json", headers=headers
    )
    assert response.status_code == status
    assert response.json()["error"] == code
    assert await Message.objects.acount() == 0


@override_settings(ROOMCAST={"API_KEYS": []})
async def test_http_push_api_off_without_keys():
    """With no API keys configured the API refuses every request."""
    response = await AsyncClient().post(
        "/api/rooms/lobby/messages",
        {"message": "x"},
        content_type="application/json",
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code == 403 and response.json()["error"] == "api_disabled"


async def test_http_disconnect_api(room_of):
    """POST /api/rooms/<room>/disconnect closes the room's sockets."""
    alice = await room_of("kick")
    response = await AsyncClient().post(
        "/api/rooms/kick/disconnect",
        {"reason": "closing"},
        content_type="application/json",
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code == 202
    assert await alice.receive_close() == CloseCode.DISCONNECTED
