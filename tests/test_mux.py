"""The multi-room socket ``/ws/`` through Channels' WebsocketCommunicator: subscriptions,
per-room frames, errors, the user stream, typing, revocation of one room.

In-memory channel layer, SQLite; every test gets a fresh layer and database.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model

from roomcast import auth, fanout, rooms, services
from roomcast.protocol import CloseCode
from roomcast.testing import RoomCommunicator

pytestmark = pytest.mark.django_db(transaction=True)

User = get_user_model()


def sync(func):
    return database_sync_to_async(func)


@pytest.fixture
async def hub_ready(app):
    """This loop's hub, in the control group (revocations reach it)."""
    the_hub = services.hub()
    await asyncio.wait_for(the_hub.control_joined.wait(), 5)
    return the_hub


async def token_for(name: str, **fields) -> str:
    user = await sync(User.objects.create_user)(name, **fields)
    return await sync(auth.issue_token)(user)


#: Frames about who is in a room: they come after each subscribe and with every join.
PRESENCE_TYPES = frozenset({"presence", "join", "leave", "presence_count"})


async def quiet(socket, seconds: float) -> bool:
    """Whether nothing but presence frames arrives within ``seconds``."""
    while not await socket.receive_nothing(seconds):
        frame = await socket.receive_event(None)
        if frame["type"] not in PRESENCE_TYPES:
            raise AssertionError(f"expected nothing, got {frame!r}")
    return True


async def two_frames(socket) -> dict[str, dict]:
    """The next two frames that are not about presence (a message and its ack), by type."""
    frames = {}
    while len(frames) < 2:
        frame = await socket.receive_event(None)
        if frame["type"] not in PRESENCE_TYPES:
            frames[frame["type"]] = frame
    return frames


async def next_of(socket, kind: str, room: str | None = None, timeout: float = 5) -> dict:
    """The next frame of ``kind`` (and ``room``), skipping others."""
    while True:
        frame = await socket.receive_event(None, timeout)
        if frame["type"] == kind and (room is None or frame.get("room") == room):
            return frame


async def test_one_socket_many_rooms_frames_carry_their_room(mux):
    """Two rooms on one socket: joined, messages and acks each name their room; a post
    in one room reaches that room's members only."""
    alice = await mux()
    assert alice.connected["type"] == "connected" and alice.connected["user"].startswith("guest-")
    assert "user_seq" not in alice.connected  # a guest has no user channel
    assert (await alice.subscribe("lobby"))["seq"] == 0
    assert (await alice.subscribe("技术交流"))["room"] == "技术交流"
    bob = await mux()
    await bob.subscribe("lobby")
    await alice.say("技术交流", "你好", client_id="c-1")
    frames = await two_frames(alice)
    assert frames["ack"] == {"type": "ack", "client_id": "c-1", "seq": 1, "room": "技术交流"}
    assert frames["message"]["room"] == "技术交流" and frames["message"]["message"] == "你好"
    await bob.say("lobby", "hi all")
    assert (await next_of(alice, "message", "lobby"))["message"] == "hi all"
    frames = await two_frames(bob)
    assert frames["message"]["message"] == "hi all" and frames["ack"]["room"] == "lobby"
    assert await quiet(bob, 0.2)  # nothing from the room bob is not in


async def test_subscribe_errors_are_named_and_the_socket_stays(mux):
    """Bad names, doubles, unknown rooms in frames, room-less posts: each an answer with
    the room, and the socket keeps working."""
    alice = await mux()
    await alice.send_frame(type="subscribe", room="a/b")
    refused = await next_of(alice, "unsubscribed")
    assert refused["room"] == "a/b" and refused["code"] == CloseCode.BAD_REQUEST
    await alice.subscribe("lobby")
    await alice.send_frame(type="subscribe", room="lobby")
    error = await next_of(alice, "error")
    assert error["code"] == "already_subscribed" and error["room"] == "lobby"
    await alice.say("elsewhere", "hi", client_id="c-9")
    error = await next_of(alice, "error")
    assert (error["code"], error["room"], error["client_id"]) == (
        "not_subscribed",
        "elsewhere",
        "c-9",
    )
    await alice.send_frame(type="message", message="no room")
    assert (await next_of(alice, "error"))["code"] == "invalid_frame"
    await alice.send_frame(type="subscribe")
    assert (await next_of(alice, "error"))["code"] == "invalid_frame"
    await alice.send_frame(type="unsubscribe", room="lobby")
    done = await next_of(alice, "unsubscribed")
    assert (done["room"], done["code"], done["reason"]) == ("lobby", 1000, "unsubscribed")
    await alice.send_frame(type="unsubscribe", room="lobby")
    assert (await next_of(alice, "error"))["code"] == "not_subscribed"
    await alice.subscribe("lobby")  # and back in


