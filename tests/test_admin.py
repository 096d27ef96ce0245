"""roomcast's Django admin, driven by Django's test client as a logged-in superuser.

Rooms with their visibility and members inline, memberships on their own pages; every
change that takes rights away sends ``access_changed`` after commit (what closes live
sockets, roomcast.revocation), and only those.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from roomcast import auth, hub, rooms
from roomcast.models import Room, RoomMember
from roomcast.protocol import CloseCode
from roomcast.routing import websocket_application
from roomcast.signals import access_changed
from roomcast.testing import RoomCommunicator

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
