"""Rate and socket limits: the buckets on their own, then through the room socket.

The socket tests go through the WebSocket application on the in-memory layer and the
test database, as ``test_consumers.py`` does; the limits are set small so that a test
reaches them in a few frames.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.core.checks import run_checks
from django.test import Client, override_settings

from roomcast import hub, limits
from roomcast.hub import Member
from roomcast.models import Message
from roomcast.protocol import CloseCode
from roomcast.routing import websocket_application
from roomcast.testing import RoomCommunicator

pytestmark = pytest.mark.django_db(transaction=True)


class Socket:
    """An ASGI send that records what the server sent."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def __call__(self, message: dict) -> None:
        self.sent.append(message)

    def events(self) -> list[dict]:
        return [json.loads(m["text"]) for m in self.sent if m["type"] == "websocket.send"]

    def close(self) -> tuple[int, str] | None:
        closes = [(m["code"], m["reason"]) for m in self.sent if m["type"] == "websocket.close"]
        return closes[0] if closes else None


def member(v1: bool = True) -> tuple[Socket, Member]:
    socket = Socket()
    the_member = Member(socket, room="r", max_frames=100, v1=v1)
    the_member.start(hub.CatchUp(preface=[], frames=[], last_seq=0))
    return socket, the_member


SCOPE = {"client": ("192.0.2.7", 50000)}


@pytest.fixture(autouse=True)
def _no_leftover_counts():
    """Each test starts and must end with no socket counted (every admit released)."""
    assert limits.counts() == ({}, {})
    yield
    assert limits.counts() == ({}, {}), "a test left sockets counted"


# -- the buckets ---------------------------------------------------------------------------------


@override_settings(ROOMCAST={"POST_RATE_PER_SOCKET": 5, "POST_BURST_PER_SOCKET": 10})
async def test_a_socket_posts_its_burst_then_is_told_when_to_retry():
    """Ten posts at once pass; the eleventh is refused with rate_limited, its client_id
    and a retry_after of at most 1/rate; after that wait a post passes again."""
    socket, the_member = member()
    quota = limits.admit(SCOPE, None)
    try:
        assert all(quota.allow_post(the_member, f"c{i}") for i in range(10))
        assert not quota.allow_post(the_member, "c10")
        [event] = socket.events()
        assert event["type"] == "error" and event["code"] == "rate_limited"
        assert event["client_id"] == "c10"
        assert 0 < event["retry_after"] <= 0.2
        await asyncio.sleep(event["retry_after"])
        assert quota.allow_post(the_member, "c11")
        assert socket.close() is None
    finally:
        quota.release()


@override_settings(ROOMCAST={"POST_RATE_PER_SOCKET": 1, "POST_BURST_PER_SOCKET": 1})
async def test_a_seed_client_reads_the_refusal_in_its_message_key():
    """A client of the seed's dialect shows data["message"]: the detail is there too."""
    socket, the_member = member(v1=False)
    quota = limits.admit(SCOPE, None)
    try:
        assert quota.allow_post(the_member, None)
        assert not quota.allow_post(the_member, None)
        [event] = socket.events()
        assert event["code"] == "rate_limited" and "client_id" not in event
        assert event["message"].startswith("Too many messages: wait ")
    finally:
        quota.release()


@override_settings(
    ROOMCAST={
        "POST_RATE_PER_SOCKET": 1,
        "POST_BURST_PER_SOCKET": 1,
        "RATE_LIMIT_CLOSE_AFTER": 3,
        "RATE_LIMIT_WINDOW_SECS": 60,
    }
)
async def test_a_socket_that_keeps_posting_after_being_told_is_closed_4429():
    """Two refusals are answered; the third within the window closes the socket."""
    socket, the_member = member()
    quota = limits.admit(SCOPE, None)
    try:
        assert quota.allow_post(the_member, "ok")
        assert not quota.allow_post(the_member, "a") and not quota.allow_post(the_member, "b")
        assert [e["client_id"] for e in socket.events()] == ["a", "b"]
        assert socket.close() is None
        assert not quota.allow_post(the_member, "c")
        await asyncio.sleep(0.05)  # the close is written by a task
        assert socket.close() == (CloseCode.TOO_MANY, "kept posting after rate_limited")
    finally:
        quota.release()


@override_settings(
    ROOMCAST={
        "POST_RATE_PER_SOCKET": 1000,
        "POST_BURST_PER_SOCKET": 1,
        "RATE_LIMIT_CLOSE_AFTER": 2,
        "RATE_LIMIT_WINDOW_SECS": 0.05,
    }
)
async def test_refusals_spread_wider_than_the_window_do_not_close():
    """Refusals leak away over the window: one every window is never a flood."""
    socket, the_member = member()
    quota = limits.admit(SCOPE, None)
    try:
        for _ in range(4):
            quota.stamp = time.monotonic()  # an empty bucket, as right after a post
            quota.tokens = 0.0
            assert not quota.allow_post(the_member, "x")
            await asyncio.sleep(0.06)
        assert socket.close() is None and len(socket.events()) == 4
    finally:
        quota.release()


