"""Access enforced on the room socket and the HTTP history: who a socket is (token header,
auth frame, session, guest), join/read/post decided at join, 4401/4403/4501 closes.

Consumer level: the WebSocket application through Channels' communicators, in-memory
layer, the test database. The same matrix on real ``roomcast serve`` processes is in
tests/e2e/test_access_matrix.py.
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
import time

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Permission, User
from django.core import signing
from django.test import AsyncClient, Client, override_settings

from roomcast import auth, hub, rooms, services
from roomcast.consumers import RoomConsumer
from roomcast.models import Message, RoomMember
from roomcast.protocol import CloseCode
from roomcast.testing import RoomCommunicator

pytestmark = pytest.mark.django_db(transaction=True)

API_KEY = "test-api-key-0123456789"  # tests/settings.py
TOKEN_IN_URL = "tokens go in the Authorization header or the first frame (auth), not the URL"


@pytest.fixture
def sockets(app, communicators):
    """``await sockets(path_or_room, token=, headers=, v1=)``: a connected communicator
    (not yet past joined); all are disconnected at the end."""

    async def open_socket(room, *, token=None, headers=(), v1=True, query=""):
        path = f"/ws/chat/{room}/" + (f"?{query}" if query else "")
        all_headers = list(headers)
        if token is not None:
            all_headers.append((b"authorization", f"Bearer {token}".encode()))
        communicator = WebsocketCommunicator(
            app, path, headers=all_headers, subprotocols=["roomcast.v1"] if v1 else None
        )
        connected, _ = await communicator.connect(5)
        assert connected
        communicators.append(communicator)
        return communicator

    return open_socket


@pytest.fixture
def people(db):
    """alice and bob (members of the private room "board"; bob is its admin), carol (no
    member), sam (staff), pat (may post in read-only rooms), and the read-only "news"
    (bob its admin, alice a member)."""

    def make():
        made = {
            "alice": User.objects.create_user("alice"),
            "bob": User.objects.create_user("bob"),
            "carol": User.objects.create_user("carol"),
            "sam": User.objects.create_user("sam", is_staff=True),
            "pat": User.objects.create_user("pat"),
        }
        made["pat"].user_permissions.add(Permission.objects.get(codename="post_in_read_only"))
        rooms.create_room("board", visibility="private")
        rooms.add_members("board", ["alice"])
        rooms.add_members("board", ["bob"], role="admin")
        rooms.create_room("news", visibility="read_only")
        rooms.add_members("news", ["alice"])
        rooms.add_members("news", ["bob"], role="admin")
        return made

    return make()


async def token_of(user, ttl=None):
    return await database_sync_to_async(auth.issue_token)(user, ttl=ttl)


def expired_token(user):
    """A correctly signed token whose expiry has passed."""
    payload = {"u": user.pk, "e": int(time.time()) - 5, "h": auth._fingerprint(user)}
    return signing.dumps(payload, salt=auth._SALT, compress=False)


async def closed(communicator, timeout=5):
    """``(code, reason)`` of the server's close; frames before it are skipped."""
    while True:
        output = await communicator.receive_output(timeout)
        if output["type"] == "websocket.close":
            return output["code"], output.get("reason", "")


async def frame(communicator, kind=None, timeout=5):
    output = await communicator.receive_output(timeout)
    assert output["type"] == "websocket.send", output
    data = json.loads(output["text"])
    if kind is not None:
        assert data["type"] == kind, data
    return data


async def joined(communicator):
    """Read the joined frame and the catch-up after it; return the catch-up's messages."""
    seq = (await frame(communicator, "joined"))["seq"]
    return [await frame(communicator, "message") for _ in range(min(seq, 50))]


async def session_cookie(user):
    def login():
        client = Client()
        client.force_login(user)
        return client.cookies["sessionid"].value

    return (b"cookie", f"sessionid={await database_sync_to_async(login)()}".encode())


