"""roomcast's Django admin, driven by Django's test client as a logged-in superuser.

Rooms with their visibility and members inline, memberships on their own pages; every
change that takes rights away sends ``access_changed`` after commit (what closes live
sockets, roomcast.revocation), and only those. Moderation: who is connected to each
room, messages searched by room, user and text, bans from a room or the site (live
sockets closed at once, new ones refused, the ban ending by itself), and every action in
the admin log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from roomcast import auth, hub, moderation, rooms, services
from roomcast.models import Ban, Message, Room, RoomMember
from roomcast.protocol import CloseCode
from roomcast.routing import websocket_application
from roomcast.signals import access_changed
from roomcast.testing import MuxCommunicator, RoomCommunicator

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def people() -> dict[str, Any]:
    User = get_user_model()
    return {
        "root": User.objects.create_superuser("root", "root@example.com", "pw"),
        "alice": User.objects.create_user("alice"),
        "bob": User.objects.create_user("bob"),
        "carol": User.objects.create_user("carol"),
    }


@pytest.fixture
def admin_client(people: dict[str, Any]) -> Client:
    client = Client()
    client.force_login(people["root"])
    return client


@pytest.fixture
def changes() -> Iterator[list[tuple[str | None, int | None]]]:
    """The access_changed signals sent, as (room, user_id), in order."""
    sent: list[tuple[str | None, int | None]] = []

    def receiver(sender: Any, room: str | None = None, user_id: int | None = None, **kw: Any):
        sent.append((room, user_id))

    access_changed.connect(receiver, weak=False)
    yield sent
    access_changed.disconnect(receiver)


@pytest.fixture
def board(people: dict[str, Any]) -> Room:
    """A private room: alice admin, bob member."""
    room = rooms.create_room("board", visibility="private")
    rooms.add_members("board", ["alice"], role="admin")
    rooms.add_members("board", ["bob"])
    return room


def room_form(room: Room, visibility: str, members: list[dict[str, Any]], extra=()) -> dict:
    """The POST data of a room's change page: ``members`` are its existing memberships
    (``{"id", "user", "role"}`` plus ``"DELETE": "on"`` to delete), ``extra`` new ones."""
    data: dict[str, Any] = {
        "visibility": visibility,
        "memberships-TOTAL_FORMS": str(len(members) + len(extra)),
        "memberships-INITIAL_FORMS": str(len(members)),
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
        "_save": "Save",
    }
    for i, member in enumerate([*members, *extra]):
        for key, value in member.items():
            data[f"memberships-{i}-{key}"] = value
        data[f"memberships-{i}-room"] = str(room.pk)
    return data


def existing(room: Room) -> list[dict[str, Any]]:
    return [
        {"id": str(m.pk), "user": str(m.user_id), "role": m.role}
        for m in RoomMember.objects.filter(room=room).order_by("pk")
    ]


def saved(response: Any) -> None:
    """The admin accepted the form (it redirects; a form with errors is shown again)."""
    errors = getattr(response, "context", None) and response.context.get("errors")
    assert response.status_code == 302, errors or response.content[:500]


def members(room: str) -> dict[str, str]:
    return dict(RoomMember.objects.filter(room__name=room).values_list("user__username", "role"))


# -- the pages -----------------------------------------------------------------------------


def test_room_list_shows_visibility_and_members_and_filters(admin_client, board, changes):
    rooms.create_room("lobby")
    rooms.create_room("news", visibility="read_only")
    page = admin_client.get("/admin/roomcast/room/")
    assert page.status_code == 200
    text = page.content.decode()
    for expected in ("board", "lobby", "news", "private: members and staff only", "visibility"):
        assert expected in text, expected
    listed = page.context["cl"].result_list
    assert {r.name: r._members for r in listed} == {"board": 2, "lobby": 0, "news": 0}
    private = admin_client.get("/admin/roomcast/room/?visibility__exact=private")
    assert [r.name for r in private.context["cl"].result_list] == ["board"]
    read_only = admin_client.get("/admin/roomcast/room/?visibility__exact=read_only")
    assert [r.name for r in read_only.context["cl"].result_list] == ["news"]
    members_page = admin_client.get("/admin/roomcast/roommember/?room__visibility__exact=private")
    assert members_page.status_code == 200
    assert len(members_page.context["cl"].result_list) == 2
    assert changes == [("news", None)]  # made read-only: its sockets are re-checked


def test_room_page_lists_members_inline_and_keeps_the_name(admin_client, board, people):
    page = admin_client.get(f"/admin/roomcast/room/{board.pk}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "memberships-0-user" in text and "memberships-1-user" in text
    assert 'name="name"' not in text  # read-only once the room exists
    response = admin_client.post(
        f"/admin/roomcast/room/{board.pk}/change/",
        {**room_form(board, "private", existing(board)), "name": "renamed"},
    )
    saved(response)
    assert list(Room.objects.values_list("name", flat=True)) == ["board"]


def test_only_non_superusers_are_refused(people, board):
    """Staff without permissions, and anonymous visitors, get no room pages."""
    client = Client()
    assert client.get("/admin/roomcast/room/").status_code == 302  # to the login page
    people["alice"].is_staff = True
    people["alice"].save()
    client.force_login(people["alice"])
    assert client.get("/admin/roomcast/room/").status_code == 403


# -- changes that take rights away -----------------------------------------------------------


def test_a_visibility_change_is_announced(admin_client, board, changes):
    url = f"/admin/roomcast/room/{board.pk}/change/"
    saved(admin_client.post(url, room_form(board, "private", existing(board))))
    assert changes == []  # nothing changed
    saved(admin_client.post(url, room_form(board, "public", existing(board))))
    saved(admin_client.post(url, room_form(board, "read_only", existing(board))))
    assert Room.objects.get().visibility == "read_only"
    assert changes == [("board", None), ("board", None)]


def test_a_room_added_private_is_announced(admin_client, people, changes):
    """A room may have sockets before it has a row (rows come with the first message)."""
    data = {
        "name": "fresh",
        "visibility": "private",
        "memberships-TOTAL_FORMS": "1",
        "memberships-INITIAL_FORMS": "0",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
        "memberships-0-user": str(people["bob"].pk),
        "memberships-0-role": "member",
        "_save": "Save",
    }
    saved(admin_client.post("/admin/roomcast/room/add/", data))
    assert members("fresh") == {"bob": "member"}
    assert changes == [("fresh", None)]
    data.update(name="open", visibility="public", **{"memberships-TOTAL_FORMS": "0"})
    saved(admin_client.post("/admin/roomcast/room/add/", data))
    assert changes == [("fresh", None)]


def test_inline_removal_and_demotion_are_announced_additions_are_not(
    admin_client, board, people, changes
):
    url = f"/admin/roomcast/room/{board.pk}/change/"
    alice, bob = existing(board)
    carol = {"user": str(people["carol"].pk), "role": "member"}
    saved(admin_client.post(url, room_form(board, "private", [alice, bob], [carol])))
    assert members("board") == {"alice": "admin", "bob": "member", "carol": "member"}
    assert changes == []
    saved(admin_client.post(url, room_form(board, "private", [alice, {**bob, "role": "admin"}])))
    assert changes == []  # a promotion gives

    alice, bob, carol_row = existing(board)
    form = room_form(
        board, "private", [{**alice, "role": "member"}, {**bob, "DELETE": "on"}, carol_row]
    )
    saved(admin_client.post(url, form))
    assert members("board") == {"alice": "member", "carol": "member"}
    assert sorted(changes) == sorted([("board", people["alice"].pk), ("board", people["bob"].pk)])


def test_a_membership_moved_to_another_user_is_announced_for_the_old_one(
    admin_client, board, people, changes
):
    bob_row = RoomMember.objects.get(user=people["bob"])
    url = f"/admin/roomcast/roommember/{bob_row.pk}/change/"
    data = {"room": str(board.pk), "user": str(people["carol"].pk), "role": "member"}
    saved(admin_client.post(url, data))
    assert members("board") == {"alice": "admin", "carol": "member"}
    assert changes == [("board", people["bob"].pk)]
    alice_row = RoomMember.objects.get(user=people["alice"])
    url = f"/admin/roomcast/roommember/{alice_row.pk}/change/"
    saved(
        admin_client.post(
            url, {"room": str(board.pk), "user": str(people["alice"].pk), "role": "admin"}
        )
    )
    assert len(changes) == 1  # unchanged
    saved(
        admin_client.post(
            url, {"room": str(board.pk), "user": str(people["alice"].pk), "role": "member"}
        )
    )
    assert changes[-1] == ("board", people["alice"].pk)


def test_deleting_memberships_is_announced(admin_client, board, people, changes):
    bob_row = RoomMember.objects.get(user=people["bob"])
    response = admin_client.post(
        f"/admin/roomcast/roommember/{bob_row.pk}/delete/", {"post": "yes"}
    )
    saved(response)
    assert changes == [("board", people["bob"].pk)]
    rooms.add_members("board", ["bob", "carol"])
    ids = list(RoomMember.objects.filter(room=board).values_list("pk", flat=True))
    response = admin_client.post(
        "/admin/roomcast/roommember/",
        {"action": "delete_selected", "_selected_action": [str(i) for i in ids], "post": "yes"},
    )
    saved(response)
    assert RoomMember.objects.count() == 0
    assert sorted(changes[1:]) == sorted(
        ("board", people[name].pk) for name in ("alice", "bob", "carol")
    )


def test_deleting_rooms_is_announced(admin_client, board, changes):
    other = rooms.create_room("other")
    saved(admin_client.post(f"/admin/roomcast/room/{board.pk}/delete/", {"post": "yes"}))
    assert changes == [("board", None)]
    response = admin_client.post(
        "/admin/roomcast/room/",
        {"action": "delete_selected", "_selected_action": [str(other.pk)], "post": "yes"},
    )
    saved(response)
    assert Room.objects.count() == 0 and changes == [("board", None), ("other", None)]


def test_nothing_is_announced_before_the_commit(admin_client, board, people, changes):
    """The signal waits for the transaction: a receiver re-reads the database."""
    seen: list[dict[str, str]] = []

    def look(sender: Any, room: str | None = None, **kwargs: Any) -> None:
        seen.append(members("board"))

    access_changed.connect(look, weak=False)
    try:
        bob_row = RoomMember.objects.get(user=people["bob"])
        admin_client.post(f"/admin/roomcast/roommember/{bob_row.pk}/delete/", {"post": "yes"})
    finally:
        access_changed.disconnect(look)
    assert seen == [{"alice": "admin"}]


# -- live sockets (after merging) -----------------------------------------------------------


async def test_a_member_removed_in_the_admin_loses_the_socket_within_a_second(
    admin_client, board, people
):
    token = await asyncio.to_thread(auth.issue_token, people["bob"], ttl=60)
    app = websocket_application()
    bob = RoomCommunicator(app, "board", headers=[(b"authorization", f"Bearer {token}".encode())])
    await bob.join()
    bob_row = await RoomMember.objects.aget(user=people["bob"])
    url = f"/admin/roomcast/room/{board.pk}/change/"
    rows = await asyncio.to_thread(existing, board)
    form = room_form(
        board, "private", [r if r["id"] != str(bob_row.pk) else {**r, "DELETE": "on"} for r in rows]
    )
    await asyncio.to_thread(admin_client.post, url, form)
    try:
        assert await bob.receive_close(timeout=1) == CloseCode.FORBIDDEN
    finally:
        await bob.disconnect()
        if (running := hub.running_hub()) is not None:
            await running.close()


# -- moderation: the admin log -----------------------------------------------------------------


def log_of(model: type) -> list[tuple[int, str]]:
    """The admin log's entries for ``model``: (action flag, change message), in order."""
    entries = LogEntry.objects.filter(content_type__model=model.__name__.lower()).order_by("pk")
    return [(entry.action_flag, entry.get_change_message()) for entry in entries]


