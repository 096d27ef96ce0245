"""Edits and deletes as stream events (roomcast.edits): who may, what is stored, the
final state in history and catch-up, idempotency, and the event reaching live sockets.

On the suite's database (SQLite); PostgreSQL runs the same transaction in
tests/test_durable_postgres.py.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from roomcast import access, edits, push, services
from roomcast.exceptions import (
    InvalidFrameError,
    InvalidRoomNameError,
    MessageNotFoundError,
    PermissionDeniedError,
)
from roomcast.models import Message, Room, RoomMember
from tests.conftest import identities, make_users

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def people() -> dict[str, Any]:
    """alice (the author), bob, staff, carol (lobby's admin); their identities."""
    users = make_users(
        ["alice", "bob", "staff", "root", "carol"], staff={"staff"}, superusers={"root"}
    )
    return identities(users)


@pytest.fixture
def lobby(people: dict[str, Any]) -> str:
    """Room "lobby": alice's message 1 and bob's message 2; carol is its admin."""
    users = people["users"]
    services.store_message("lobby", "hello", user=users["alice"], client_id="a-1")
    services.store_message("lobby", "bob here", user=users["bob"])
    RoomMember.objects.create(
        room=Room.objects.get(name="lobby"), user=users["carol"], role=RoomMember.Role.ADMIN
    )
    return "lobby"


def row(room: str, seq: int) -> Message:
    return Message.objects.get(room__name=room, seq=seq)


def last_seq(room: str) -> int:
    return Room.objects.get(name=room).last_seq


def age(room: str, seq: int, seconds: float) -> None:
    """Make message ``seq`` ``seconds`` old."""
    Message.objects.filter(room__name=room, seq=seq).update(
        created_at=timezone.now() - timedelta(seconds=seconds)
    )


# -- who may ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "allowed"),
    [
        ("alice", True),  # the author, within the window
        ("bob", False),  # another user
        ("staff", True),
        ("root", True),
        ("carol", True),  # the room's admin
        ("guest", False),
        ("site", True),  # by=None: an API key, the admin, Python code
    ],
)
@pytest.mark.parametrize("action", ["edit", "delete"])
def test_who_may_edit_or_delete(people, lobby, who: str, allowed: bool, action: str):
    """The author within the window, staff, superusers, room admins and the site may;
    another user and a guest get forbidden, and nothing is stored."""
    by = {"guest": access.anonymous(), "site": None}.get(who, people.get(who))
    if action == "edit":
        call = lambda: edits.edit_message(lobby, 1, "changed", by=by)  # noqa: E731
    else:
        call = lambda: edits.delete_message(lobby, 1, by=by)  # noqa: E731
    if not allowed:
        with pytest.raises(PermissionDeniedError) as refused:
            call()
        assert refused.value.code == "forbidden"
        if who == "guest":
            assert "Log in" in refused.value.detail
        assert last_seq(lobby) == 2 and row(lobby, 1).text == "hello"
        return
    change = call()
    assert (change.room, change.seq, change.target, change.duplicate) == (lobby, 3, 1, False)
    event = row(lobby, 3)
    assert (event.kind, event.target_seq) == (action, 1)
    assert event.username == ("" if by is None else by.name)
    target = row(lobby, 1)
    if action == "edit":
        assert target.text == "changed" and target.edited_at == event.created_at
    else:
        assert target.text == "" and target.deleted_at == event.created_at


def test_the_author_only_within_the_window(people, lobby, settings):
    """Past EDIT_WINDOW_SECS the author is refused (a moderator still may); with the
    window 0, authors never may."""
    settings.ROOMCAST = {**settings.ROOMCAST, "EDIT_WINDOW_SECS": 60}
    age(lobby, 1, 30)
    edits.edit_message(lobby, 1, "in time", by=people["alice"])
    age(lobby, 1, 61)
    with pytest.raises(PermissionDeniedError, match="may be edited for 60 s after posting"):
        edits.edit_message(lobby, 1, "too late", by=people["alice"])
    with pytest.raises(PermissionDeniedError):
        edits.delete_message(lobby, 1, by=people["alice"])
    edits.delete_message(lobby, 1, by=people["carol"])
    settings.ROOMCAST = {**settings.ROOMCAST, "EDIT_WINDOW_SECS": 0}
    with pytest.raises(PermissionDeniedError, match="may not be edited by their authors"):
        edits.edit_message(lobby, 2, "never", by=people["bob"])
    assert [m.kind for m in Message.objects.filter(room__name=lobby)] == [
        "chat",
        "chat",
        "edit",
        "delete",
    ]