# -- who the socket is ----------------------------------------------------------------------


async def test_a_header_token_joins_a_private_room_and_posts_by_name(people, sockets):
    """A member with a token in the Authorization header joins, reads and posts as itself."""
    await services.apost_message("board", "earlier")
    alice = await sockets("board", token=await token_of(people["alice"]))
    assert (await frame(alice, "joined"))["seq"] == 1
    assert (await frame(alice, "message"))["message"] == "earlier"
    await alice.send_json_to({"type": "message", "message": "hi", "client_id": "a-1"})
    got = {(await frame(alice))["type"]: None for _ in range(2)}
    assert set(got) == {"message", "ack"}
    stored = await Message.objects.aget(seq=2)
    assert (stored.username, stored.user_id) == ("alice", people["alice"].pk)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (expired_token, "token expired"),
        (lambda user: auth.issue_token(user)[:-3] + "xyz", "invalid token"),  # forged
        (lambda user: "not-a-token", "invalid token"),
        (lambda user: "x" * 5000, "invalid token"),
    ],
)
async def test_bad_header_tokens_close_4401_with_a_reason(people, sockets, make, reason):
    """An expired, forged or damaged token is accepted, then closed with 4401 naming why."""
    token = await database_sync_to_async(make)(people["alice"])
    socket = await sockets("board", token=token)
    assert await closed(socket) == (CloseCode.UNAUTHORIZED, reason)


async def test_a_deactivated_users_token_closes_4401(people, sockets):
    """A token issued before its user was deactivated names an inactive user."""
    token = await token_of(people["alice"])
    people["alice"].is_active = False
    await people["alice"].asave()
    assert await closed(await sockets("lobby", token=token)) == (
        CloseCode.UNAUTHORIZED,
        "inactive user",
    )


async def test_header_edge_cases(people, sockets):
    """Another scheme (a browser's HTTP Basic credentials) is no token: a guest; an empty
    bearer token or two Authorization headers are an invalid token."""
    basic = await sockets("lobby", headers=[(b"authorization", b"Basic YTpi")])
    assert (await frame(basic, "joined"))["room"] == "lobby"
    empty = await sockets("lobby", headers=[(b"authorization", b"Bearer   ")])
    assert await closed(empty) == (CloseCode.UNAUTHORIZED, "invalid token")
    token = (b"authorization", f"Bearer {await token_of(people['alice'])}".encode())
    twice = await sockets("lobby", headers=[token, token])
    assert await closed(twice) == (CloseCode.UNAUTHORIZED, "invalid token")


@pytest.mark.parametrize("query", ["token=abc", "since=3&token=", "access_token=abc"])
async def test_a_token_in_the_url_closes_4400(people, sockets, query):
    """?token= is refused with 4400 and says where tokens go, even a good one."""
    good = await token_of(people["alice"])
    socket = await sockets("board", query=query.replace("abc", good))
    assert await closed(socket) == (CloseCode.BAD_REQUEST, TOKEN_IN_URL)


async def test_the_auth_frame_flow(people, sockets):
    """?auth=1: nothing happens until the auth frame; then joined, catch-up, live."""
    await services.apost_message("board", "m1")
    await services.apost_message("board", "m2")
    socket = await sockets("board", query="auth=1&since=1")
    assert await socket.receive_nothing(0.2)  # waiting for the token
    await socket.send_json_to({"type": "auth", "token": await token_of(people["bob"])})
    assert await frame(socket, "joined") == {
        "type": "joined",
        "room": "board",
        "seq": 2,
        "recovered": True,
    }
    assert (await frame(socket, "message"))["message"] == "m2"
    await socket.send_json_to({"type": "auth", "token": "again"})
    assert "joined already" in (await frame(socket, "error"))["detail"]
    await socket.send_json_to({"message": "from bob"})
    assert (await frame(socket, "message"))["user"] == "bob"


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        ({"message": "hi"}, "send the auth frame first"),
        ({"type": "ping"}, "send the auth frame first"),
        ("not json", "send the auth frame first: The frame is not valid JSON"),
        ({"type": "auth", "token": 5}, 'send the auth frame first: "token" must be a non-empty'),
        ({"type": "auth", "token": "forged"}, "invalid token"),
    ],
)
async def test_a_wrong_first_frame_closes_4401(people, sockets, first, reason):
    """With ?auth=1, anything but a good auth frame first is a 4401 saying what is wrong;
    nothing of the room is sent before it."""
    await services.apost_message("lobby", "not for you yet")
    socket = await sockets("lobby", query="auth=1")
    if isinstance(first, str):
        await socket.send_to(text_data=first)
    else:
        await socket.send_json_to(first)
    code, got = await closed(socket)
    assert code == CloseCode.UNAUTHORIZED and got.startswith(reason), got