def test_visibility_and_member_changes_are_in_the_admin_log(admin_client, board, people):
    url = f"/admin/roomcast/room/{board.pk}/change/"
    alice, bob = existing(board)
    carol = {"user": str(people["carol"].pk), "role": "member"}
    saved(admin_client.post(url, room_form(board, "public", [alice, {**bob, "DELETE": "on"}])))
    saved(admin_client.post(url, room_form(board, "public", existing(board), [carol])))
    (flag1, first), (flag2, second) = log_of(Room)
    assert flag1 == flag2 == CHANGE
    assert "Visibility" in first and "Deleted room member" in first, first
    assert "Added room member" in second, second
    entry = LogEntry.objects.filter(content_type__model="room").first()
    assert entry is not None and entry.user == people["root"]


# -- moderation: messages ----------------------------------------------------------------------


@pytest.fixture
def chatter(people: dict[str, Any]) -> None:
    """lobby: alice "hello all", bob "lunch at noon?"; café: alice "lunch is served"."""
    services.store_message("lobby", "hello all", user=people["alice"])
    services.store_message("lobby", "lunch at noon?", user=people["bob"])
    services.store_message("café", "lunch is served", user=people["alice"])


def found(admin_client: Client, query: str) -> list[tuple[str, str, str]]:
    page = admin_client.get("/admin/roomcast/message/", {"q": query})
    assert page.status_code == 200
    return sorted((m.room.name, m.username, m.text) for m in page.context["cl"].result_list)