async def test_subscriptions_are_capped(mux, settings):
    settings.ROOMCAST = {"MAX_SUBSCRIPTIONS": 3, "ROOM_REQUESTS_PER_SOCKET": 0}
    alice = await mux()
    for name in ("a", "b", "c"):
        await alice.subscribe(name)
    await alice.send_frame(type="subscribe", room="d")
    error = await next_of(alice, "error")
    assert error["code"] == "too_many_subscriptions" and "MAX_SUBSCRIPTIONS" in error["detail"]
    await alice.send_frame(type="unsubscribe", room="a")
    await next_of(alice, "unsubscribed")
    await alice.subscribe("d")


async def test_since_recovers_per_room(mux):
    """Each room recovers from its own since, with recovered true."""
    for text in ("1", "2", "3"):
        await services.apost_message("one", text)
        await services.apost_message("two", text + text)
    alice = await mux()
    joined = await alice.subscribe("one", since=1)
    assert joined["recovered"] is True and joined["seq"] == 3
    assert [(await next_of(alice, "message", "one"))["message"] for _ in range(2)] == ["2", "3"]
    joined = await alice.subscribe("two", since=3)
    assert joined["recovered"] is True
    assert await quiet(alice, 0.2)
    joined = await alice.subscribe("three", since=7)  # ahead of an empty room
    assert joined["recovered"] is False


async def test_private_room_is_refused_and_revocation_unsubscribes_one_room_only(mux, hub_ready):
    """A room the user may not join is refused with unsubscribed 4403; a room made private
    under a subscribed non-member ends that subscription with 4403 and the others go on."""
    token = await token_for("ann")
    await sync(rooms.create_room)("vault", visibility="private")
    ann = await mux(token=token)
    assert ann.connected["user"] == "ann" and ann.connected["user_seq"] == 0
    await ann.send_frame(type="subscribe", room="vault")
    refused = await next_of(ann, "unsubscribed", "vault")
    assert (refused["code"], refused["reason"]) == (4403, "not allowed in this room")
    await ann.subscribe("plaza")
    await ann.subscribe("lobby")
    await sync(rooms.create_room)("plaza")
    await sync(rooms.set_visibility)("plaza", "private")
    ended = await next_of(ann, "unsubscribed", "plaza")
    assert (ended["code"], ended["reason"]) == (4403, "not allowed in this room any more")
    await ann.say("lobby", "still here")
    assert (await next_of(ann, "message", "lobby"))["message"] == "still here"


async def test_user_stream_reaches_every_socket_of_the_user_and_recovers(mux):
    """A message in the user's own stream reaches each of their /ws/ sockets, and a socket
    that comes back with ?since= gets what it missed; one-room sockets never see it."""
    token = await token_for("una")
    user_id = (await sync(User.objects.get)(username="una")).pk
    first, second = await mux(token=token), await mux(token=token)
    stream = fanout.user_room(user_id)
    await services.apost_message(stream, "your export is ready")
    for socket in (first, second):
        frame = await socket.receive_event()
        assert frame["seq"] == 1 and "your export is ready" in json.dumps(frame)
    await services.apost_message(stream, "two")
    await services.apost_message(stream, "three")
    late = await mux(token=token, since=1)
    assert late.connected["user_seq"] == 3 and late.connected["recovered"] is True
    seqs = [(await late.receive_event())["seq"] for _ in range(2)]
    assert seqs == [2, 3]