@override_settings(ROOMCAST={"HANDSHAKE_TIMEOUT_SECS": 0.3})
async def test_no_auth_frame_in_time_closes_4401(sockets):
    """A socket opened with ?auth=1 that sends nothing is closed after HANDSHAKE_TIMEOUT_SECS."""
    socket = await sockets("lobby", query="auth=1")
    started = time.monotonic()
    code, reason = await closed(socket)
    assert code == CloseCode.UNAUTHORIZED and "none came within 0.3 s" in reason
    assert time.monotonic() - started >= 0.25


async def test_the_header_comes_before_the_auth_frame_and_the_session(people, sockets):
    """Precedence: Authorization header > auth frame > session cookie > guest."""
    cookie = await session_cookie(people["carol"])
    # carol's session, alice's token: alice (a member of the private room).
    both = await sockets("board", token=await token_of(people["alice"]), headers=[cookie])
    assert (await frame(both, "joined"))["room"] == "board"
    await both.send_json_to({"message": "who am i"})
    assert (await frame(both, "message"))["user"] == "alice"
    # carol's session alone: not a member.
    assert await closed(await sockets("board", headers=[cookie])) == (
        CloseCode.FORBIDDEN,
        "not allowed in this room",
    )
    # carol's session, but bob's token in the auth frame: bob.
    framed = await sockets("board", headers=[cookie], query="auth=1")
    await framed.send_json_to({"type": "auth", "token": await token_of(people["bob"])})
    assert (await frame(framed, "joined"))["room"] == "board"


async def test_the_member_carries_who_it_is_for_revocation(people, sockets):
    """member.identity says how the socket came (session with its key, token with its
    expiry, guest): what logout and deactivation find sockets by."""
    cookie = await session_cookie(people["alice"])
    await joined(await sockets("plaza", headers=[cookie]))
    await joined(await sockets("plaza", token=await token_of(people["bob"], ttl=600)))
    await joined(await sockets("plaza"))
    session, token, guest = (m.identity for m in hub.running_hub().members("plaza"))
    assert (session.via, session.name, session.user_id) == ("session", "alice", people["alice"].pk)
    assert f"sessionid={session.session_key}".encode() == cookie[1]
    assert (token.via, token.name, token.session_key) == ("token", "bob", None)
    assert 590 < token.expires_at - time.time() <= 600
    assert (guest.via, guest.user_id, guest.expires_at) == ("anonymous", None, None)


async def test_a_token_socket_is_closed_4501_when_its_token_expires(people, sockets):
    """At the token's expiry the socket is closed with 4501, though it never sends again;
    a session socket in the same room stays."""
    await token_of(people["alice"])  # warm up: the timing below is the token's only
    token = await token_of(people["alice"], ttl=1.5)  # expires in 0.5-1.5 s (whole seconds)
    expires = auth.read_token(token)[1]
    socket = await sockets("board", token=token)
    await frame(socket, "joined")
    session = await sockets("board", headers=[await session_cookie(people["bob"])])
    await frame(session, "joined")
    code, reason = await closed(socket, timeout=5)
    assert (code, reason) == (CloseCode.TOKEN_EXPIRED, "token expired: reconnect with a new token")
    assert time.time() >= expires - 0.05
    await session.send_json_to({"message": "still here"})
    assert (await frame(session, "message"))["message"] == "still here"