def test_messages_are_found_by_room_user_and_text(admin_client, chatter, people):
    assert found(admin_client, "lunch") == [
        ("café", "alice", "lunch is served"),
        ("lobby", "bob", "lunch at noon?"),
    ]
    assert found(admin_client, "café") == [("café", "alice", "lunch is served")]
    assert [t for _, _, t in found(admin_client, "alice lobby")] == ["hello all"]
    assert found(admin_client, "nobody said this") == []
    lobby = Room.objects.get(name="lobby")
    page = admin_client.get("/admin/roomcast/message/", {"room__id__exact": lobby.pk})
    assert [m.seq for m in page.context["cl"].result_list] == [1, 2]
    page = admin_client.get("/admin/roomcast/message/", {"user__id__exact": people["alice"].pk})
    assert len(page.context["cl"].result_list) == 2
    rooms_page = admin_client.get("/admin/roomcast/room/").content.decode()
    assert f"/admin/roomcast/message/?room__id__exact={lobby.pk}" in rooms_page


def test_an_edit_of_a_message_deleted_meanwhile_is_refused_without_an_error_page(
    admin_client, chatter
):
    message = Message.objects.get(room__name="lobby", seq=1)
    moderation_url = f"/admin/roomcast/message/{message.pk}/change/"
    from roomcast import edits

    edits.delete_message("lobby", 1)  # by someone else, after the form was shown
    response = admin_client.post(moderation_url, {"text": "too late"}, follow=True)
    assert response.status_code == 200
    assert Message.objects.get(pk=message.pk).text == ""
    assert Room.objects.get(name="lobby").last_seq == 3  # no edit event