@override_settings(
    ROOMCAST={
        "POST_RATE_PER_SOCKET": 100,
        "POST_BURST_PER_SOCKET": 100,
        "POST_RATE_PER_USER": 1,
        "POST_BURST_PER_USER": 3,
    }
)
async def test_a_users_sockets_share_one_bucket_dropped_with_the_last_socket():
    """Two sockets of user 7 share 3 posts; a guest and user 8 are not touched; the
    user's state goes when their last socket is released."""
    socket, the_member = member()
    first, second = limits.admit(SCOPE, 7), limits.admit(SCOPE, 7)
    other, guest = limits.admit(SCOPE, 8), limits.admit(SCOPE, None)
    try:
        assert limits.counts() == ({7: 2, 8: 1}, {"192.0.2.7": 4})
        assert first.allow_post(the_member, "1") and second.allow_post(the_member, "2")
        assert first.allow_post(the_member, "3")
        assert not second.allow_post(the_member, "4")
        assert 0.9 < socket.events()[0]["retry_after"] <= 1.0
        assert other.allow_post(the_member, "u8") and guest.allow_post(the_member, "g")
        first.release()
        first.release()  # idempotent
        assert limits.counts()[0] == {7: 1, 8: 1}
        second.release()
        assert limits.counts()[0] == {8: 1}
        again = limits.admit(SCOPE, 7)  # a fresh, full bucket
        assert again.allow_post(the_member, "5")
        again.release()
    finally:
        for quota in (first, second, other, guest):
            quota.release()


@override_settings(ROOMCAST={"POST_RATE_PER_SOCKET": 0, "POST_RATE_PER_USER": 0})
async def test_rates_of_zero_turn_the_limits_off():
    socket, the_member = member()
    quota = limits.admit(SCOPE, 1)
    try:
        assert all(quota.allow_post(the_member, None) for _ in range(1000))
        assert socket.events() == []
    finally:
        quota.release()


def test_a_sockets_quota_is_small():
    """A socket's share is one slotted object (no __dict__): two buckets of two floats."""
    quota = limits.Quota(None, None, 10.0, 0.0)
    assert not hasattr(quota, "__dict__")
    assert sys.getsizeof(quota) <= 96


# -- socket caps ---------------------------------------------------------------------------------


@override_settings(ROOMCAST={"MAX_SOCKETS_PER_USER": 2, "MAX_SOCKETS_PER_ADDRESS": 3})
def test_socket_caps_per_user_and_per_address_name_the_limit():
    held = [limits.admit(SCOPE, 5), limits.admit(SCOPE, 5)]
    try:
        with pytest.raises(limits.TooManySocketsError) as user_cap:
            limits.admit(SCOPE, 5)
        assert user_cap.value.close_code == CloseCode.TOO_MANY
        assert user_cap.value.detail == "too many sockets for this user (MAX_SOCKETS_PER_USER=2)"
        held.append(limits.admit(SCOPE, None))
        with pytest.raises(limits.TooManySocketsError) as address_cap:
            limits.admit(SCOPE, 6)
        assert "(MAX_SOCKETS_PER_ADDRESS=3)" in address_cap.value.detail
        held.append(limits.admit({"client": ("192.0.2.8", 1)}, 6))  # another address
        held.append(limits.admit({}, None))  # no address known: not counted by address
        held.pop(0).release()
        held.append(limits.admit(SCOPE, 5))  # a place was freed
    finally:
        for quota in held:
            quota.release()


@override_settings(ROOMCAST={"MAX_SOCKETS_PER_USER": 0, "MAX_SOCKETS_PER_ADDRESS": 0})
def test_caps_of_zero_turn_them_off():
    held = [limits.admit(SCOPE, 5) for _ in range(1000)]
    for quota in held:
        quota.release()


@pytest.mark.parametrize(
    ("host", "counted_as"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::2", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("fe80::1%eth0", "fe80::/64"),
        ("not an address", "not an address"),
    ],
)
def test_addresses_count_ipv6_by_its_64_block(host, counted_as):
    """One host usually holds a whole IPv6 /64: counting single addresses would let it
    open as many sockets as it likes."""
    assert limits.address_of({"client": (host, 1)}) == counted_as