async def test_an_auth_frame_token_expires_too(people, sockets):
    """The expiry timer starts for a token that came in the auth frame as well."""
    socket = await sockets("lobby", query="auth=1")
    await socket.send_json_to({"type": "auth", "token": await token_of(people["carol"], ttl=1.2)})
    await frame(socket, "joined")
    assert (await closed(socket, timeout=5))[0] == CloseCode.TOKEN_EXPIRED


async def test_the_expiry_timer_is_cancelled_when_the_socket_closes(people, app):
    """A socket that goes away before its token expires is not kept alive by its timer
    (an hour, by default) for the token's lifetime."""
    communicator = RoomCommunicator(app, "lobby", token=await token_of(people["alice"]))
    await communicator.join()
    assert len(consumers()) == 1
    await communicator.disconnect()
    await asyncio.sleep(0.05)
    assert consumers() == []


def consumers():
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, RoomConsumer)]


# -- guests ---------------------------------------------------------------------------------


async def test_guests_get_distinct_names_stored_with_their_posts(sockets):
    """Each guest socket is its own guest-xxxxxx; its posts and history show that name."""
    names = []
    for _ in range(2):
        guest = await sockets("plaza")
        await joined(guest)
        await guest.send_json_to({"message": "hello"})
        names.append((await frame(guest, "message"))["user"])
    assert names[0] != names[1] and all(re.fullmatch(r"guest-[0-9a-f]{6}", n) for n in names)
    stored = [m async for m in Message.objects.order_by("seq").values_list("username", "user_id")]
    assert stored == [(names[0], None), (names[1], None)]
    late = await sockets("plaza")
    await frame(late, "joined")
    assert [(await frame(late, "message"))["user"] for _ in range(2)] == names


async def test_the_room_page_keeps_a_guests_name_across_reloads(sockets):
    """The room page puts a guest name in the session; sockets with that session use it."""

    def visit():
        client = Client()
        client.get("/chat/plaza/")
        client.get("/chat/plaza/")  # a reload keeps it
        return client.session["roomcast_guest_name"], client.cookies["sessionid"].value

    name, session = await database_sync_to_async(visit)()
    assert re.fullmatch(r"guest-[0-9a-f]{6}", name)
    for _ in range(2):
        guest = await sockets("plaza", headers=[(b"cookie", f"sessionid={session}".encode())])
        await frame(guest, "joined")
        await guest.send_json_to({"message": "me again"})
        assert (await frame(guest, "message"))["user"] == name


# -- private and read-only rooms -------------------------------------------------------------


@pytest.mark.parametrize("who", ["guest", "carol", "pat"])
async def test_private_rooms_refuse_others_with_4403(people, sockets, who):
    """Guests and users who are not members get 4403, with or without since=."""
    await services.apost_message("board", "secret")
    token = None if who == "guest" else await token_of(people[who])
    for query in ("", "since=0"):
        socket = await sockets("board", token=token, query=query)
        assert await closed(socket) == (CloseCode.FORBIDDEN, "not allowed in this room")
    assert hub.running_hub().members("board") == []


async def test_staff_and_members_read_private_rooms(people, sockets):
    """Staff and members join, replay with since= and page history in a private room."""
    for i in range(1, 4):
        await services.apost_message("board", f"m{i}")
    for who in ("sam", "alice"):
        socket = await sockets("board", token=await token_of(people[who]), query="since=1")
        assert (await frame(socket, "joined"))["recovered"] is True
        assert [(await frame(socket, "message"))["seq"] for _ in range(2)] == [2, 3]
        await socket.send_json_to({"type": "history", "before": 3})
        assert [m["seq"] for m in (await frame(socket, "history"))["messages"]] == [1, 2]


