"""Room names: which text names a room, in which one canonical form.

Pure functions, standard library only (forbidden: Django, Channels, asyncio, I/O).
:func:`validate_room_name` is the one rule, used by the room socket, the room page, the
HTTP push API and :mod:`roomcast.push`, so that they all give the same answer; the rule
is written out in ``docs/protocol.md`` ("Room names").

Two names that look the same must be the same room, or one of them must be refused. So:

* NFC normalisation (a composed and a decomposed ``é`` are one room) and one space for
  any run of space characters (a no-break space looks like a space);
* invisible characters are refused: Unicode's Default_Ignorable_Code_Point set (zero
  width space, word joiner, soft hyphen, Hangul fillers, ...), bidirectional controls
  (U+202E RIGHT-TO-LEFT OVERRIDE makes ``abc`` show as ``cba``), other format
  characters, control characters, line separators, U+2800 BRAILLE PATTERN BLANK;
* except where text needs them, in context: the zero width joiner inside an emoji
  sequence or after a virama, the zero width non-joiner after a virama or between two
  Arabic-script letters (Persian writes it inside words), a variation selector right
  after a symbol, digit, punctuation mark or non-Latin letter (emoji presentation,
  keycaps, CJK ideographic variants), tag characters in an emoji tag sequence (the
  flags of England, Scotland, Wales) ended by CANCEL TAG;
* U+FFFD REPLACEMENT CHARACTER, lone surrogates and noncharacters are refused: U+FFFD is
  what a server makes of ``%XX`` bytes that are not UTF-8, so every such URL would name
  one room, whatever the bytes were. Where the raw path is known,
  :func:`check_path_encoding` says so more precisely.

Not handled here, on purpose: confusable letters across scripts (Latin ``a`` and
Cyrillic U+0430). People name rooms in Cyrillic, and telling mixed-script spoofing from
real mixed text needs Unicode's confusables data, which the standard library lacks.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote_to_bytes

from .errors import InvalidRoomNameError

# Unicode 15.1 DerivedCoreProperties.txt, Default_Ignorable_Code_Point: the characters a
# renderer shows as nothing. unicodedata does not expose the property, so it is listed.
_DEFAULT_IGNORABLE = (
    (0x00AD, 0x00AD),  # SOFT HYPHEN
    (0x034F, 0x034F),  # COMBINING GRAPHEME JOINER
    (0x061C, 0x061C),  # ARABIC LETTER MARK (bidi)
    (0x115F, 0x1160),  # HANGUL CHOSEONG/JUNGSEONG FILLER
    (0x17B4, 0x17B5),  # KHMER VOWEL INHERENT AQ/AA
    (0x180B, 0x180F),  # MONGOLIAN FREE VARIATION SELECTORS, VOWEL SEPARATOR
    (0x200B, 0x200F),  # ZWSP, ZWNJ, ZWJ, LRM, RLM
    (0x202A, 0x202E),  # bidi embeddings and overrides
    (0x2060, 0x206F),  # WORD JOINER, invisible operators, bidi isolates, deprecated
    (0x3164, 0x3164),  # HANGUL FILLER
    (0xFE00, 0xFE0F),  # VARIATION SELECTOR-1..16
    (0xFEFF, 0xFEFF),  # ZERO WIDTH NO-BREAK SPACE (BOM)
    (0xFFA0, 0xFFA0),  # HALFWIDTH HANGUL FILLER
    (0xFFF0, 0xFFF8),  # unassigned specials
    (0x1BCA0, 0x1BCA3),  # SHORTHAND FORMAT controls
    (0x1D173, 0x1D17A),  # MUSICAL SYMBOL BEGIN/END formatting
    (0xE0000, 0xE0FFF),  # tags, VARIATION SELECTOR-17..256, unassigned
)

#: Bidirectional formatting characters (UAX #9 section 2): they reorder what follows.
_BIDI_CONTROLS = frozenset([0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)])

#: Characters that render blank but are not default-ignorable.
_BLANK = frozenset([0x2800])  # BRAILLE PATTERN BLANK

_ZWNJ, _ZWJ = 0x200C, 0x200D
_TAG_FIRST, _TAG_LAST, _CANCEL_TAG = 0xE0020, 0xE007E, 0xE007F
_EMOJI_MODIFIERS = range(0x1F3FB, 0x1F400)  # skin tones (category Sk: visible)
_VIRAMA = 9  # canonical combining class of viramas (IDNA's CONTEXTJ rule, RFC 5892 A.1)

# Letters of Latin-like scripts have case (Lu/Ll/Lt) or are modifiers (Lm): no variation
# sequence uses them, and a selector after one would make "a\ufe0fb" look like "ab".
_VS_BASE_CATEGORIES = frozenset(
    ["Lo", "Nd", "Nl", "No", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So"]
)
_SPACES = re.compile(r"[^\S\n\r\t\v\f\x1c-\x1f\x85\u2028\u2029]+")  # runs of Zs

# Scripts that join letters, where ZWNJ is part of spelling (Persian writes it inside
# words such as "mi-khaham", to keep the prefix from joining the verb).
_JOINING_SCRIPTS = ((0x0600, 0x08FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFE))


def _in(ranges: tuple[tuple[int, int], ...], cp: int) -> bool:
    return any(low <= cp <= high for low, high in ranges)


def _is_variation_selector(cp: int) -> bool:
    return 0xFE00 <= cp <= 0xFE0F or 0xE0100 <= cp <= 0xE01EF or 0x180B <= cp <= 0x180D


def _describe(ch: str) -> str:
    return f"U+{ord(ch):04X} {unicodedata.name(ch, '')}".rstrip()


def _emoji_base_before(name: str, i: int) -> bool:
    """Whether an emoji (a symbol, with its selector or skin tone) ends at ``i - 1``."""
    j = i - 1
    while j >= 0 and (_is_variation_selector(ord(name[j])) or ord(name[j]) in _EMOJI_MODIFIERS):
        j -= 1
    return j >= 0 and unicodedata.category(name[j]) == "So"


def _joining_letter(name: str, i: int) -> bool:
    return (
        0 <= i < len(name)
        and _in(_JOINING_SCRIPTS, ord(name[i]))
        and unicodedata.category(name[i])[0] in "LM"
    )


def _allowed_in_context(name: str, i: int) -> bool:
    """Whether the invisible ``name[i]`` is there because the text needs it."""
    cp = ord(name[i])
    before = name[i - 1] if i else ""
    after_virama = bool(before) and unicodedata.combining(before) == _VIRAMA
    if cp == _ZWJ:
        following = name[i + 1] if i + 1 < len(name) else ""
        emoji = (
            _emoji_base_before(name, i)
            and bool(following)
            and unicodedata.category(following) == "So"
        )
        return emoji or after_virama
    if cp == _ZWNJ:
        return after_virama or (_joining_letter(name, i - 1) and _joining_letter(name, i + 1))
    if _is_variation_selector(cp):
        return bool(before) and unicodedata.category(before) in _VS_BASE_CATEGORIES
    if _TAG_FIRST <= cp <= _CANCEL_TAG:
        # An emoji tag sequence: a symbol, one or more tag characters, CANCEL TAG.
        start = i
        while start > 0 and _TAG_FIRST <= ord(name[start - 1]) <= _TAG_LAST:
            start -= 1
        end = i
        while end < len(name) and _TAG_FIRST <= ord(name[end]) <= _TAG_LAST:
            end += 1
        if cp == _CANCEL_TAG:
            return start < i and _emoji_base_before(name, start)
        return _emoji_base_before(name, start) and end < len(name) and ord(name[end]) == _CANCEL_TAG
    return False


def _refusal(name: str, i: int) -> str | None:
    """Why ``name[i]`` cannot be in a room name, or None if it can."""
    ch = name[i]
    cp = ord(ch)
    category = unicodedata.category(ch)
    if category == "Cc":
        return "Room names cannot contain control characters."
    if category == "Cs":
        return "Room names cannot contain lone surrogates (invalid Unicode)."
    if category in ("Zl", "Zp"):
        return "Room names cannot contain line breaks."
    if cp == 0xFFFD:
        return (
            "Room names cannot contain U+FFFD, the replacement character for bytes "
            "that are not UTF-8."
        )
    if (cp & 0xFFFE) == 0xFFFE or 0xFDD0 <= cp <= 0xFDEF:
        return f"Room names cannot contain noncharacters ({_describe(ch)})."
    if cp in _BIDI_CONTROLS:
        return f"Room names cannot contain bidirectional controls ({_describe(ch)})."
    if (category == "Cf" or _in(_DEFAULT_IGNORABLE, cp) or cp in _BLANK) and not (
        _allowed_in_context(name, i)
    ):
        return f"Room names cannot contain invisible characters ({_describe(ch)})."
    return None


def validate_room_name(name: str, *, max_chars: int) -> str:
    """Return the canonical form of a room name, or raise :class:`InvalidRoomNameError`.

    Any Unicode text a person types names a room (``技术交流``, ``café``, spaces inside,
    emoji sequences). The name is NFC-normalised, each run of space characters becomes
    one U+0020, and surrounding whitespace is stripped. Refused, with a reason that
    names the character: empty names, names over ``max_chars``, ``/`` (it cannot appear
    in the room's URL), and the characters listed in this module's docstring.
    """
    canonical = _SPACES.sub(" ", unicodedata.normalize("NFC", name)).strip()
    if not canonical:
        raise InvalidRoomNameError("The room name is empty.")
    if len(canonical) > max_chars:
        raise InvalidRoomNameError(f"Room names are limited to {max_chars} characters.")
    if "/" in canonical:
        raise InvalidRoomNameError("Room names cannot contain '/'.")
    for i in range(len(canonical)):
        if (reason := _refusal(canonical, i)) is not None:
            raise InvalidRoomNameError(reason)
    return canonical


def check_path_encoding(path: bytes, *, percent_encoded: bool = True) -> None:
    """Raise :class:`InvalidRoomNameError` if a URL path's bytes are not UTF-8 text.

    Servers decode ``%XX`` escapes that are not UTF-8 to U+FFFD (uvicorn, Django's test
    client) or keep them as ``%XX`` text (Django under WSGI), so the decoded path cannot
    tell ``%FF`` from ``%FE``; the raw bytes can.

    Args:
        path: ASGI's ``raw_path``, as sent (``percent_encoded``), or a WSGI
            ``PATH_INFO``'s bytes, already percent-decoded by the server.
        percent_encoded: whether ``%XX`` escapes are still to be decoded.
    """
    data = unquote_to_bytes(path) if percent_encoded else path
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRoomNameError(
            "The URL's %XX escapes are not UTF-8: percent-encode the room name's UTF-8 bytes."
        ) from None


#: Prefix of a user's own stream, stored and delivered like a room's: ``user/<user id>``.
#: Room names may not contain "/", so no client can name (or subscribe to) one.
USER_STREAM_PREFIX = "user/"


def is_user_room(room: str) -> bool:
    """Whether ``room`` names a user's own stream rather than a chat room."""
    return room.startswith(USER_STREAM_PREFIX)
