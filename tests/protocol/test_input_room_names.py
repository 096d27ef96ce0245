"""The room name rule: look-alike names are one room or refused; text people type is kept."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast.protocol import CloseCode, InvalidRoomNameError, codec, validate_room_name
from roomcast.protocol.room_names import check_path_encoding

MAX = 200

ZWJ, ZWNJ, VS16 = "\u200d", "\u200c", "\ufe0f"


def tags(text: str) -> str:
    """``text`` spelt in tag characters (as in the flag of Scotland's sequence)."""
    return "".join(chr(0xE0000 + ord(c)) for c in text)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("family 👨" + ZWJ + "👩" + ZWJ + "👧", None),  # emoji ZWJ sequence
        ("🏳" + VS16 + ZWJ + "🌈", None),  # selector, then ZWJ
        ("👩🏽" + ZWJ + "💻 team", None),  # skin tone, then ZWJ
        ("❤" + VS16 + ZWJ + "🔥", None),
        ("1" + VS16 + "\u20e3 keycap", None),
        ("🏴" + tags("gbsct") + "\U000e007f", None),  # flag of Scotland
        ("🇺🇸 flags", None),  # regional indicators: visible
        ("👍🏿", None),  # skin tone alone after its emoji
        ("\u0645\u06cc" + ZWNJ + "\u062e\u0648\u0627\u0647\u0645", None),  # Persian, ZWNJ
        ("\u0915\u094d" + ZWJ + "\u0937", None),  # Devanagari: ZWJ after a virama
        ("\u0915\u094d" + ZWNJ + "\u0937", None),  # and ZWNJ after a virama
        ("\u845b\U000e0100", None),  # an ideographic variation sequence (Japanese names)
        ("\u00a9" + VS16, None),  # (c) with emoji presentation
        ("עברית", None),  # right-to-left letters are text, not controls
        ("a\u00a0b", "a b"),  # a no-break space looks like a space: it is one
        ("a  \u3000 b", "a b"),  # any run of spaces is one space
        ("\u2003 padded \u00a0", "padded"),
    ],
)
def test_room_names_people_type_are_kept(raw, canonical):
    """Emoji sequences, scripts that need joiners, variation sequences are room names;
    spaces of any kind are one space."""
    assert validate_room_name(raw, max_chars=MAX) == (raw if canonical is None else canonical)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("\u202eabc", "U+202E RIGHT-TO-LEFT OVERRIDE"),
        ("abc\u202d", "bidirectional"),
        ("a\u2066b\u2069", "U+2066 LEFT-TO-RIGHT ISOLATE"),
        ("\u200fabc", "U+200F RIGHT-TO-LEFT MARK"),
        ("\u061cabc", "U+061C ARABIC LETTER MARK"),
        ("lob\u200bby", "U+200B ZERO WIDTH SPACE"),
        ("\u200blobby", "invisible"),
        ("lobby\u2060", "U+2060 WORD JOINER"),
        ("\ufefflobby", "U+FEFF"),
        ("lob\u00adby", "U+00AD SOFT HYPHEN"),
        ("lob\u034fby", "U+034F COMBINING GRAPHEME JOINER"),
        ("\u3164", "U+3164 HANGUL FILLER"),
        ("a\u2800b", "U+2800 BRAILLE PATTERN BLANK"),
        ("a" + ZWJ + "b", "U+200D ZERO WIDTH JOINER"),  # not in an emoji sequence
        (ZWJ + "👩", "U+200D"),  # nothing before it
        ("👩" + ZWJ, "U+200D"),  # nothing after it
        ("👩" + ZWJ + ZWJ + "💻", "U+200D"),
        ("a" + ZWNJ + "b", "U+200C ZERO WIDTH NON-JOINER"),  # Latin has no joining
        ("lobby" + VS16, "U+FE0F VARIATION SELECTOR-16"),  # after a Latin letter it hides
        (VS16 + "lobby", "U+FE0F"),
        ("❤" + VS16 + VS16, "U+FE0F"),  # one selector per character
        ("lobby" + tags("x"), "TAG LATIN SMALL LETTER X"),  # tags outside a flag
        ("🏴" + tags("gbsct"), "TAG"),  # a tag sequence without CANCEL TAG
        ("🏴\U000e007f", "U+E007F CANCEL TAG"),  # CANCEL TAG with no tags
        ("\U000e0001en", "U+E0001 LANGUAGE TAG"),
        ("a\u0600b", "U+0600 ARABIC NUMBER SIGN"),  # a format character (Cf)
        ("\ufffd", "U+FFFD"),  # what undecodable %XX bytes become
        ("a\ufdd0", "noncharacters"),
        ("a\uffff", "U+FFFF"),
        ("a\U0001fffe", "noncharacters"),
        ("a\u2028b", "line breaks"),
        ("a\u2029b", "line breaks"),
        ("tab\there", "control characters"),
        ("nul\x00", "control characters"),
        ("c1\x85c1", "control characters"),
        ("\ud800", "lone surrogates"),
        ("a/b", "'/'"),
        ("", "empty"),
        ("\u00a0\u3000", "empty"),
        ("x" * 201, "200 characters"),
    ],
)
def test_look_alike_and_invisible_room_names_are_refused(raw, fragment):
    """Invisible characters, bidi controls, U+FFFD and the like are refused with 4400 and a
    reason naming the character."""
    with pytest.raises(InvalidRoomNameError) as info:
        validate_room_name(raw, max_chars=MAX)
    assert fragment in info.value.detail
    assert info.value.close_code == CloseCode.BAD_REQUEST
    assert info.value.code == "invalid_room"
    assert info.value.detail.isascii()  # it goes into close reasons: no bytes to spare


