"""The wire protocol's pure functions: no server, no database."""

from __future__ import annotations

import json

import pytest

from roomcast.protocol import (
    CloseCode,
    FrameTooLargeError,
    InvalidFrameError,
    InvalidJSONError,
    InvalidRoomNameError,
    InvalidSinceError,
    UnknownTypeError,
    UnsupportedDataError,
    codec,
    parse_frame,
    parse_since,
    should_reconnect,
    validate_room_name,
)

MAX = 1024


def test_parse_frame_seed_message():
    """The seed's bare {"message": TEXT} is a message frame."""
    assert parse_frame('{"message": "hi"}', max_bytes=MAX) == {
        "type": "message",
        "message": "hi",
        "client_id": None,
    }


def test_parse_frame_typed_message_with_client_id():
    """A typed message frame keeps its client_id; unknown extra keys are ignored."""
    frame = parse_frame(
        '{"type": "message", "message": "héllo 你好", "client_id": "c-1", "future": 1}',
        max_bytes=MAX,
    )
    assert frame == {"type": "message", "message": "héllo 你好", "client_id": "c-1"}


@pytest.mark.parametrize(
    ("text", "error", "fragment"),
    [
        ("not json", InvalidJSONError, "not valid JSON"),
        ("[1, 2]", InvalidFrameError, "JSON object"),
        ('"hi"', InvalidFrameError, "JSON object"),
        ("{}", InvalidFrameError, '"message" key'),
        ('{"message": 5}', InvalidFrameError, "a number"),
        ('{"message": null}', InvalidFrameError, "null"),
        ('{"message": ["a"]}', InvalidFrameError, "an array"),
        ('{"message": "   "}', InvalidFrameError, "empty"),
        ('{"message": "\\ud800"}', InvalidFrameError, "surrogate"),
        ('{"message": "a\\u0000b"}', InvalidFrameError, "NUL"),
        ('{"message": "x", "client_id": 7}', InvalidFrameError, "client_id"),
        ('{"message": "x", "client_id": ""}', InvalidFrameError, "client_id"),
        ('{"message": "x", "client_id": "' + "c" * 65 + '"}', InvalidFrameError, "client_id"),
        ('{"type": "dance"}', UnknownTypeError, "dance"),
        ('{"type": 3, "message": "x"}', InvalidFrameError, '"type"'),
        ('{"type": "history", "before": 0}', InvalidFrameError, "before"),
        ('{"type": "history", "before": true}', InvalidFrameError, "before"),
        ('{"type": "history", "limit": "5"}', InvalidFrameError, "limit"),
    ],
)
def test_parse_frame_rejects_bad_frames_with_error_event(text, error, fragment):
    """Bad frames raise an error that keeps the connection open and says what is wrong."""
    with pytest.raises(error) as info:
        parse_frame(text, max_bytes=MAX)
    assert fragment in info.value.detail
    assert info.value.close_code is None
    assert info.value.code in {"invalid_frame", "invalid_json", "unknown_type"}


def test_parse_frame_binary_is_unsupported():
    """Binary frames get an error event, not a close."""
    with pytest.raises(UnsupportedDataError) as info:
        parse_frame(None, b'{"message": "hi"}', max_bytes=MAX)
    assert info.value.close_code is None
    assert info.value.code == "unsupported_data"


