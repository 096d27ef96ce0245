"""Errors raised while reading what a client sent.

Each carries a stable ``code`` (sent to the client in an ``error`` event), a
human ``detail``, and ``close_code``: ``None`` when the connection stays open
(the client gets an error event), else the code the server closes with.
"""

from __future__ import annotations

from .close_codes import CloseCode


class ProtocolError(Exception):
    """A client frame that roomcast cannot accept."""

    code: str = "invalid_frame"
    default_detail: str = "The frame is not a valid roomcast client frame."
    close_code: CloseCode | None = None

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or self.default_detail
        super().__init__(self.detail)


class InvalidFrameError(ProtocolError):
    """Valid JSON, but not a frame of the protocol (not an object, missing or mistyped field)."""


class InvalidJSONError(InvalidFrameError):
    """The text frame is not JSON."""

    code = "invalid_json"
    default_detail = "The frame is not valid JSON."


class UnknownTypeError(InvalidFrameError):
    """The frame's ``type`` names nothing the server handles."""

    code = "unknown_type"


class UnsupportedDataError(ProtocolError):
    """A binary frame: the protocol is JSON text frames only."""

    code = "unsupported_data"
    default_detail = "Binary frames are not supported; send JSON text frames."


class FrameTooLargeError(ProtocolError):
    """A frame over the size limit: the connection is closed with 1009."""

    code = "frame_too_large"
    default_detail = "The frame is larger than the server accepts."
    close_code = CloseCode.MESSAGE_TOO_BIG


class BadRequestError(ProtocolError):
    """The connection URL is wrong: the connection is closed with 4400 (do not reconnect)."""

    code = "bad_request"
    default_detail = "The connection request is not valid."
    close_code = CloseCode.BAD_REQUEST


class InvalidRoomNameError(BadRequestError):
    """The room name cannot name a room (empty, too long, '/', invisible characters, not
    UTF-8): see :func:`roomcast.protocol.validate_room_name`."""

    code = "invalid_room"
    default_detail = "The room name is not valid."


class InvalidSinceError(BadRequestError):
    """``since`` in the query string is not a non-negative integer."""

    code = "invalid_since"
    default_detail = "since= must be a non-negative integer (the last seq the client saw)."


class InvalidQueryError(BadRequestError):
    """A query-string parameter (``before``, ``limit`` of the HTTP API) is not valid."""

    code = "invalid_query"
    default_detail = "A query-string parameter is not valid."


class TokenInURLError(BadRequestError):
    """A token in the URL's query string (``?token=``): refused, because URLs end up in
    proxy and server logs. Tokens go in the ``Authorization`` header or the auth frame."""

    code = "token_in_url"
    default_detail = "tokens go in the Authorization header or the first frame (auth), not the URL"


class NotFoundError(ProtocolError):
    """No WebSocket endpoint at this path: denied with HTTP 404 where the server can
    send one, else closed with 4404 (do not reconnect)."""

    code = "not_found"
    default_detail = "No WebSocket endpoint at this path."
    close_code = CloseCode.NOT_FOUND