def test_no_client_in_the_scope_is_no_address():
    assert limits.address_of({}) is None and limits.address_of({"client": None}) is None


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value", "check_id"),
    [
        ("POST_RATE_PER_SOCKET", -1, "roomcast.E017"),
        ("POST_RATE_PER_USER", "fast", "roomcast.E017"),
        ("POST_RATE_PER_USER", float("nan"), "roomcast.E017"),
        ("POST_BURST_PER_SOCKET", 0, "roomcast.E002"),
        ("POST_BURST_PER_USER", 2.5, "roomcast.E002"),
        ("RATE_LIMIT_CLOSE_AFTER", -1, "roomcast.E012"),
        ("MAX_SOCKETS_PER_USER", None, "roomcast.E012"),
        ("MAX_SOCKETS_PER_ADDRESS", True, "roomcast.E012"),
        ("RATE_LIMIT_WINDOW_SECS", 0, "roomcast.E018"),
    ],
)
def test_bad_limit_settings_fail_the_checks(setting, value, check_id):
    with override_settings(ROOMCAST={setting: value}):
        errors = [e for e in run_checks() if e.id.startswith("roomcast.")]
    assert [e.id for e in errors] == [check_id]
    assert setting in errors[0].msg


def test_the_defaults_pass_the_checks_and_are_limits():
    assert [e for e in run_checks() if e.id.startswith("roomcast.")] == []
    assert limits._config() == limits._Config(
        socket_rate=5.0,
        socket_burst=10.0,
        user_rate=10.0,
        user_burst=20.0,
        close_after=10,
        window=10.0,
        per_user=100,
        per_address=500,
        request_rate=10.0,
        request_burst=100.0,
    )


# -- through the room socket ---------------------------------------------------------------------


@pytest.fixture
async def app():
    yield websocket_application()
    running = hub.running_hub()
    if running is not None:
        await running.close()


async def _session_cookie(username: str) -> tuple[bytes, bytes]:
    def login():
        user = get_user_model().objects.create_user(username)
        client = Client()
        client.force_login(user)
        return client.cookies["sessionid"].value

    return (b"cookie", f"sessionid={await database_sync_to_async(login)()}".encode())


@override_settings(ROOMCAST={"POST_RATE_PER_SOCKET": 2, "POST_BURST_PER_SOCKET": 3})
async def test_a_flooding_socket_gets_rate_limited_and_nothing_else_is_lost(app):
    """Six posts at once: three are stored and reach the other member, three get
    rate_limited with their client_ids and are not stored; the socket stays up."""
    flooder, reader = RoomCommunicator(app, "flood"), RoomCommunicator(app, "flood")
    await flooder.join()
    await reader.join()
    try:
        for i in range(6):
            await flooder.say(f"m{i}", client_id=f"c{i}")
        answers = [await flooder.receive_event() for _ in range(9)]
        acks = [a["client_id"] for a in answers if a["type"] == "ack"]
        refused = [a for a in answers if a["type"] == "error"]
        assert acks == ["c0", "c1", "c2"]
        assert [r["client_id"] for r in refused] == ["c3", "c4", "c5"]
        assert all(r["code"] == "rate_limited" and r["retry_after"] > 0 for r in refused)
        seen = await reader.receive_messages(3)
        assert [m["message"] for m in seen] == ["m0", "m1", "m2"]
        stored = await database_sync_to_async(
            lambda: list(Message.objects.order_by("seq").values_list("text", flat=True))
        )()
        assert stored == ["m0", "m1", "m2"]
        await flooder.send_to(text_data=json.dumps({"type": "ping"}))
        assert (await flooder.receive_event("pong"))["type"] == "pong"
    finally:
        await flooder.disconnect()
        await reader.disconnect()


@override_settings(ROOMCAST={"MAX_SOCKETS_PER_USER": 2})
async def test_one_socket_too_many_for_a_user_is_closed_4429_naming_the_limit(app):
    cookie = await _session_cookie("pat")
    first = RoomCommunicator(app, "a", headers=[cookie])
    second = RoomCommunicator(app, "b", headers=[cookie])
    third = RoomCommunicator(app, "c", headers=[cookie])
    await first.join()
    await second.join()
    connected, _ = await third.connect()
    assert connected  # accepted, then closed with the reason (a browser sees both)
    assert await third.receive_close() == CloseCode.TOO_MANY
    await first.disconnect()
    fourth = RoomCommunicator(app, "c", headers=[cookie])
    await fourth.join()  # the first one's place
    await second.disconnect()
    await fourth.disconnect()


@override_settings(ROOMCAST={"MAX_SOCKETS_PER_ADDRESS": 1})
async def test_one_socket_too_many_from_an_address_is_closed_4429(app):
    first, second = RoomCommunicator(app, "x"), RoomCommunicator(app, "x")
    for communicator in (first, second):
        communicator.scope["client"] = ("198.51.100.1", 1234)
    await first.join()
    await second.connect()
    output = await second.receive_output()
    while output["type"] != "websocket.close":
        output = await second.receive_output()
    assert output["code"] == CloseCode.TOO_MANY
    assert output["reason"] == "too many sockets from this address (MAX_SOCKETS_PER_ADDRESS=1)"
    await first.disconnect()
