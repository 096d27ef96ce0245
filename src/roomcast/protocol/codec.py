"""Parse client frames and build server frames. Pure functions, standard library only.

Forbidden imports: Django, Channels, asyncio, anything that does I/O.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple
from urllib.parse import parse_qs

from .errors import (
    FrameTooLargeError,
    InvalidFrameError,
    InvalidJSONError,
    InvalidQueryError,
    InvalidSinceError,
    ProtocolError,
    TokenInURLError,
    UnknownTypeError,
    UnsupportedDataError,
)
from .messages import (
    AckEvent,
    AuthFrame,
    ClientFrame,
    EditFrame,
    ErrorEvent,
    HistoryFrame,
    JoinedEvent,
    MessageEvent,
    MessageKind,
    PingFrame,
    PongEvent,
    ReadFrame,
    RoomFrame,
    SendMessageFrame,
    ServerEvent,
    SubscribeFrame,
)
from .room_names import check_path_encoding, validate_room_name

__all__ = [
    "CLIENT_ID_MAX_CHARS",
    "CLOSE_REASON_MAX_BYTES",
    "HISTORY_PAGE_DEFAULT",
    "HISTORY_PAGE_MAX",
    "PROTOCOL_V1",
    "SEQ_MAX",
    "ConnectQuery",
    "check_path_encoding",
    "check_text",
    "close_reason",
    "decode_json",
    "encode",
    "parse_connect_query",
    "parse_frame",
    "parse_query_int",
    "parse_since",
    "validate_room_name",
]

#: The WebSocket subprotocol a v1 client offers. Without it the connection speaks the
#: seed's dialect: the server sends only frames that carry ``"message"``.
PROTOCOL_V1 = "roomcast.v1"

#: Longest ``client_id`` accepted: enough for a UUID or a ULID with a prefix.
CLIENT_ID_MAX_CHARS = 64

#: Largest page a ``history`` request may ask for; bigger asks are clamped, not refused.
HISTORY_PAGE_MAX = 100

#: Page size of a history request that names none.
HISTORY_PAGE_DEFAULT = 50

#: Largest seq (or id) a client may name: the database columns are signed 64-bit, and a
#: larger number would reach SQL as a value the driver cannot bind.
SEQ_MAX = 2**63 - 1

# A decimal number of up to 18 digits is always under SEQ_MAX (19 digits may not be).
_INT_DIGITS_MAX = 18

#: RFC 6455 section 5.5: a control frame's payload is at most 125 bytes, the close code
#: takes 2 of them. websockets (under uvicorn) raises on a longer reason.
CLOSE_REASON_MAX_BYTES = 123


def parse_frame(text: str | None, data: bytes | None = None, *, max_bytes: int) -> ClientFrame:
    """Parse one client WebSocket frame.

    Args:
        text: the text frame's content, or None for a binary frame.
        data: the binary frame's content, if any.
        max_bytes: largest accepted frame, in UTF-8 bytes.

    Returns:
        The frame, normalised: it always has a ``type``.

    Raises:
        FrameTooLargeError: over ``max_bytes`` (close the connection with 1009).
        UnsupportedDataError: a binary frame.
        InvalidJSONError, InvalidFrameError, UnknownTypeError: send an error event.
    """
    if text is None:
        if data is not None and len(data) > max_bytes:
            raise FrameTooLargeError(f"Frames are limited to {max_bytes} bytes.")
        raise UnsupportedDataError()
    # len(text) <= UTF-8 length <= 4 * len(text): encode only when the bound is unclear.
    if len(text) > max_bytes or (
        len(text) * 4 > max_bytes and len(text.encode("utf-8", "surrogatepass")) > max_bytes
    ):
        raise FrameTooLargeError(f"Frames are limited to {max_bytes} bytes.")
    obj = decode_json(text)
    if not isinstance(obj, dict):
        raise InvalidFrameError('A frame must be a JSON object, like {"message": "hi"}.')
    kind = obj.get("type", "message")
    if kind == "message":
        return _parse_message(obj)
    if kind == "history":
        return _parse_history(obj)
    if kind == "ping":
        return PingFrame(type="ping")
    if kind == "auth":
        return _parse_auth(obj)
    if not isinstance(kind, str):
        raise InvalidFrameError('"type" must be a string.')
    parse = _PARSERS.get(kind)
    if parse is None:
        raise UnknownTypeError(
            f"Unknown frame type {kind[:40]!r}; expected one of: {', '.join(FRAME_TYPES)}."
        )
    return parse(obj)


#: Every client frame type, for error details.
FRAME_TYPES = (
    "message", "history", "ping", "auth", "subscribe", "unsubscribe", "typing", "presence",
    "edit", "delete", "read",
)  # fmt: skip


def _with_room(frame: Any, obj: dict[str, Any], *, required: bool) -> None:
    """Copy ``obj["room"]`` into ``frame`` (a string, unvalidated: the transport checks
    the name with its settings); required on the frames that exist only on /ws/."""
    room = obj.get("room")
    if room is None:
        if required:
            raise InvalidFrameError(f'A {frame["type"]} frame needs a "room" key naming the room.')
        return
    if not isinstance(room, str):
        raise InvalidFrameError(f'"room" must be a string, not {_json_type(room)}.')
    frame["room"] = room


def _seq_field(obj: dict[str, Any], key: str, *, minimum: int) -> int:
    value = obj.get(key)
    if not (isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= SEQ_MAX):
        what = "a positive integer (a seq)" if minimum else "a non-negative integer (a seq)"
        raise InvalidFrameError(f'"{key}" must be {what}, not {_json_type(value)}.')
    return value


def _parse_subscribe(obj: dict[str, Any]) -> SubscribeFrame:
    since = None if obj.get("since") is None else _seq_field(obj, "since", minimum=0)
    frame = SubscribeFrame(type="subscribe", room="", since=since)
    _with_room(frame, obj, required=True)
    return frame


def _parse_room_only(obj: dict[str, Any]) -> RoomFrame:
    frame = RoomFrame(type=obj["type"], room="")
    _with_room(frame, obj, required=True)
    return frame


def _parse_edit(obj: dict[str, Any]) -> EditFrame:
    seq = _seq_field(obj, "seq", minimum=1)
    text: str | None = None
    if obj["type"] == "edit":
        text = _parse_message(obj)["message"]
    client_id = _client_id(obj)
    frame = EditFrame(type=obj["type"], seq=seq, message=text, client_id=client_id)
    _with_room(frame, obj, required=False)
    return frame


def _parse_read(obj: dict[str, Any]) -> ReadFrame:
    seq = _seq_field(obj, "seq", minimum=0)
    frame = ReadFrame(type="read", room="", seq=seq)
    _with_room(frame, obj, required=True)
    return frame


_PARSERS: dict[str, Callable[[dict[str, Any]], ClientFrame]] = {
    "subscribe": _parse_subscribe,
    "unsubscribe": _parse_room_only,
    "typing": _parse_room_only,
    "presence": _parse_room_only,
    "edit": _parse_edit,
    "delete": _parse_edit,
    "read": _parse_read,
}


def decode_json(text: str, *, what: str = "frame") -> Any:
    """Decode JSON text from a client, or raise :class:`InvalidJSONError` saying why.

    Every way decoding can fail is a client error: ``ValueError`` (syntax, a number of
    over 4300 digits) and ``RecursionError`` (arrays or objects nested deeper than the
    interpreter's recursion limit, about 1000 levels: ``"[" * 2000`` is 2 KB). The
    ``what`` names the text in the detail ("frame", "body").
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidJSONError(
            f"The {what} is not valid JSON: arrays or objects are nested too deeply."
        ) from None
    except ValueError as exc:
        raise InvalidJSONError(f"The {what} is not valid JSON: {exc}.") from None


def _parse_message(obj: dict[str, Any]) -> SendMessageFrame:
    if "message" not in obj:
        raise InvalidFrameError('A message frame needs a "message" key holding the text.')
    message = obj["message"]
    if not isinstance(message, str):
        raise InvalidFrameError(f'"message" must be a string, not {_json_type(message)}.')
    check_text(message, "message")
    if not message.strip():
        raise InvalidFrameError('"message" must not be empty.')
    frame = SendMessageFrame(type="message", message=message, client_id=_client_id(obj))
    _with_room(frame, obj, required=False)
    return frame


def _client_id(obj: dict[str, Any]) -> str | None:
    client_id = obj.get("client_id")
    if client_id is not None:
        if not isinstance(client_id, str) or not 0 < len(client_id) <= CLIENT_ID_MAX_CHARS:
            raise InvalidFrameError(
                f'"client_id" must be a string of 1 to {CLIENT_ID_MAX_CHARS} characters.'
            )
        check_text(client_id, "client_id")
    return client_id


def _parse_history(obj: dict[str, Any]) -> HistoryFrame:
    before = obj.get("before")
    if before is not None and not (_is_int(before, minimum=1) and before <= SEQ_MAX):
        raise InvalidFrameError('"before" must be a positive integer (a seq) or absent.')
    limit = obj.get("limit", HISTORY_PAGE_DEFAULT)
    if not _is_int(limit, minimum=1):
        raise InvalidFrameError('"limit" must be a positive integer.')
    frame = HistoryFrame(type="history", before=before, limit=min(limit, HISTORY_PAGE_MAX))
    _with_room(frame, obj, required=False)
    return frame


def _parse_auth(obj: dict[str, Any]) -> AuthFrame:
    token = obj.get("token")
    if not isinstance(token, str) or not token:
        raise InvalidFrameError(f'"token" must be a non-empty string, not {_json_type(token)}.')
    return AuthFrame(type="auth", token=token)


def check_text(value: str, field: str) -> None:
    """Raise :class:`InvalidFrameError` if ``value`` cannot be stored and sent as text."""
    # A lone surrogate ("\ud800" is valid JSON) cannot be encoded as UTF-8: stored, it
    # would break every later send of the frame; NUL cannot be stored by PostgreSQL.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidFrameError(f'"{field}" contains a lone surrogate (invalid Unicode).') from None
    if "\x00" in value:
        raise InvalidFrameError(f'"{field}" must not contain NUL characters.')


def _is_int(value: object, *, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _json_type(value: object) -> str:
    names = {
        dict: "an object",
        list: "an array",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def parse_since(query_string: bytes | str) -> int | None:
    """Read ``since=N`` (the last seq the client saw) from a query string; None if absent."""
    if isinstance(query_string, bytes):
        query_string = query_string.decode("latin-1")
    values = parse_qs(query_string, keep_blank_values=True).get("since")
    if not values:
        return None
    return parse_query_int(values[-1], name="since", minimum=0, error=InvalidSinceError)


#: Query parameters that would carry a token in the URL: refused (TokenInURLError).
TOKEN_QUERY_PARAMETERS = ("token", "access_token")


class ConnectQuery(NamedTuple):
    """What a room socket's query string says."""

    since: int | None  # the last seq the client saw (recover after it), or None
    auth: bool  # ?auth=1: the client sends its token in the first frame


def parse_connect_query(query_string: bytes | str) -> ConnectQuery:
    """Read a room socket's query string: ``since=N`` and ``auth=1``.

    Raises:
        TokenInURLError: a ``token=`` (or ``access_token=``) parameter.
        InvalidSinceError: ``since`` is not a non-negative integer.
        InvalidQueryError: ``auth`` is neither 1 nor 0.
    """
    if isinstance(query_string, bytes):
        query_string = query_string.decode("latin-1")
    params = parse_qs(query_string, keep_blank_values=True)
    if any(name in params for name in TOKEN_QUERY_PARAMETERS):
        raise TokenInURLError()
    auth = params.get("auth", ["0"])[-1]
    if auth not in ("0", "1"):
        raise InvalidQueryError(
            f"auth={auth[:20]!r}: use auth=1 to send the token in the first frame."
        )
    return ConnectQuery(since=parse_since(query_string), auth=auth == "1")


def parse_query_int(
    raw: str,
    *,
    name: str,
    minimum: int,
    error: type[ProtocolError] = InvalidQueryError,
) -> int:
    """Read an integer parameter of a URL's query string, strictly.

    Only ASCII digits, at most 18 of them (so the value fits the database's 64-bit
    columns): Python's ``int()`` would also take ``" 5"``, ``"1_0"``, ``"+3"`` and
    Arabic-Indic digits, and numbers of thousands of digits.

    Raises:
        ``error`` (default :class:`InvalidQueryError`), naming the parameter.
    """
    if raw.isascii() and raw.isdigit():
        if len(raw) > _INT_DIGITS_MAX:
            raise error(f"{name} has more than {_INT_DIGITS_MAX} digits.")
        if int(raw) >= minimum:
            return int(raw)
    if minimum == 0:
        raise error(f"{name}={raw[:20]!r} is not a non-negative integer.")
    raise error(f"{name}={raw[:20]!r} is not an integer of at least {minimum}.")


def close_reason(text: str) -> str:
    """``text`` cut to fit a WebSocket close frame (:data:`CLOSE_REASON_MAX_BYTES` of
    UTF-8), at a character boundary."""
    data = text.encode("utf-8", "replace")[:CLOSE_REASON_MAX_BYTES]
    return data.decode("utf-8", "ignore")


# -- server events ----------------------------------------------------------------------


def encode(event: ServerEvent | dict[str, Any]) -> str:
    """Serialise a server event to the text of one WebSocket frame (compact, UTF-8 safe)."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def message_event(
    *,
    room: str,
    text: str,
    kind: MessageKind,
    user: str | None,
    ts: str,
    seq: int | None = None,
    client_id: str | None = None,
) -> MessageEvent:
    """A message of the room; ``seq`` None makes it ephemeral (not part of the stream)."""
    event = MessageEvent(type="message", room=room, message=text, kind=kind, user=user, ts=ts)
    if seq is not None:
        event["seq"] = seq
    if client_id:
        event["client_id"] = client_id
    return event


def joined_event(*, room: str, seq: int, recovered: bool | None = None) -> JoinedEvent:
    """Sent once after accept: ``seq`` is the last seq the client is being given."""
    event = JoinedEvent(type="joined", room=room, seq=seq)
    if recovered is not None:
        event["recovered"] = recovered
    return event


def ack_event(*, client_id: str | None, seq: int, room: str | None = None) -> AckEvent:
    """Tell the sender its message was stored as ``seq`` (``room`` on /ws/)."""
    event = AckEvent(type="ack", client_id=client_id, seq=seq)
    if room is not None:
        event["room"] = room
    return event


def error_event(
    *,
    code: str,
    detail: str,
    seed: bool = False,
    client_id: str | None = None,
    room: str | None = None,
) -> ErrorEvent:
    """A refused frame; the connection stays open.

    ``client_id``: that of the refused message frame, so the client knows which to send
    again.

    ``seed``: the client speaks the seed's dialect, which shows ``data["message"]`` of
    every frame; the detail goes there too, so its user reads the error, not "undefined".
    """
    event = ErrorEvent(type="error", code=code, detail=detail)
    if room is not None:
        event["room"] = room
    if client_id:
        event["client_id"] = client_id
    if seed:
        event["message"] = detail
    return event


def unsubscribed_event(*, room: str, code: int, reason: str) -> dict[str, Any]:
    """/ws/: the subscription to ``room`` ended (or was refused) with ``code``."""
    return {"type": "unsubscribed", "room": room, "code": int(code), "reason": close_reason(reason)}


def typing_event(*, room: str, user: str) -> dict[str, Any]:
    """/ws/: ``user`` is typing in ``room``."""
    return {"type": "typing", "room": room, "user": user}


def connected_event(
    *, user: str, user_seq: int | None = None, recovered: bool | None = None
) -> dict[str, Any]:
    """/ws/: the first frame: who the connection is and where its user channel stands."""
    event: dict[str, Any] = {"type": "connected", "user": user}
    if user_seq is not None:
        event["user_seq"] = user_seq
    if recovered is not None:
        event["recovered"] = recovered
    return event


#: Frames that only v1 clients get (seed-dialect clients show every frame's "message" as
#: a new line): the stream events that change an earlier message. Every frame is built
#: from a dict whose first key is "type" and encoded without spaces, so its text starts
#: with one of these.
_V1_ONLY_PREFIXES = ('{"type":"edit"', '{"type":"delete"')


def is_v1_only(frame: str) -> bool:
    """Whether an encoded stream frame is one seed-dialect clients never get."""
    return frame.startswith(_V1_ONLY_PREFIXES)


def pong_event() -> PongEvent:
    """Answer to a ``ping`` frame."""
    return PongEvent(type="pong")


def history_frame(*, room: str, frames: Iterable[str], has_more: bool) -> str:
    """Encode a ``history`` reply around already-encoded message frames.

    Message frames are encoded once, when published or read back; this splices their
    text into the reply instead of decoding and encoding them again.
    """
    return (
        '{"type":"history","room":'
        + json.dumps(room, ensure_ascii=False)
        + ',"messages":['
        + ",".join(frames)
        + '],"has_more":'
        + ("true" if has_more else "false")
        + "}"
    )