def test_an_author_who_may_no_longer_post_may_not_edit(people, lobby):
    """A room made read-only: its authors' messages are no longer theirs to change."""
    Room.objects.filter(name=lobby).update(visibility=Room.Visibility.READ_ONLY)
    with pytest.raises(PermissionDeniedError):
        edits.edit_message(lobby, 1, "mine", by=people["alice"])
    edits.edit_message(lobby, 1, "moderated", by=people["carol"])  # admins post there


def test_guests_and_system_messages_have_no_author(people, lobby):
    """A guest's message (no user) and a pushed system message: only moderators."""
    services.store_message(lobby, "a guest", username="guest-abc123")  # 3
    push.send_to_room(lobby, "system")  # 4
    for seq in (3, 4):
        with pytest.raises(PermissionDeniedError):
            edits.delete_message(lobby, seq, by=access.anonymous("guest-abc123"))
        with pytest.raises(PermissionDeniedError):
            edits.delete_message(lobby, seq, by=people["alice"])
    edits.edit_message(lobby, 4, "system, fixed", by=people["staff"])


@pytest.mark.parametrize("action", ["edit", "delete"])
def test_not_found(people, lobby, action: str):
    """No such seq, no such room, an event, a deleted message: not_found, nothing stored."""
    edits.edit_message(lobby, 2, "edited", by=None)  # 3: an event
    edits.delete_message(lobby, 1, by=None)  # 4: 1 is deleted
    for room, seq in [(lobby, 99), (lobby, 0), (lobby, 2**63), ("nowhere", 1), (lobby, 3),
                      (lobby, 4), (lobby, 1)]:  # fmt: skip
        with pytest.raises(MessageNotFoundError) as refused:
            if action == "edit":
                edits.edit_message(room, seq, "x", by=None)
            else:
                edits.delete_message(room, seq, by=None)
        assert refused.value.code == "not_found"
    assert last_seq(lobby) == 4
    assert not Room.objects.filter(name="nowhere").exists()


def test_not_found_is_answered_before_permission(people, lobby):
    """A user who may not moderate still learns not_found for a message that is gone
    (the socket's own room: nothing leaks)."""
    edits.delete_message(lobby, 2, by=None)
    with pytest.raises(MessageNotFoundError):
        edits.edit_message(lobby, 2, "x", by=people["alice"])


def test_bad_text_client_id_and_room(lobby):
    """The client's rules for text (non-empty, no NUL, no lone surrogate, at most
    MAX_FRAME_BYTES) and client_id; a user channel is no room to edit in."""
    for text in ["", "   ", "a\x00b", "\ud800", "é" * 9000]:
        with pytest.raises(InvalidFrameError):
            edits.edit_message(lobby, 1, text)
    with pytest.raises(InvalidFrameError):
        edits.edit_message(lobby, 1, "ok", client_id="x" * 65)
    with pytest.raises(InvalidRoomNameError):
        edits.delete_message("user/1", 1)
    with pytest.raises(TypeError):
        edits.delete_message(lobby, "1")  # type: ignore[arg-type]
    assert last_seq(lobby) == 2


def test_idempotent_by_client_id(people, lobby):
    """The same client_id again: the stored event comes back as a duplicate, nothing new
    is stored (even after the message changed again, or the window closed)."""
    first = edits.edit_message(lobby, 1, "v2", by=people["alice"], client_id="e-1")
    edits.edit_message(lobby, 1, "v3", by=people["alice"])
    age(lobby, 1, 10_000)
    again = edits.edit_message(lobby, 1, "v2", by=people["alice"], client_id="e-1")
    assert (again.seq, again.target, again.duplicate) == (first.seq, 1, True)
    assert again.frame == first.frame
    assert json.loads(again.target_frame)["message"] == "v3"
    assert last_seq(lobby) == 4
    deleted = edits.delete_message(lobby, 2, by=people["bob"], client_id="d-1")
    assert edits.delete_message(lobby, 2, by=people["bob"], client_id="d-1").seq == deleted.seq


async def test_concurrent_sends_of_one_client_id_store_one_event(people, lobby):
    """Eight sends of one edit at once, on threads: one event stored, the others get it."""
    changes = await asyncio.gather(
        *(edits.aedit_message(lobby, 1, "once", by=None, client_id="race") for _ in range(8))
    )
    assert len({c.seq for c in changes}) == 1
    assert sum(not c.duplicate for c in changes) == 1
    assert await Message.objects.filter(room__name=lobby, kind="edit").acount() == 1


# -- what is stored and shown -------------------------------------------------------------------


