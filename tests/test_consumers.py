"""The consumer, hub and services together, through Channels' WebsocketCommunicator.

In-memory channel layer, SQLite; every test gets a fresh layer and database.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from django.contrib.auth import get_user_model
from django.test import Client, override_settings

from roomcast import fanout, hub, services
from roomcast.models import Message, Room
from roomcast.protocol import CloseCode
from roomcast.routing import websocket_application, websocket_urlpatterns
from roomcast.testing import RoomCommunicator

pytestmark = pytest.mark.django_db(transaction=True)

UNICODE_ROOMS = ["技术交流", "café", "a room with spaces", "é" * 200, "lobby"]


async def test_seed_client_sends_and_reads_message_key(room_of):
    """A seed client (no subprotocol) sends {"message"} and reads data["message"]."""
    alice = await room_of("lobby", v1=False)
    bob = await room_of("lobby", v1=False)
    await alice.send_to(text_data=json.dumps({"message": "hello"}))
    for member in (alice, bob):
        frame = await member.receive_event("message")
        assert frame["message"] == "hello"
        assert frame["seq"] == 1 and frame["kind"] == "chat"
        assert re.fullmatch(r"guest-[0-9a-f]{6}", frame["user"])  # a guest, by its own name
    # The seed's dialect gets no joined/ack frames: nothing else is waiting.
    assert await alice.receive_nothing(0.1)
    # An empty message (Enter on an empty box) is refused with an error its page can show.
    await alice.send_to(text_data=json.dumps({"message": ""}))
    error = await alice.receive_event("error")
    assert error["code"] == "invalid_frame" and error["message"] == error["detail"]
    assert "empty" in error["message"]
    assert await bob.receive_nothing(0.1)


async def test_v1_client_gets_joined_then_ack(room_of):
    """A v1 client gets joined first, then its message and an ack with the stored seq."""
    alice = RoomCommunicator(websocket_application(), "lobby")
    joined = await alice.join()
    assert joined == {"type": "joined", "room": "lobby", "seq": 0}
    await alice.say("hi", client_id="c-1")
    frames = [await alice.receive_event(), await alice.receive_event()]
    by_type = {f["type"]: f for f in frames}
    assert by_type["ack"] == {"type": "ack", "client_id": "c-1", "seq": 1}
    assert by_type["message"]["client_id"] == "c-1"
    await alice.disconnect()


@pytest.mark.parametrize("name", UNICODE_ROOMS)
async def test_unicode_room_names_work(room_of, name):
    """Rooms named by any Unicode text carry messages, stored under the canonical name."""
    alice = await room_of(name)
    bob = await room_of(name)
    await alice.say("你好 café")
    for member in (alice, bob):
        frame = await member.receive_event("message")
        assert frame["message"] == "你好 café" and frame["room"] == name
    assert await Room.objects.filter(name=name).acount() == 1


async def test_rooms_are_separate(room_of):
    """A message reaches its room only."""
    a = await room_of("one")
    b = await room_of("two")
    await a.say("only for one")
    assert (await a.receive_event("message"))["message"] == "only for one"
    assert await b.receive_nothing(0.2)


async def test_join_sends_recent_history(room_of):
    """A joining member gets the latest HISTORY_COUNT messages, oldest first."""
    for i in range(1, 8):
        await services.apost_message("hist", f"m{i}")
    with override_settings(ROOMCAST={"HISTORY_COUNT": 5}):
        member = await room_of("hist")
        frames = await member.receive_messages(5)
    assert [f["seq"] for f in frames] == [3, 4, 5, 6, 7]
    assert [f["message"] for f in frames] == ["m3", "m4", "m5", "m6", "m7"]
    assert await member.receive_nothing(0.1)


async def test_reconnect_with_since_gets_exactly_the_missed_messages(room_of):
    """since=N replays the messages after N in order, then live ones, with no duplicate."""
    for i in range(1, 11):
        await services.apost_message("since", f"m{i}")
    member = await room_of("since", since=6)
    frames = await member.receive_messages(4)
    assert [f["seq"] for f in frames] == [7, 8, 9, 10]
    await services.apost_message("since", "m11")
    assert (await member.receive_event("message"))["seq"] == 11
    assert await member.receive_nothing(0.1)


async def test_since_up_to_date_replays_nothing(room_of):
    """A client already at the room's last seq is recovered with nothing to replay."""
    await services.apost_message("uptodate", "m1")
    communicator = RoomCommunicator(websocket_application(), "uptodate", since=1)
    assert await communicator.join() == {
        "type": "joined",
        "room": "uptodate",
        "seq": 1,
        "recovered": True,
    }
    assert await communicator.receive_nothing(0.1)
    await communicator.disconnect()


