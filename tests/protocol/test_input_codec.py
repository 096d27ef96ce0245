"""Hostile input to the codec: every input is a frame or a named ProtocolError, nothing else."""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast.protocol import (
    CloseCode,
    InvalidFrameError,
    InvalidJSONError,
    InvalidQueryError,
    InvalidSinceError,
    NotFoundError,
    ProtocolError,
    codec,
    parse_frame,
    parse_since,
    should_reconnect,
)

MAX = 16 * 1024
FUZZ = settings(max_examples=400, deadline=None, database=None)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 2000,  # the finding: RecursionError, and the socket dropped with 1006
        '{"a":' * 2000,
        "[" * 2000 + "]" * 2000,  # deep but well formed
        '{"message": "hi", "extra": ' + "[" * 5000 + "]" * 5000 + "}",
        '{"message": "hi", "extra": ' + '{"a":' * 2000 + "1" + "}" * 2001,
    ],
)
def test_deeply_nested_json_is_invalid_json_not_a_recursion_error(text):
    """JSON nested past the parser's depth is an invalid_json error event (the
    connection stays open), however far below the frame size limit it is."""
    with pytest.raises(InvalidJSONError) as info:
        parse_frame(text, max_bytes=MAX)
    assert info.value.close_code is None
    assert "nested too deeply" in info.value.detail


def test_deep_json_is_refused_even_with_a_high_recursion_limit():
    """With the recursion limit raised, depth is still bounded by the frame size and
    decoding still ends in a frame or a named error."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        with pytest.raises(ProtocolError):
            parse_frame("[" * (MAX // 2), max_bytes=MAX)
    finally:
        sys.setrecursionlimit(old)


def test_decode_json_names_what_it_read():
    """decode_json's detail names the frame or the body."""
    with pytest.raises(InvalidJSONError, match="The body is not valid JSON"):
        codec.decode_json("[" * 3000, what="body")
    with pytest.raises(InvalidJSONError, match="The body is not valid JSON"):
        codec.decode_json("1" * 5000, what="body")  # over int()'s 4300-digit limit
    assert codec.decode_json('{"a": [1]}') == {"a": [1]}


@pytest.mark.parametrize("before", [2**63, 10**30, -(2**63)])
def test_history_before_is_bounded_to_the_seq_column(before):
    """A "before" no seq column can hold is an invalid frame, not a database error."""
    with pytest.raises(InvalidFrameError, match="before"):
        parse_frame(json.dumps({"type": "history", "before": before}), max_bytes=MAX)
    frame = parse_frame(json.dumps({"type": "history", "before": 2**63 - 1}), max_bytes=MAX)
    assert frame["before"] == codec.SEQ_MAX


# -- fuzz: frames ------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
FRAME_KEYS = st.sampled_from(["type", "message", "client_id", "before", "limit", "x"])
FRAME_TYPES = st.sampled_from(["message", "history", "ping", "dance", ""]) | JSON_VALUES
FRAMES = st.dictionaries(FRAME_KEYS, JSON_VALUES, max_size=5) | st.builds(
    lambda kind, extra: {"type": kind, **extra},
    FRAME_TYPES,
    st.dictionaries(FRAME_KEYS, JSON_VALUES, max_size=4),
)


def _parse_or_named_error(text: str) -> None:
    try:
        frame = parse_frame(text, max_bytes=MAX)
    except ProtocolError as exc:
        assert exc.code and exc.detail
        return
    assert frame["type"] in ("message", "history", "ping")
    json.dumps(frame)  # what the consumer hands on is plain JSON data
    if frame["type"] == "message":
        frame["message"].encode("utf-8")  # storable
    if frame["type"] == "history":
        assert 1 <= frame["limit"] <= codec.HISTORY_PAGE_MAX
        assert frame["before"] is None or 1 <= frame["before"] <= codec.SEQ_MAX


@FUZZ
@given(st.text(max_size=200))
def test_any_text_frame_is_a_frame_or_a_named_error(text):
    """Arbitrary text never raises anything but a ProtocolError."""
    _parse_or_named_error(text)


@FUZZ
@given(FRAMES)
def test_any_json_object_frame_is_a_frame_or_a_named_error(obj):
    """Objects with the protocol's keys holding any JSON value: a valid frame or a
    named error, never a TypeError from a value of the wrong type."""
    _parse_or_named_error(json.dumps(obj))


@FUZZ
@given(st.integers(min_value=1, max_value=6000), st.sampled_from(["[", "{", '{"a":', "[1,"]))
def test_any_nesting_depth_is_a_frame_or_a_named_error(depth, opener):
    """Nesting of any depth up to the size limit is handled."""
    _parse_or_named_error('{"message": "x", "extra": ' + opener * depth)


# -- fuzz: query strings -----------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=200))
def test_any_query_string_gives_since_or_a_named_error(query):
    """since= from any query-string bytes: None, an int within 64 bits, or 4400."""
    try:
        since = parse_since(query)
    except InvalidSinceError as exc:
        assert exc.close_code == CloseCode.BAD_REQUEST
        return
    assert since is None or 0 <= since <= codec.SEQ_MAX


@pytest.mark.parametrize(
    "raw", ["", " 5", "5 ", "+3", "-1", "1_0", "1.0", "1e3", "\u0661", "\uff15", "9" * 19, "0x10"]
)
def test_parse_query_int_is_strict(raw):
    """Only ASCII digits, at most 18: int() would take most of these."""
    with pytest.raises(InvalidQueryError) as info:
        codec.parse_query_int(raw, name="limit", minimum=1)
    assert "limit" in info.value.detail and info.value.code == "invalid_query"


def test_parse_query_int_minimum_and_bounds():
    """The minimum is enforced; 18 digits are fine."""
    assert codec.parse_query_int("0", name="since", minimum=0) == 0
    assert codec.parse_query_int("9" * 18, name="before", minimum=1) == 10**18 - 1
    with pytest.raises(InvalidQueryError, match="at least 1"):
        codec.parse_query_int("0", name="before", minimum=1)


# -- close reasons -----------------------------------------------------------------------------


@FUZZ
@given(st.text(max_size=200))
def test_close_reason_fits_a_close_frame(text):
    """Any detail becomes a reason of at most 123 UTF-8 bytes (websockets raises on more),
    a prefix of the detail when the detail is valid Unicode."""
    reason = codec.close_reason(text)
    assert len(reason.encode("utf-8")) <= codec.CLOSE_REASON_MAX_BYTES
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return
    assert text.startswith(reason)
    if len(text.encode()) <= codec.CLOSE_REASON_MAX_BYTES:
        assert reason == text


def test_not_found_is_4404_do_not_reconnect():
    """Unrouted paths close with 4404 where no HTTP 404 can be sent: do not reconnect."""
    assert NotFoundError().close_code == CloseCode.NOT_FOUND == 4404
    assert not should_reconnect(CloseCode.NOT_FOUND)