def test_delete_erases_the_text_of_the_message_and_of_its_edits(lobby):
    """A deleted message's words are gone from the database: its own row and the edit
    events that carried its text, which become edits without text."""
    edited = edits.edit_message(lobby, 1, "second thoughts")
    deleted = edits.delete_message(lobby, 1)
    assert Message.objects.filter(text__contains="second thoughts").count() == 0
    assert Message.objects.filter(text__contains="hello").count() == 0
    ((seq, frame),) = deleted.also_replace
    assert seq == edited.seq
    assert json.loads(frame) == {**json.loads(edited.frame), "message": "", "deleted": True}


def test_history_and_catch_up_show_final_states_and_the_events(lobby):
    """history pages and the join catch-up (with and without since) show the final state
    of each message and the events, in seq order; the frames are the same bytes."""
    edit = edits.edit_message(lobby, 2, "bob, edited")
    delete = edits.delete_message(lobby, 1)
    frames, has_more = services.read_history(lobby, None, 50)
    got = [json.loads(f) for f in frames]
    assert not has_more and [f["seq"] for f in got] == [1, 2, 3, 4]
    tomb, edited, edit_event, delete_event = got
    assert tomb["type"] == "message" and tomb["deleted"] is True and tomb["message"] == ""
    assert tomb["user"] == "alice" and tomb["client_id"] == "a-1"
    assert edited["message"] == "bob, edited" and edited["edited"] == edit_event["ts"]
    assert {k: edit_event[k] for k in ("type", "room", "seq", "target", "message", "user")} == {
        "type": "edit",
        "room": lobby,
        "seq": 3,
        "target": 2,
        "message": "bob, edited",
        "user": None,
    }
    assert delete_event["type"] == "delete" and delete_event["target"] == 1
    assert "message" not in delete_event
    assert frames[2] == edit.frame and frames[3] == delete.frame
    assert frames[0] == delete.target_frame
    last, catch_up, recovered = services.read_catch_up(lobby, None)
    assert (last, recovered) == (4, None) and [f for _, f in catch_up] == frames
    last, replay, recovered = services.read_catch_up(lobby, 2)
    assert (last, recovered) == (4, True) and [f for _, f in replay] == frames[2:]


def test_layer_message_has_the_contracts_shape(lobby):
    """{"type": "room.message", "seq", "frame", "v1_only": True, "replace": [N, FINAL]},
    JSON-safe (a Redis layer serialises it); a delete with edits adds also_replace."""
    edit = edits.edit_message(lobby, 1, "v2")
    message = edits.layer_message(edit)
    assert message == {
        "type": "room.message",
        "seq": 3,
        "frame": edit.frame,
        "v1_only": True,
        "replace": [1, edit.target_frame],
    }
    assert json.loads(json.dumps(message)) == message
    assert json.loads(edit.target_frame)["message"] == "v2"
    delete = edits.layer_message(edits.delete_message(lobby, 1))
    assert delete["replace"][0] == 1 and json.loads(delete["replace"][1])["deleted"] is True
    assert [seq for seq, _ in delete["also_replace"]] == [3]


# -- live sockets -------------------------------------------------------------------------------


async def test_a_live_v1_socket_receives_edit_and_delete_events(people, lobby, room_of):
    """A member of /ws/chat/<room>/ (v1) gets the edit and the delete as they happen:
    from async code and, after commit, from a worker thread."""
    member = await room_of(lobby)
    await member.receive_messages(2)  # the catch-up
    change = await edits.aedit_message(lobby, 1, "live edit", by=people["alice"], client_id="c9")
    frame = await member.receive_event("edit")
    assert frame == json.loads(change.frame)
    assert (frame["seq"], frame["target"], frame["message"], frame["user"]) == (
        3,
        1,
        "live edit",
        "alice",
    )
    assert frame["client_id"] == "c9"
    again = await edits.aedit_message(lobby, 1, "live edit", by=people["alice"], client_id="c9")
    assert again.duplicate  # nothing published for it
    await asyncio.to_thread(edits.delete_message, lobby, 2, by=people["staff"])
    frame = await member.receive_event("delete")
    assert (frame["seq"], frame["target"], frame["user"]) == (4, 2, "staff")
    assert await member.receive_nothing(0.1)


async def test_a_reconnecting_socket_replays_the_events(people, lobby, room_of):
    """since= replays the events and each message in its final state."""
    await edits.aedit_message(lobby, 1, "edited while away")
    await edits.adelete_message(lobby, 2)
    member = await room_of(lobby, since=1)
    frames = [await member.receive_event() for _ in range(3)]
    assert [(f["type"], f["seq"]) for f in frames] == [("message", 2), ("edit", 3), ("delete", 4)]
    assert frames[0]["deleted"] is True and frames[0]["message"] == ""
    assert frames[1]["message"] == "edited while away"