@override_settings(ROOMCAST={"REPLAY_LIMIT": 3, "HISTORY_COUNT": 2})
async def test_since_beyond_replay_limit_says_not_recovered(app):
    """A gap longer than REPLAY_LIMIT is reported (recovered: false) with the latest history."""
    for i in range(1, 11):
        await services.apost_message("gap", f"m{i}")
    communicator = RoomCommunicator(app, "gap", since=2)
    joined = await communicator.join()
    assert joined == {"type": "joined", "room": "gap", "seq": 10, "recovered": False}
    assert [f["seq"] for f in await communicator.receive_messages(2)] == [9, 10]
    await communicator.disconnect()


async def test_since_ahead_of_room_says_not_recovered(app):
    """A client claiming a seq the room never reached (a reset database) is told so."""
    await services.apost_message("ahead", "m1")
    communicator = RoomCommunicator(app, "ahead", since=50)
    joined = await communicator.join()
    assert joined["recovered"] is False and joined["seq"] == 1
    assert (await communicator.receive_event("message"))["seq"] == 1
    await communicator.disconnect()


async def test_live_gap_is_filled_from_the_database(room_of):
    """When the layer loses a message, members get it from the database, in order."""
    member = await room_of("lossy")
    lost = await database_sync_to_async(services.store_message)("lossy", "lost on the layer")
    kept = await database_sync_to_async(services.store_message)("lossy", "published")
    await fanout.publish("lossy", services.layer_message(kept))  # seq 2 arrives, 1 never does
    frames = await member.receive_messages(2)
    assert [(f["seq"], f["message"]) for f in frames] == [
        (1, "lost on the layer"),
        (2, "published"),
    ]
    assert frames[0] == json.loads(lost.frame)  # read back: the same frame as published
    await fanout.publish("lossy", services.layer_message(lost))  # late duplicate: dropped
    assert await member.receive_nothing(0.1)


async def test_malformed_frames_get_error_events_and_room_carries_on(room_of):
    """Bad frames get an error event; the socket stays up and other members see nothing odd."""
    bad = await room_of("storm")
    good = await room_of("storm")
    bad_frames = ["not json", "[]", "{}", '{"message": 5}', '{"type": "dance"}', '{"message": " "}']
    for text in bad_frames:
        await bad.send_to(text_data=text)
    codes = [(await bad.receive_event("error"))["code"] for _ in bad_frames]
    assert codes == [
        "invalid_json",
        "invalid_frame",
        "invalid_frame",
        "invalid_frame",
        "unknown_type",
        "invalid_frame",
    ]
    await bad.send_to(bytes_data=b"\x00\x01")
    assert (await bad.receive_event("error"))["code"] == "unsupported_data"
    await bad.say("still here")
    assert (await bad.receive_event("message"))["message"] == "still here"
    assert (await good.receive_event("message"))["message"] == "still here"
    assert await good.receive_nothing(0.1)
    assert await Message.objects.acount() == 1


@override_settings(ROOMCAST={"MAX_FRAME_BYTES": 100})
async def test_oversized_frame_closes_1009(room_of):
    """A frame over MAX_FRAME_BYTES closes that socket with 1009; others carry on."""
    big = await room_of("big")
    other = await room_of("big")
    await big.say("x" * 200)
    assert await big.receive_close() == CloseCode.MESSAGE_TOO_BIG
    await other.say("fine")
    assert (await other.receive_event("message"))["message"] == "fine"


@pytest.mark.parametrize(
    "path", ["/ws/chat/" + "x" * 201 + "/", "/ws/chat/lobby/?since=abc", "/ws/chat/%20/"]
)
async def test_bad_url_closes_4400(app, path):
    """A bad room name or since= is accepted then closed with 4400 and a reason."""
    from channels.testing import WebsocketCommunicator

    communicator = WebsocketCommunicator(app, path)
    connected, _ = await communicator.connect()
    assert connected
    output = await communicator.receive_output()
    assert output["type"] == "websocket.close" and output["code"] == CloseCode.BAD_REQUEST
    assert output["reason"]