# -- moderation: who is connected --------------------------------------------------------------


async def test_the_room_list_shows_who_is_connected_now(admin_client, people):
    """Distinct users plus guests: bob on two sockets counts once, a guest once, carol's
    /ws/ subscription once; a room nobody is in shows 0."""
    await asyncio.to_thread(rooms.create_room, "lobby")
    await asyncio.to_thread(rooms.create_room, "quiet")
    app = websocket_application()
    bob_token = await asyncio.to_thread(auth.issue_token, people["bob"], ttl=60)
    carol_token = await asyncio.to_thread(auth.issue_token, people["carol"], ttl=60)
    sockets = [RoomCommunicator(app, "lobby", token=bob_token) for _ in range(2)]
    sockets.append(RoomCommunicator(app, "lobby"))  # a guest
    carol = MuxCommunicator(app, token=carol_token)
    try:
        for socket in sockets:
            await socket.join()
        await carol.open()
        await carol.subscribe("lobby")
        page = await asyncio.to_thread(admin_client.get, "/admin/roomcast/room/")
        shown = {room.name: room._connected for room in page.context["cl"].result_list}
        assert (shown["lobby"].users, shown["lobby"].guests) == (2, 1)
        assert shown["lobby"].total == 3 and shown["quiet"].total == 0
        assert dict(shown["lobby"].names) == {"bob": 2, "carol": 1}
        lobby = await Room.objects.aget(name="lobby")
        detail = await asyncio.to_thread(
            admin_client.get, f"/admin/roomcast/room/{lobby.pk}/change/"
        )
        assert "2 user(s), 1 guest subscription(s): bob (2), carol" in detail.content.decode()
    finally:
        for socket in (*sockets, carol):
            await socket.disconnect()
        if (running := hub.running_hub()) is not None:
            await running.close()


# -- moderation: bans ------------------------------------------------------------------------------


async def closed_with(socket: Any, timeout: float = 2) -> tuple[int, str]:
    """The close code and reason the server sent (frames before it are skipped)."""
    while True:
        output = await socket.receive_output(timeout)
        if output["type"] == "websocket.close":
            return int(output.get("code", 1000)), str(output.get("reason", ""))