async def test_typing_reaches_others_once_per_interval(mux, app, settings):
    """typing goes to the room's other /ws/ members as {"type","room","user"}, not to the
    sender, not to room sockets, and at most once per TYPING_INTERVAL_SECS."""
    settings.ROOMCAST = {"TYPING_INTERVAL_SECS": 0.5}
    alice, bob = await mux(token=await token_for("alice")), await mux(token=await token_for("bob"))
    for socket in (alice, bob):
        await socket.subscribe("lobby")
    seed = RoomCommunicator(app, "lobby", v1=False)
    await seed.join()
    v1_room = RoomCommunicator(app, "lobby")
    await v1_room.join()
    for _ in range(5):
        await alice.send_frame(type="typing", room="lobby")
    assert await next_of(bob, "typing") == {"type": "typing", "room": "lobby", "user": "alice"}
    assert await quiet(bob, 0.3)  # the four others were dropped
    assert await quiet(alice, 0.1)
    assert await seed.receive_nothing(0.1) and await v1_room.receive_nothing(0.1)
    await asyncio.sleep(0.5)
    await alice.send_frame(type="typing", room="lobby")
    assert (await next_of(bob, "typing"))["user"] == "alice"
    await seed.disconnect()
    await v1_room.disconnect()


async def test_a_slow_connection_is_closed_as_a_whole(mux, settings):
    """The outbound bound is the connection's: frames of all its rooms count together."""
    settings.ROOMCAST = {"OUTBOUND_BUFFER_FRAMES": 600}
    alice = await mux()
    await alice.subscribe("a")
    await alice.subscribe("b")
    the_hub = services.hub()
    connection = the_hub.members("a")[0].connection
    assert connection is the_hub.members("b")[0].connection
    blocked = asyncio.Event()

    async def never(message):  # a client that stopped reading
        await blocked.wait()

    connection._send = never
    connection._direct = None
    for seq in range(1, 400):
        the_hub.dispatch("a", {"type": "room.message", "seq": seq, "frame": f'{{"seq":{seq}}}'})
        the_hub.dispatch("b", {"type": "room.message", "seq": seq, "frame": f'{{"seq":{seq}}}'})
    assert connection.closed
    blocked.set()


async def test_room_requests_are_rate_limited_per_socket(mux, settings):
    """Subscribes come out of a bucket of MAX_SUBSCRIPTIONS refilled at
    ROOM_REQUESTS_PER_SOCKET: past it, rate_limited with the room and retry_after, and
    nothing is joined."""
    settings.ROOMCAST = {"MAX_SUBSCRIPTIONS": 5, "ROOM_REQUESTS_PER_SOCKET": 1.0}
    alice = await mux()
    for name in "abcde":
        await alice.subscribe(name)
    for name in "abcd":
        await alice.send_frame(type="unsubscribe", room=name)
        await next_of(alice, "unsubscribed", name)
    await alice.send_frame(type="subscribe", room="f")
    error = await next_of(alice, "error")
    assert (error["code"], error["room"]) == ("rate_limited", "f")
    assert 0 < error["retry_after"] <= 1.0
    await asyncio.sleep(error["retry_after"])
    await alice.subscribe("f")


async def test_a_rate_limited_post_on_ws_names_its_room(mux, settings):
    """A post over the socket's rate gets rate_limited with the post's room and client_id
    (the client settles that request with it)."""
    settings.ROOMCAST = {"POST_RATE_PER_SOCKET": 1.0, "POST_BURST_PER_SOCKET": 1}
    alice = await mux()
    await alice.subscribe("quick")
    await alice.say("quick", "one", client_id="c-1")
    await alice.say("quick", "two", client_id="c-2")
    error = await next_of(alice, "error")
    assert (error["code"], error["room"], error["client_id"]) == ("rate_limited", "quick", "c-2")