async def test_ping_and_history_requests(room_of):
    """ping gets pong; history returns older pages with has_more."""
    for i in range(1, 6):
        await services.apost_message("pages", f"m{i}")
    with override_settings(ROOMCAST={"HISTORY_COUNT": 1}):
        member = await room_of("pages")
        await member.receive_event("message")
    await member.send_json_to({"type": "ping"})
    assert await member.receive_event("pong") == {"type": "pong"}
    await member.send_json_to({"type": "history", "before": 5, "limit": 2})
    page = await member.receive_event("history")
    assert [m["seq"] for m in page["messages"]] == [3, 4] and page["has_more"] is True
    await member.send_json_to({"type": "history", "before": 3, "limit": 5})
    page = await member.receive_event("history")
    assert [m["seq"] for m in page["messages"]] == [1, 2] and page["has_more"] is False


async def test_seed_style_group_send_reaches_the_room(room_of):
    """The seed's group_send of chat.system_message / chat.force_disconnect still works."""
    member = await room_of("lobby")
    seed = await room_of("lobby", v1=False)
    layer = fanout.get_layer()
    await layer.group_send(
        "chat_lobby", {"type": "chat.system_message", "text": "maintenance at 5"}
    )
    for m in (member, seed):
        frame = await m.receive_event("message")
        assert frame["message"] == "maintenance at 5" and frame["kind"] == "system"
        assert "seq" not in frame  # not part of the stored stream
    await layer.group_send(fanout.room_group("lobby"), {"type": "chat.force_disconnect"})
    assert await member.receive_close() == CloseCode.DISCONNECTED
    assert await seed.receive_close() == CloseCode.DISCONNECTED


async def test_origin_check_refuses_cross_site_browsers(app):
    """A browser page from another site cannot open a socket; same-site and no-Origin can."""
    for origin in (b"https://evil.example", b"http://[::1"):  # the second is unparsable
        evil = RoomCommunicator(app, "lobby", headers=[(b"origin", origin)])
        connected, _ = await evil.connect()
        assert not connected, origin
    # WebsocketCommunicator sends no Host: a browser's always does, and the site's
    # origin is its scheme, Host and port.
    same_site = [(b"host", b"localhost:8000"), (b"origin", b"http://localhost:8000")]
    for headers in (same_site, []):
        ok = RoomCommunicator(app, "lobby", headers=headers)
        await ok.join()
        await ok.disconnect()


async def _session_cookie(username: str) -> tuple[bytes, bytes]:
    def login():
        user = get_user_model().objects.create_user(username, password="pw-12345678")
        client = Client()
        client.force_login(user)
        return client.cookies["sessionid"].value

    return (b"cookie", f"sessionid={await database_sync_to_async(login)()}".encode())


@override_settings(ROOMCAST={"ALLOW_ANONYMOUS": False})
async def test_anonymous_cannot_post_when_disallowed_but_users_can(room_of):
    """With ALLOW_ANONYMOUS off, anonymous posts get "forbidden"; a session user posts by name."""
    anonymous = await room_of("members")
    await anonymous.say("hi")
    assert (await anonymous.receive_event("error"))["code"] == "forbidden"
    stale = await room_of("members", headers=[(b"cookie", b"sessionid=no-such-session")])
    await stale.say("hi")
    assert (await stale.receive_event("error"))["code"] == "forbidden"
    alice = await room_of("members", headers=[await _session_cookie("alice")])
    await alice.say("hi from alice")
    frame = await alice.receive_event("message")
    assert frame["user"] == "alice"
    assert (await anonymous.receive_event("message"))["user"] == "alice"