def ban_form(user: Any, room: Room | None = None, **fields: str) -> dict[str, str]:
    data = {"user": str(user.pk), "room": str(room.pk) if room else "", "reason": ""}
    data.update({"duration": "3600", "until_0": "", "until_1": ""}, **fields)
    return data


async def test_a_room_ban_in_the_admin_closes_that_room_at_once_and_others_go_on(
    admin_client, people
):
    """bob is banned from "lobby" for an hour: his lobby socket closes with 4403 and his
    /ws/ subscription to lobby ends with unsubscribed 4403, both at once; his café socket
    and the /ws/ socket's café subscription go on; a new join to lobby is refused; the
    ban is in the admin log."""
    lobby = await asyncio.to_thread(rooms.create_room, "lobby")
    app = websocket_application()
    token = await asyncio.to_thread(auth.issue_token, people["bob"], ttl=60)
    in_lobby = RoomCommunicator(app, "lobby", token=token)
    in_cafe = RoomCommunicator(app, "café", token=token)
    mux = MuxCommunicator(app, token=token)
    others = RoomCommunicator(app, "lobby")  # a guest stays
    again = RoomCommunicator(app, "lobby", token=token)
    try:
        for socket in (in_lobby, in_cafe, others):
            await socket.join()
        await mux.open()
        await mux.subscribe("lobby")
        await mux.subscribe("café")
        response = await asyncio.to_thread(
            admin_client.post, "/admin/roomcast/ban/add/", ban_form(people["bob"], lobby)
        )
        saved(response)
        code, reason = await closed_with(in_lobby)
        assert code == CloseCode.FORBIDDEN
        assert reason.startswith("banned from this room until "), reason
        ended = await mux.receive_next("unsubscribed", timeout=2)
        assert (ended["room"], ended["code"], ended["reason"]) == ("lobby", 4403, reason)
        await mux.say("café", "still here", client_id="m-1")
        assert (await mux.receive_next("ack", timeout=2))["room"] == "café"
        await in_cafe.say("me too", client_id="c-1")
        assert (await in_cafe.receive_next("ack", timeout=2))["seq"] >= 1
        await others.say("guests go on", client_id="g-1")
        assert (await others.receive_next("ack", timeout=2))["seq"] >= 1
        connected, _ = await again.connect()
        assert connected
        assert (await closed_with(again))[0] == CloseCode.FORBIDDEN
    finally:
        for socket in (in_lobby, in_cafe, mux, others, again):
            await socket.disconnect()
        if (running := hub.running_hub()) is not None:
            await running.close()
    ban = await Ban.objects.select_related("created_by").aget()
    assert ban.room_id == lobby.pk and ban.created_by == people["root"]
    assert 3590 < (ban.until - timezone.now()).total_seconds() <= 3600
    assert await asyncio.to_thread(log_of, Ban) == [(ADDITION, "Added.")]


async def test_a_site_ban_closes_every_socket_refuses_connects_and_ends_with_its_time(
    admin_client, people
):
    """bob banned from the site for good: every socket of his closes with 4403 "banned
    from this site", alice's goes on; bob's token and his session are refused at connect
    with 4401; the token endpoint answers 403. Ended in the admin ("End selected bans
    now", logged), bob comes back."""
    app = websocket_application()
    token = await asyncio.to_thread(auth.issue_token, people["bob"], ttl=60)
    bob = [RoomCommunicator(app, "lobby", token=token), RoomCommunicator(app, "café", token=token)]
    mux = MuxCommunicator(app, token=token)
    alice = RoomCommunicator(
        app, "lobby", token=await asyncio.to_thread(auth.issue_token, people["alice"], ttl=60)
    )
    session = Client()
    await asyncio.to_thread(session.force_login, people["bob"])
    cookie = f"sessionid={session.cookies['sessionid'].value}".encode()
    later = [
        RoomCommunicator(app, "lobby", token=token),
        RoomCommunicator(app, "lobby", headers=[(b"cookie", cookie)]),
    ]
    try:
        for socket in (*bob, alice):
            await socket.join()
        await mux.open()
        await mux.subscribe("lobby")
        form = ban_form(people["bob"], duration="", reason="spam")
        saved(await asyncio.to_thread(admin_client.post, "/admin/roomcast/ban/add/", form))
        for socket in (*bob, mux):
            assert await closed_with(socket) == (CloseCode.FORBIDDEN, "banned from this site")
        await alice.say("alice goes on", client_id="a-1")
        assert (await alice.receive_next("ack", timeout=2))["seq"] >= 1
        for socket in later:
            connected, _ = await socket.connect()
            assert connected
            assert await closed_with(socket) == (CloseCode.UNAUTHORIZED, "banned from this site")
        refused = await asyncio.to_thread(
            Client().post,
            "/api/tokens",
            {"user": "bob"},
            content_type="application/json",
            headers={"Authorization": "Bearer test-api-key-0123456789"},
        )
        assert refused.status_code == 403 and refused.json()["error"] == "banned"

        ban = await Ban.objects.aget()
        assert ban.until is None and ban.reason == "spam"
        response = await asyncio.to_thread(
            admin_client.post,
            "/admin/roomcast/ban/",
            {"action": "end_now", "_selected_action": [str(ban.pk)]},
        )
        saved(response)
        back = RoomCommunicator(app, "lobby", token=token)
        later.append(back)
        await back.join()
    finally:
        for socket in (*bob, mux, alice, *later):
            await socket.disconnect()
        if (running := hub.running_hub()) is not None:
            await running.close()
    assert await asyncio.to_thread(log_of, Ban) == [
        (ADDITION, "Added."),
        (CHANGE, "Ended the ban."),
    ]