def deny_missing_secret_rooms(user, room, action):
    """A project policy: rooms named secret-* are for staff only, made or not."""
    return not room.startswith("secret-") or user.is_staff


@override_settings(ROOMCAST={"ACCESS_POLICY": "tests.test_enforce.deny_missing_secret_rooms"})
async def test_a_refused_room_looks_the_same_whether_it_exists_or_not(people, sockets):
    """The 4403 is the same for a room that exists and one that does not."""
    await services.apost_message("secret-made", "x")
    answers = set()
    for room in ("secret-made", "secret-never-made"):
        answers.add(await closed(await sockets(room, token=await token_of(people["alice"]))))
    assert answers == {(CloseCode.FORBIDDEN, "not allowed in this room")}


async def test_read_only_rooms_post_for_staff_admins_and_permission_holders(people, sockets):
    """Everyone reads a read-only room; members without the right get "forbidden" (with
    the post's client_id) and the socket stays; staff, admins and the permission post."""
    await services.apost_message("news", "announcement")
    for who in ("guest", "alice", "carol"):
        token = None if who == "guest" else await token_of(people[who])
        socket = await sockets("news", token=token)
        await frame(socket, "joined")
        assert (await frame(socket, "message"))["message"] == "announcement"
        await socket.send_json_to({"type": "message", "message": "me too", "client_id": "c-9"})
        error = await frame(socket, "error")
        assert (error["code"], error["client_id"]) == ("forbidden", "c-9")
        await socket.send_json_to({"type": "ping"})  # still up
        assert (await frame(socket, "pong"))["type"] == "pong"
    for who in ("bob", "sam", "pat"):
        socket = await sockets("news", token=await token_of(people[who]))
        await joined(socket)
        await socket.send_json_to({"type": "message", "message": f"from {who}", "client_id": who})
        assert {(await frame(socket))["type"] for _ in range(2)} == {"ack", "message"}
    assert await Message.objects.filter(room__name="news").acount() == 4


@override_settings(ROOMCAST={"ALLOW_ANONYMOUS": False})
async def test_guests_are_told_to_log_in_to_post(sockets):
    """With ALLOW_ANONYMOUS off a guest's post is forbidden, with a detail saying why."""
    guest = await sockets("plaza", v1=False)
    await guest.send_json_to({"message": "hi"})
    error = await frame(guest, "error")
    assert error["code"] == "forbidden" and error["message"] == "Log in to post in this room."


def join_but_not_read(user, room, action):
    """A project policy: a live-only room (join and post, no history)."""
    return action != "read"


@override_settings(ROOMCAST={"ACCESS_POLICY": "tests.test_enforce.join_but_not_read"})
async def test_join_without_read_gets_the_live_stream_only(sockets):
    """Without read: no history on join, no since= replay (recovered false), history frames
    refused; live messages still arrive."""
    for i in range(1, 4):
        await services.apost_message("live", f"m{i}")
    socket = await sockets("live", query="since=1")
    assert await frame(socket, "joined") == {
        "type": "joined",
        "room": "live",
        "seq": 3,
        "recovered": False,
    }
    await socket.send_json_to({"type": "history"})
    assert (await frame(socket, "error"))["code"] == "forbidden"
    await services.apost_message("live", "m4")
    assert (await frame(socket, "message"))["seq"] == 4