@override_settings(ROOMCAST={"ROOM_LINGER_SECS": 0.5})
async def test_an_empty_room_lingers_then_unsubscribes(room_of):
    """The last local member out leaves the room subscribed for ROOM_LINGER_SECS: a
    socket back within it joins the same subscription, its catch-up from the hub's
    recent messages; when it is over, the hub leaves the room's group."""
    member = await room_of("brief")
    await member.say("kept")
    await member.receive_event("message")
    layer = fanout.get_layer()
    group = fanout.room_group("brief")
    channel = hub.running_hub()._rooms["brief"].channel
    assert channel in layer.groups.get(group, {})
    await member.disconnect()
    again = await room_of("brief", v1=False)  # the seed's dialect: the catch-up only
    assert (await again.receive_event("message"))["message"] == "kept"
    assert hub.running_hub()._rooms["brief"].channel == channel  # not subscribed anew
    left_at = asyncio.get_running_loop().time()
    await again.disconnect()
    for _ in range(500):
        if not layer.groups.get(group):
            break
        await asyncio.sleep(0.01)
    assert not layer.groups.get(group)
    assert asyncio.get_running_loop().time() - left_at >= 0.5 - 0.01
    assert hub.running_hub().members("brief") == []
    assert "brief" not in hub.running_hub()._rooms


@override_settings(ROOMCAST={"ROOM_LINGER_SECS": 0})
async def test_without_linger_the_last_member_out_unsubscribes_at_once(room_of):
    member = await room_of("brief")
    layer = fanout.get_layer()
    assert layer.groups.get(fanout.room_group("brief"))
    await member.disconnect()
    for _ in range(50):
        if not layer.groups.get(fanout.room_group("brief")):
            break
        await asyncio.sleep(0.01)
    assert not layer.groups.get(fanout.room_group("brief"))
    assert hub.running_hub().members("brief") == []


async def test_urlpatterns_work_inside_a_projects_own_channels_stack(app):
    """Mounted the Channels way, ``AuthMiddlewareStack(URLRouter(websocket_urlpatterns))``,
    the rooms work too: the session user comes from Channels, frames go through its send."""
    own_stack = AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
    alice = RoomCommunicator(own_stack, "own stack", headers=[await _session_cookie("carol")])
    bob = RoomCommunicator(own_stack, "own stack")
    for member in (alice, bob):
        await member.join()
    await alice.say("hello")
    for member in (alice, bob):
        frame = await member.receive_event("message")
        assert (frame["message"], frame["user"]) == ("hello", "carol")
    for member in (alice, bob):
        await member.disconnect()


async def test_a_resent_client_id_is_stored_once(room_of):
    """A client that sends again (after a reconnect, not knowing whether its message was
    stored) gets the first message's seq back; nobody sees a second copy."""
    sender = await room_of("idempotent")
    watcher = await room_of("idempotent")
    for _ in range(2):
        await sender.send_to(
            text_data=json.dumps({"type": "message", "message": "once", "client_id": "c-42"})
        )
        while (frame := await sender.receive_event())["type"] != "ack":
            assert frame["seq"] == 1  # its own message, once
        assert frame["seq"] == 1
    await sender.say("next")  # a new client_id: the next seq, no gap
    assert [(await watcher.receive_event("message"))["seq"] for _ in range(2)] == [1, 2]
    assert await watcher.receive_nothing(0.1)
    rows = await database_sync_to_async(list)(
        Message.objects.filter(room__name="idempotent").values_list("seq", "client_id")
    )
    assert rows[0] == (1, "c-42") and len(rows) == 2


async def test_the_testing_helpers_docstring_example_works():
    """roomcast.testing's example, as a user would write it."""
    alice = RoomCommunicator(websocket_application(), "docstring lobby")
    await alice.join()
    await alice.say("hi")
    assert (await alice.receive_next("message"))["message"] == "hi"
    await alice.disconnect()


# -- hostile input (issue 6): every input gets a named answer, no traceback --------------------


async def _handshake(app, path, *, raw_path=None, http_response=False, subprotocols=()):
    """Open ``path`` on ``app`` with a scope as a server makes it; return what the app
    sent (accept then close, a close, or an HTTP response start then body)."""
    from channels.testing import ApplicationCommunicator

    scope = {
        "type": "websocket",
        "path": path,
        "query_string": b"",
        "headers": [],
        "subprotocols": list(subprotocols),
    }
    if raw_path is not None:
        scope["raw_path"] = raw_path
    if http_response:
        scope["extensions"] = {"websocket.http.response": {}}
    communicator = ApplicationCommunicator(app, scope)
    await communicator.send_input({"type": "websocket.connect"})
    outputs = [await communicator.receive_output(5)]
    if outputs[0]["type"] in ("websocket.accept", "websocket.http.response.start"):
        outputs.append(await communicator.receive_output(5))
    if not communicator.future.done():
        await communicator.send_input({"type": "websocket.disconnect", "code": 1000})
    await communicator.wait(2)  # re-raises anything the application raised
    return outputs


