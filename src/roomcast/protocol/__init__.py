"""The wire protocol, sans I/O: parse client frames, build server frames.

Layer: protocol (pure). Imports the standard library only: no Django, no Channels,
no asyncio. Everything here is a plain function of its arguments, so it is tested
without a server (``tests/protocol/``). The contract it implements is
``docs/protocol.md``.
"""

from __future__ import annotations

from .close_codes import CloseCode, should_reconnect
from .codec import (
    PROTOCOL_V1,
    ConnectQuery,
    encode,
    parse_connect_query,
    parse_frame,
    parse_since,
    validate_room_name,
)
from .errors import (
    BadRequestError,
    FrameTooLargeError,
    InvalidFrameError,
    InvalidJSONError,
    InvalidQueryError,
    InvalidRoomNameError,
    InvalidSinceError,
    NotFoundError,
    ProtocolError,
    TokenInURLError,
    UnknownTypeError,
    UnsupportedDataError,
)

__all__ = [
    "PROTOCOL_V1",
    "BadRequestError",
    "CloseCode",
    "ConnectQuery",
    "FrameTooLargeError",
    "InvalidFrameError",
    "InvalidJSONError",
    "InvalidQueryError",
    "InvalidRoomNameError",
    "InvalidSinceError",
    "NotFoundError",
    "ProtocolError",
    "TokenInURLError",
    "UnknownTypeError",
    "UnsupportedDataError",
    "encode",
    "parse_connect_query",
    "parse_frame",
    "parse_since",
    "should_reconnect",
    "validate_room_name",
]