def test_the_ban_form_checks_what_it_is_given(admin_client, people, board):
    """No ban from a user's own channel, no new ban that has ended already; an end time
    given by hand is kept; the list filters bans in force and by scope."""
    channel = Room.objects.create(name=f"user/{people['bob'].pk}")
    page = admin_client.post("/admin/roomcast/ban/add/", ban_form(people["bob"], channel))
    assert page.status_code == 200 and "ban from the site instead" in str(page.context["errors"])
    past = timezone.localtime(timezone.now() - timezone.timedelta(hours=1))
    form = ban_form(
        people["bob"],
        board,
        duration="",
        until_0=past.strftime("%Y-%m-%d"),
        until_1=past.strftime("%H:%M:%S"),
    )
    page = admin_client.post("/admin/roomcast/ban/add/", form)
    assert page.status_code == 200 and "must be in the future" in str(page.context["errors"])
    soon = timezone.localtime(timezone.now() + timezone.timedelta(hours=2))
    form.update(until_0=soon.strftime("%Y-%m-%d"), until_1=soon.strftime("%H:%M:%S"))
    saved(admin_client.post("/admin/roomcast/ban/add/", form))
    saved(admin_client.post("/admin/roomcast/ban/add/", ban_form(people["carol"])))
    moderation.unban("carol")
    assert Ban.objects.get(user=people["bob"]).until.replace(microsecond=0) == soon.replace(
        microsecond=0
    )

    def listed(**query: str) -> list[str]:
        page = admin_client.get("/admin/roomcast/ban/", query)
        return sorted(ban.user.username for ban in page.context["cl"].result_list)

    assert listed() == ["bob", "carol"]
    assert listed(state="active") == ["bob"]
    assert listed(state="ended") == ["carol"]
    assert listed(scope="site") == ["carol"]
    assert listed(scope="room", q="board") == ["bob"]


def test_the_senders_of_selected_messages_are_banned_from_those_rooms(
    admin_client, chatter, people
):
    """One ban per (sender, room), for a day, each in the admin log; guests' messages
    have no sender to ban."""
    services.store_message("lobby", "a guest", user=None, username="guest-1")
    services.store_message("lobby", "again", user=people["alice"])
    selected = [str(pk) for pk in Message.objects.values_list("pk", flat=True)]
    response = admin_client.post(
        "/admin/roomcast/message/",
        {"action": "ban_senders", "_selected_action": selected},
        follow=True,
    )
    assert [str(m) for m in response.context["messages"]] == [
        "Banned 3 sender(s) from their rooms for a day."
    ]
    bans = sorted(
        (b.user.username, b.room.name) for b in Ban.objects.select_related("user", "room")
    )
    assert bans == [("alice", "café"), ("alice", "lobby"), ("bob", "lobby")]
    assert all(
        86390 < (b.until - timezone.now()).total_seconds() <= 86400 for b in Ban.objects.all()
    )
    assert log_of(Ban) == [(ADDITION, "Added.")] * 3