def test_codec_validate_room_name_is_the_rule():
    """codec.validate_room_name, what the consumer, views and push call, is this rule."""
    assert codec.validate_room_name is validate_room_name
    with pytest.raises(InvalidRoomNameError, match="RIGHT-TO-LEFT OVERRIDE"):
        codec.validate_room_name("\u202eabc", max_chars=MAX)


def test_length_is_counted_after_canonicalising():
    """200 characters after NFC and space folding are allowed, 201 are not."""
    assert validate_room_name("e\u0301" * MAX, max_chars=MAX) == "é" * MAX
    assert validate_room_name("a\u00a0\u00a0" * 100, max_chars=MAX).count(" ") == 99
    with pytest.raises(InvalidRoomNameError):
        validate_room_name("a " * 100 + "a", max_chars=MAX)


@pytest.mark.parametrize(
    "path",
    [b"/ws/chat/%FF/", b"/ws/chat/%fe/", b"/ws/chat/%C3/", b"/ws/chat/%ED%A0%80/", b"/x/\xff/"],
)
def test_paths_that_are_not_utf8_are_refused(path):
    """%XX escapes (or raw bytes) that are not UTF-8, including an encoded surrogate,
    are a bad room name: each would otherwise become U+FFFD, one room for all."""
    with pytest.raises(InvalidRoomNameError, match="not UTF-8") as info:
        check_path_encoding(path)
    assert info.value.close_code == CloseCode.BAD_REQUEST


def test_paths_that_are_utf8_pass():
    """Percent-encoded UTF-8 and a decoded WSGI path (percent_encoded=False) pass."""
    check_path_encoding(b"/ws/chat/%E6%8A%80%E6%9C%AF%20caf%C3%A9/")
    check_path_encoding("/chat/技术/".encode(), percent_encoded=False)
    check_path_encoding(b"/chat/%FF/", percent_encoded=False)  # literal text "%FF"
    with pytest.raises(InvalidRoomNameError):
        check_path_encoding(b"/chat/\xff/", percent_encoded=False)


# -- properties over any text ------------------------------------------------------------------

#: Characters the rule never lets into a name.
NEVER = {0x202E, 0x202D, 0x200B, 0x200E, 0x200F, 0x2060, 0xFEFF, 0x00AD, 0xFFFD, 0x2066}


@settings(max_examples=500, deadline=None, database=None)
@given(st.text(max_size=60))
def test_any_text_is_a_room_or_a_named_refusal(raw):
    """Any text gives a canonical name or InvalidRoomNameError, nothing else; canonical
    names are stable and hold none of the refused characters."""
    try:
        name = validate_room_name(raw, max_chars=MAX)
    except InvalidRoomNameError as exc:
        assert exc.detail
        return
    assert validate_room_name(name, max_chars=MAX) == name
    assert name == name.strip() and "  " not in name and "/" not in name
    assert not any(ord(ch) in NEVER for ch in name)
    assert not any(unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") for ch in name)
    name.encode("utf-8")  # storable and sendable


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=10))
def test_invisible_insertions_never_make_a_second_room(word):
    """A zero width space or a bidi control put into a valid name never yields another
    valid name (one that would look the same)."""
    try:
        base = validate_room_name(word, max_chars=MAX)
    except InvalidRoomNameError:
        return
    for invisible in ("\u200b", "\u202e", "\u2060", "\ufeff", "\u00ad", "\u200e"):
        for spoof in (invisible + base, base[:1] + invisible + base[1:], base + invisible):
            with pytest.raises(InvalidRoomNameError):
                validate_room_name(spoof, max_chars=MAX)