async def test_rights_are_kept_from_join_until_rechecked(people, sockets):
    """Rights are decided at join and kept on the member (posts read no access rows):
    a change made behind roomcast's back shows at services.arecheck, which closes a member
    that lost the room with 4403 and narrows one that lost the right to post."""
    alice = await sockets("board", token=await token_of(people["alice"]))
    await frame(alice, "joined")
    bob = await sockets("news", token=await token_of(people["bob"]))
    await frame(bob, "joined")
    [alice_member] = hub.running_hub().members("board")
    [bob_member] = hub.running_hub().members("news")
    assert alice_member.rights == {"join", "read", "post"} and alice_member.identity.name == "alice"
    await RoomMember.objects.filter(user=people["alice"], room__name="board").adelete()
    await RoomMember.objects.filter(user=people["bob"], room__name="news").aupdate(role="member")
    await alice.send_json_to({"message": "still cached"})
    assert (await frame(alice, "message"))["message"] == "still cached"
    assert await services.arecheck(bob_member) is True
    assert bob_member.rights == {"join", "read"}
    await bob.send_json_to({"message": "no longer"})
    assert (await frame(bob, "error"))["code"] == "forbidden"
    assert await services.arecheck(alice_member) is False
    assert await closed(alice) == (CloseCode.FORBIDDEN, "not allowed in this room any more")


async def test_recheck_closes_a_deactivated_users_socket(people, sockets):
    """A user deactivated while connected loses even a public room at the re-check."""
    carol = await sockets("plaza", token=await token_of(people["carol"]))
    await frame(carol, "joined")
    [member] = hub.running_hub().members("plaza")
    await User.objects.filter(pk=people["carol"].pk).aupdate(is_active=False)
    assert await services.arecheck(member) is False
    assert (await closed(carol))[0] == CloseCode.FORBIDDEN


# -- HTTP history ---------------------------------------------------------------------------


async def http_history(room, *, token=None, session=None, query=""):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    client = AsyncClient()
    if session is not None:
        await database_sync_to_async(client.force_login)(session)
    response = await client.get(f"/api/rooms/{room}/messages{query}", headers=headers)
    return response.status_code, response.json()


async def test_http_history_with_user_tokens_and_sessions(people):
    """Members and staff read a private room over HTTP with a token or a session; others
    get the 404 a room that does not exist gets; the API key reads everything."""
    await services.apost_message("board", "secret")
    for who in ("alice", "sam"):
        status, body = await http_history("board", token=await token_of(people[who]))
        assert status == 200 and [m["message"] for m in body["messages"]] == ["secret"]
        assert (await http_history("board", session=people[who]))[0] == 200
    carol = await token_of(people["carol"])
    refused = await http_history("board", token=carol)
    missing = await http_history("no-such-room", token=carol)
    assert refused[0] == missing[0] == 404 and refused[1]["error"] == missing[1]["error"]
    assert (await http_history("board", session=people["carol"]))[0] == 404
    assert (await http_history("no-such-room", token=API_KEY))[0] == 200  # as before
    assert (await http_history("board", token=API_KEY))[0] == 200
    assert (await http_history("news", token=carol))[0] == 200  # read-only: everyone reads


async def test_http_history_refusals_name_what_is_wrong(people):
    """Expired, forged and inactive tokens are 401 with their code; a token in the URL is
    400; no credentials at all is 401."""
    token = await token_of(people["alice"])
    expired = await database_sync_to_async(expired_token)(people["alice"])
    assert await http_history("board", token=expired) == (
        401,
        {"error": "token_expired", "detail": "The token has expired: get a new one."},
    )
    assert (await http_history("board", token=token[:-2] + "zz"))[1]["error"] == "invalid_token"
    assert (await http_history("board", query=f"?token={token}"))[1]["error"] == "token_in_url"
    assert (await http_history("board"))[0] == 401
    people["alice"].is_active = False
    await people["alice"].asave()
    assert (await http_history("board", token=token))[1]["error"] == "inactive_user"


async def test_a_user_token_does_not_push(people):
    """POST stays API-key only: a user's token is no key."""
    response = await AsyncClient().post(
        "/api/rooms/lobby/messages",
        {"message": "x"},
        content_type="application/json",
        headers={"Authorization": f"Bearer {await token_of(people['sam'])}"},
    )
    assert response.status_code == 401
