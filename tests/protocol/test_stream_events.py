"""The stream events' frame builders (edits, deletes, final states, user channel, unread):
pure functions, no database."""

from __future__ import annotations

import json

from roomcast.protocol import stream_events as se

TS = "2026-11-29T10:00:00.000Z"


def frame(event: object) -> str:
    return se.encode(event)  # type: ignore[arg-type]


def test_edit_event_has_type_first_and_the_documented_keys():
    """An edit frame starts with its type (the hub filters by prefix) and carries the
    room, its own seq, the target and the new text."""
    text = frame(se.edit_event(room="lobby", seq=5, target=3, text="new", user="bob", ts=TS))
    assert text.startswith('{"type":"edit",')
    assert json.loads(text) == {
        "type": "edit",
        "room": "lobby",
        "seq": 5,
        "target": 3,
        "message": "new",
        "user": "bob",
        "ts": TS,
    }


def test_an_edit_of_a_deleted_message_has_no_text():
    """Once its target is deleted, an edit event keeps no text, and says why."""
    event = se.edit_event(
        room="r", seq=5, target=3, text="secret", user=None, ts=TS, client_id="c1", deleted=True
    )
    assert event["message"] == "" and event["deleted"] is True and event["client_id"] == "c1"


def test_delete_event_carries_no_message():
    """A delete frame names its target and has no message key."""
    event = se.delete_event(room="r", seq=6, target=3, user="mod", ts=TS)
    assert frame(event).startswith('{"type":"delete",')
    assert "message" not in event and event["target"] == 3


def test_final_message_event_edited_and_tombstone():
    """An edited message carries "edited"; a deleted one is a tombstone without text,
    still a message frame (type first), with its seq, user and ts."""
    edited = se.final_message_event(
        room="r", text="fixed", kind="chat", user="al", ts=TS, seq=2, edited="E"
    )
    assert edited["message"] == "fixed" and edited["edited"] == "E" and "deleted" not in edited
    tomb = se.final_message_event(
        room="r", text="gone", kind="chat", user="al", ts=TS, seq=2, edited="E", deleted=True
    )
    assert frame(tomb).startswith('{"type":"message",')
    assert tomb["message"] == "" and tomb["deleted"] is True and "edited" not in tomb
    assert (tomb["seq"], tomb["user"], tomb["ts"]) == (2, "al", TS)


def test_user_message_event_text_or_data_and_no_room():
    """A user channel's frame: message or data (decoded from its stored JSON), no room."""
    text = se.user_message_event(seq=1, ts=TS, text="hello")
    assert list(text) == ["type", "seq", "message", "ts"]
    data = se.user_message_event(seq=2, ts=TS, data_json='{"kind":"invoice","id":7}')
    assert list(data) == ["type", "seq", "data", "ts"]
    assert data["data"] == {"kind": "invoice", "id": 7}
    assert se.user_message_event(seq=3, ts=TS, data_json="null")["data"] is None


def test_unread_event():
    assert frame(se.unread_event(room="r", read_seq=4, unread=2)) == (
        '{"type":"unread","room":"r","read_seq":4,"unread":2}'
    )