def _closed_with(outputs, code):
    """The reason of an accept-then-close with ``code``; fails on anything else."""
    assert [o["type"] for o in outputs] == ["websocket.accept", "websocket.close"], outputs
    assert outputs[1]["code"] == code, outputs
    assert len(outputs[1]["reason"].encode()) <= 123
    return outputs[1]["reason"]


@pytest.mark.parametrize("v1", [True, False])
async def test_deeply_nested_json_gets_an_error_event_and_the_socket_stays(room_of, v1):
    """ "[" * 2000 (a RecursionError in json.loads) is an invalid_json error event in both
    dialects, not a dropped connection; the socket goes on working."""
    member = await room_of("deep", v1=v1)
    for text in ("[" * 2000, '{"message": "x", "extra": ' + "[" * 5000 + "]" * 5000 + "}"):
        await member.send_to(text_data=text)
        error = await member.receive_event("error")
        assert error["code"] == "invalid_json" and "nested too deeply" in error["detail"]
        assert (error.get("message") == error["detail"]) is (not v1)
    await member.say("still here")
    assert (await member.receive_next("message"))["message"] == "still here"


async def test_fuzzed_frames_each_get_one_answer_and_the_socket_stays(room_of):
    """A few hundred random hostile frames (seeded): each gets an error event or is
    posted; the socket is never closed and the room keeps working."""
    import random

    rng = random.Random(6)
    values = [None, True, 0, -1, 2**63, 10**40, 1.5, "", "x", "\ud800", "a\x00", [], {}, [[[]]]]
    keys = ["type", "message", "client_id", "before", "limit", "extra"]
    kinds = ["message", "history", "ping", "dance", 7, None]
    frames = []
    for _ in range(200):
        obj = {rng.choice(keys): rng.choice(values) for _ in range(rng.randint(0, 4))}
        if rng.random() < 0.5:
            obj["type"] = rng.choice(kinds)
        frames.append(json.dumps(obj))
    frames += ["[" * rng.randint(900, 8000) for _ in range(5)]
    frames += ["{" + rng.choice(['"a":', '"b":[', "[", ""]) * 1500 for _ in range(5)]
    fuzzer = await room_of("fuzz")
    for text in frames:
        await fuzzer.send_to(text_data=text)
        # One answer per frame: an error, a pong, a history page, or its message (+ ack).
        frame = await fuzzer.receive_event()
        assert frame["type"] in ("error", "pong", "history", "message", "ack"), frame
        if frame["type"] in ("message", "ack"):
            other = await fuzzer.receive_event()
            assert {frame["type"], other["type"]} == {"message", "ack"}
    await fuzzer.say("after the storm")
    assert (await fuzzer.receive_next("message"))["message"] == "after the storm"


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        ("/ws/x/", "rooms are at /ws/chat/<room>/"),
        ("/ws/chat/lobby", "room URLs end with '/'"),
        ("/ws/chat/", "room URLs end with '/'"),
        ("/nothing/here/", "rooms are at /ws/chat/<room>/"),
    ],
)
async def test_unrouted_paths_are_not_found_not_a_server_error(app, path, detail):
    """A path no route matches is denied with HTTP 404 and a one-line body where the
    server offers the websocket.http.response extension, else closed with 4404."""
    outputs = await _handshake(app, path, http_response=True)
    assert outputs[0]["type"] == "websocket.http.response.start"
    assert outputs[0]["status"] == 404
    assert detail in outputs[1]["body"].decode()
    reason = _closed_with(await _handshake(app, path), CloseCode.NOT_FOUND)
    assert detail in reason