@pytest.mark.parametrize(
    ("text", "data"),
    [
        ('{"message": "' + "x" * MAX + '"}', None),
        ('{"message": "' + "é" * (MAX // 2) + '"}', None),  # under MAX chars, over MAX bytes
        (None, b"x" * (MAX + 1)),
    ],
)
def test_parse_frame_too_large_closes_1009(text, data):
    """A frame over the byte limit closes the socket with MESSAGE_TOO_BIG."""
    with pytest.raises(FrameTooLargeError) as info:
        parse_frame(text, data, max_bytes=MAX)
    assert info.value.close_code == CloseCode.MESSAGE_TOO_BIG == 1009


def test_parse_frame_limit_counts_utf8_bytes_exactly():
    """A frame of exactly max_bytes UTF-8 bytes is accepted; one byte more is not."""
    overhead = len('{"message": ""}')
    body = "é" * ((MAX - overhead) // 2)
    text = '{"message": "' + body + '"}'
    assert len(text.encode()) <= MAX
    assert parse_frame(text, max_bytes=MAX)["message"] == body
    with pytest.raises(FrameTooLargeError):
        parse_frame(text, max_bytes=len(text.encode()) - 1)


def test_parse_frame_history_defaults_and_clamps():
    """History requests default to 50 and are clamped to HISTORY_PAGE_MAX."""
    assert parse_frame('{"type": "history"}', max_bytes=MAX) == {
        "type": "history",
        "before": None,
        "limit": 50,
    }
    frame = parse_frame('{"type": "history", "before": 10, "limit": 100000}', max_bytes=MAX)
    assert frame == {"type": "history", "before": 10, "limit": codec.HISTORY_PAGE_MAX}


def test_parse_frame_ping():
    """A ping frame parses."""
    assert parse_frame('{"type": "ping"}', max_bytes=MAX) == {"type": "ping"}


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("lobby", "lobby"),
        ("技术交流", "技术交流"),
        ("cafe\u0301", "café"),  # decomposed é: NFC makes it the same room as composed
        ("  with spaces  ", "with spaces"),
        ("x" * 200, "x" * 200),
        ("emoji 👩‍💻", "emoji 👩‍💻"),  # ZWJ (a format char) is allowed
    ],
)
def test_validate_room_name_accepts_typed_text(raw, canonical):
    """Any Unicode text a person types names a room, in one canonical form."""
    assert validate_room_name(raw, max_chars=200) == canonical


@pytest.mark.parametrize("raw", ["", "   ", "x" * 201, "a/b", "tab\there", "nul\x00", "\ud800"])
def test_validate_room_name_rejects(raw):
    """Names that cannot be a room close the socket with 4400 (do not reconnect)."""
    with pytest.raises(InvalidRoomNameError) as info:
        validate_room_name(raw, max_chars=200)
    assert info.value.close_code == CloseCode.BAD_REQUEST
    assert not should_reconnect(info.value.close_code)


@pytest.mark.parametrize(
    ("query", "since"),
    [(b"", None), (b"since=0", 0), (b"since=42", 42), (b"a=1&since=7", 7), ("since=3", 3)],
)
def test_parse_since(query, since):
    """since= is read from the query string."""
    assert parse_since(query) == since


@pytest.mark.parametrize(
    "query", [b"since=", b"since=-1", b"since=abc", b"since=1.5", b"since=" + b"9" * 19]
)
def test_parse_since_rejects(query):
    """A since= that is not a non-negative integer is a bad request."""
    with pytest.raises(InvalidSinceError) as info:
        parse_since(query)
    assert info.value.close_code == CloseCode.BAD_REQUEST


def test_message_event_keeps_seed_message_key():
    """Every message frame carries the text under "message", as the seed reads it."""
    event = codec.message_event(
        room="r",
        text="hi",
        kind="chat",
        user=None,
        ts="2026-01-01T00:00:00.000Z",
        seq=3,
        client_id="c",
    )
    decoded = json.loads(codec.encode(event))
    assert decoded["message"] == "hi"
    assert decoded == {
        "type": "message",
        "room": "r",
        "message": "hi",
        "kind": "chat",
        "user": None,
        "ts": "2026-01-01T00:00:00.000Z",
        "seq": 3,
        "client_id": "c",
    }
    ephemeral = codec.message_event(room="r", text="x", kind="system", user=None, ts="t")
    assert "seq" not in ephemeral and "client_id" not in ephemeral


def test_encode_is_compact_and_keeps_unicode():
    """Frames are compact JSON with raw UTF-8 text (not \\u escapes)."""
    assert (
        codec.encode(codec.error_event(code="x", detail="é"))
        == '{"type":"error","code":"x","detail":"é"}'
    )


def test_joined_event_recovered_only_when_asked():
    """joined carries recovered only for a client that asked to recover."""
    assert "recovered" not in codec.joined_event(room="r", seq=5)
    assert codec.joined_event(room="r", seq=5, recovered=False)["recovered"] is False


def test_history_frame_splices_encoded_messages():
    """history wraps already-encoded message frames into valid JSON."""
    frames = [
        codec.encode(codec.message_event(room="r", text=t, kind="chat", user=None, ts="t", seq=i))
        for i, t in enumerate(["a", '"quoted"'], 1)
    ]
    decoded = json.loads(codec.history_frame(room="ré", frames=frames, has_more=True))
    assert decoded["type"] == "history" and decoded["room"] == "ré" and decoded["has_more"] is True
    assert [m["message"] for m in decoded["messages"]] == ["a", '"quoted"']
    assert json.loads(codec.history_frame(room="r", frames=[], has_more=False))["messages"] == []


@pytest.mark.parametrize(
    ("code", "reconnect"),
    [
        (1000, False),
        (1001, True),
        (1005, True),
        (1006, True),
        (1008, False),
        (1009, False),
        (1011, True),
        (1012, True),
        (1013, True),
        (4000, False),
        (4400, False),
        (4403, False),
        (4500, True),
        (4999, True),
        (3000, False),
    ],
)
def test_should_reconnect(code, reconnect):
    """Each close code says whether the client should reconnect."""
    assert should_reconnect(code) is reconnect