async def test_edit_and_delete_on_ws_reach_v1_members_not_seed_ones(mux, app):
    """An edit and a delete from /ws/: acked with their own seq and room, delivered to
    /ws/ and v1 room sockets as events, never to seed-dialect sockets; a later join shows
    the final state, and since replays the events."""
    alice = await mux(token=await token_for("alice"))
    await alice.subscribe("lobby")
    seed = RoomCommunicator(app, "lobby", v1=False)
    await seed.join()
    v1_room = RoomCommunicator(app, "lobby")
    await v1_room.join()
    await alice.say("lobby", "helo", client_id="m-1")
    await next_of(alice, "ack")
    await seed.receive_event("message")
    await v1_room.receive_event("message")
    await alice.send_frame(type="edit", room="lobby", seq=1, message="hello", client_id="e-1")
    ack = await next_of(alice, "ack")
    assert (ack["room"], ack["seq"], ack["client_id"]) == ("lobby", 2, "e-1")
    edit = await v1_room.receive_event("edit")
    assert (edit["seq"], edit["target"], edit["message"]) == (2, 1, "hello")
    await alice.send_frame(type="delete", room="lobby", seq=1)
    assert (await v1_room.receive_event("delete"))["target"] == 1
    assert await seed.receive_nothing(0.2)  # neither event reached the tutorial's page
    late = await mux()
    await late.subscribe("lobby")
    tombstone = await late.receive_event("message")
    assert (tombstone["seq"], tombstone["deleted"], tombstone["message"]) == (1, True, "")
    # Refusals: another user may not edit alice's message; no such message.
    bob = await mux(token=await token_for("bob"))
    await bob.subscribe("lobby")
    await bob.send_frame(type="edit", room="lobby", seq=3, message="mine now")
    assert (await next_of(bob, "error"))["code"] == "not_found"  # seq 3 is the delete event
    await alice.say("lobby", "second")
    await next_of(bob, "message")
    await bob.send_frame(type="edit", room="lobby", seq=4, message="mine now", client_id="x")
    error = await next_of(bob, "error")
    assert (error["code"], error["room"], error["client_id"]) == ("forbidden", "lobby", "x")
    await seed.disconnect()
    await v1_room.disconnect()


async def test_read_cursor_updates_every_socket_of_the_user(mux):
    """joined carries read_seq and unread; a read on one socket sends unread to every
    /ws/ socket of the user; guests get forbidden."""
    for text in ("a", "b", "c"):
        await services.apost_message("news", text)
    token = await token_for("rae")
    phone, laptop = await mux(token=token), await mux(token=token)
    joined = await phone.subscribe("news")
    assert (joined["read_seq"], joined["unread"]) == (0, 3)
    await laptop.subscribe("news")
    await phone.send_frame(type="read", room="news", seq=2)
    for socket in (phone, laptop):
        unread = await next_of(socket, "unread")
        assert (unread["room"], unread["read_seq"], unread["unread"]) == ("news", 2, 1)
    await laptop.send_frame(type="read", room="news", seq=1)  # never back
    assert (await next_of(phone, "unread"))["read_seq"] == 2
    guest = await mux()
    joined = await guest.subscribe("news")
    assert "unread" not in joined
    await guest.send_frame(type="read", room="news", seq=3)
    assert (await next_of(guest, "error"))["code"] == "forbidden"


async def test_send_to_user_reaches_each_ws_socket_of_the_user(mux):
    from roomcast import push

    token = await token_for("uma")
    first, second = await mux(token=token), await mux(token=token)
    other = await mux(token=await token_for("otto"))
    stored = await push.asend_to_user("uma", {"kind": "invoice", "id": 7})
    for socket in (first, second):
        frame = await next_of(socket, "user_message")
        assert frame == {
            "type": "user_message",
            "seq": stored.seq,
            "data": {"kind": "invoice", "id": 7},
            "ts": frame["ts"],
        }
    assert await other.receive_nothing(0.2)


async def test_a_subscribe_refused_by_a_room_ban_says_so(mux):
    """A user banned from a room is refused with the ban's reason; another room is not
    affected."""
    from asgiref.sync import sync_to_async

    from roomcast import moderation

    token = await token_for("alice")
    await sync_to_async(moderation.ban)("alice", room="plaza", duration=3600)
    alice = await mux(token=token)
    await alice.send_frame(type="subscribe", room="plaza")
    refused = await next_of(alice, "unsubscribed", "plaza")
    assert refused["code"] == 4403 and refused["reason"].startswith("banned from this room until")
    await alice.subscribe("lobby")