@pytest.mark.parametrize(
    ("path", "raw_path", "fragment"),
    [
        ("/ws/chat/a/b/", b"/ws/chat/a%2Fb/", "cannot contain '/'"),
        ("/ws/chat/a/b/", None, "cannot contain '/'"),
        ("/ws/chat//", None, "empty"),
        ("/ws/chat/\ufffd/", b"/ws/chat/%FF/", "not UTF-8"),
        ("/ws/chat/\ufffd/", b"/ws/chat/%FE/", "not UTF-8"),
        ("/ws/chat/\ufffd/", None, "U+FFFD"),  # a server without raw_path
        ("/ws/chat/x\ufffd/", b"/ws/chat/x%EF%BF%BD/", "U+FFFD"),  # typed: still refused
        ("/ws/chat/\u202eabc/", b"/ws/chat/%E2%80%AEabc/", "RIGHT-TO-LEFT OVERRIDE"),
        ("/ws/chat/lob\u200bby/", b"/ws/chat/lob%E2%80%8Bby/", "ZERO WIDTH SPACE"),
    ],
)
async def test_bad_room_urls_close_4400_with_the_reason(app, path, raw_path, fragment):
    """A room URL that cannot name a room is accepted and closed with 4400 and a reason
    saying what is wrong, even with the HTTP response extension; no room is made."""
    outputs = await _handshake(app, path, raw_path=raw_path, http_response=True)
    assert fragment in _closed_with(outputs, CloseCode.BAD_REQUEST)
    assert await Room.objects.acount() == 0


async def test_refusals_accept_with_the_offered_subprotocol(app):
    """A v1 client refused for its URL is accepted with roomcast.v1 (a browser fails a
    handshake that drops the offered subprotocol only if it names another), then closed."""
    outputs = await _handshake(app, "/ws/chat/a/b/", subprotocols=["roomcast.v1"])
    assert outputs[0]["subprotocol"] == "roomcast.v1"
    _closed_with(outputs, CloseCode.BAD_REQUEST)


async def test_room_urls_inside_a_projects_own_urlrouter_get_named_answers(app):
    """Inside a project's URLRouter, websocket_urlpatterns answers every path under
    ws/chat/ itself (Channels' URLRouter would raise ValueError, a 500)."""
    own_stack = AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
    reason = _closed_with(await _handshake(own_stack, "/ws/chat/a/b/"), CloseCode.BAD_REQUEST)
    assert "'/'" in reason
    _closed_with(await _handshake(own_stack, "/ws/chat/lobby"), CloseCode.NOT_FOUND)
    outputs = await _handshake(own_stack, "/ws/chat/lobby", http_response=True)
    assert outputs[0]["status"] == 404
    member = RoomCommunicator(own_stack, "still works")
    await member.join()
    await member.disconnect()


async def test_undecodable_room_names_do_not_collapse_into_one_room(app):
    """%FF and %FE (and a U+FFFD typed or made by the server) never reach a room: before,
    every undecodable name was the room "\ufffd"."""
    for raw in (b"/ws/chat/%FF/", b"/ws/chat/%FE/", b"/ws/chat/caf%E9/"):
        communicator = RoomCommunicator(app, "\ufffd")
        communicator.scope["raw_path"] = raw
        connected, _ = await communicator.connect()
        assert connected
        assert await communicator.receive_close() == CloseCode.BAD_REQUEST
    assert await Room.objects.acount() == 0
    valid = RoomCommunicator(app, "café")
    valid.scope["raw_path"] = b"/ws/chat/caf%C3%A9/"
    await valid.join()
    await valid.disconnect()


async def test_a_seed_client_resending_a_client_id_gets_the_stored_message_again(room_of):
    """A seed-dialect client has no ack: when it resends a client_id, it alone gets the
    stored message's frame again (its page shows data["message"]); nothing is stored or
    published twice."""
    seed = await room_of("seed resend", v1=False)
    watcher = await room_of("seed resend")
    frame = {"type": "message", "message": "only once", "client_id": "seed-1"}
    await seed.send_to(text_data=json.dumps(frame))
    first = await seed.receive_event("message")
    assert (first["message"], first["seq"]) == ("only once", 1)
    await seed.send_to(text_data=json.dumps(frame))  # after a reconnect, say
    again = await seed.receive_event("message")
    assert again == first  # the stored message, as a seed client reads it
    assert (await watcher.receive_event("message"))["seq"] == 1
    assert await watcher.receive_nothing(0.1)  # nobody else sees it twice
    assert await seed.receive_nothing(0.1)
    assert await Message.objects.acount() == 1
