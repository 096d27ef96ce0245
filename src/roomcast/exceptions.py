"""Exceptions roomcast raises.

::

    RoomcastError                       anything roomcast raises on purpose
    ├── PushError                       a push could not be published in time
    ├── SynchronousCallError            a sync API was called from async code
    ├── PermissionDeniedError           the user may not do this in this room (code, detail)
    ├── MessageNotFoundError            no such message to edit or delete (not_found)
    └── presence.PresenceUnavailableError  Redis does not answer and this process has no
                                        view of the room

    protocol.ProtocolError              a client frame or URL the server refuses (code,
    ├── InvalidFrameError               detail, close_code); defined in the pure
    │   ├── InvalidJSONError            protocol package, re-exported here
    │   └── UnknownTypeError
    ├── UnsupportedDataError
    ├── FrameTooLargeError              closes with 1009
    ├── limits.TooManySocketsError      closes with 4429 (sockets per user or address)
    └── BadRequestError                 closes with 4400
        ├── InvalidRoomNameError
        └── InvalidSinceError
"""

from __future__ import annotations

from .protocol.errors import (
    BadRequestError,
    FrameTooLargeError,
    InvalidFrameError,
    InvalidJSONError,
    InvalidRoomNameError,
    InvalidSinceError,
    ProtocolError,
    UnknownTypeError,
    UnsupportedDataError,
)

__all__ = [
    "BadRequestError",
    "FrameTooLargeError",
    "InvalidFrameError",
    "InvalidJSONError",
    "InvalidRoomNameError",
    "InvalidSinceError",
    "MessageNotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "PushError",
    "RefusedError",
    "RoomcastError",
    "StoreBusyError",
    "SynchronousCallError",
    "UnknownTypeError",
    "UnsupportedDataError",
]


class RoomcastError(Exception):
    """Base class of roomcast's own errors."""


class PushError(RoomcastError):
    """A message could not be handed to the channel layer in time."""


class SynchronousCallError(RoomcastError, RuntimeError):
    """A synchronous roomcast function was called from a thread running an event loop."""


class RefusedError(RoomcastError):
    """A client's request was refused; sent to the client as an error event with ``code``."""

    code = "refused"

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class PermissionDeniedError(RefusedError):
    """The user may not do this in this room."""

    code = "forbidden"


class StoreBusyError(RefusedError):
    """Too many messages are waiting to be stored (``STORE_QUEUE_LIMIT``), or the room has
    been locked by another transaction too long (``STORE_LOCKED_GIVE_UP_SECS``)."""

    code = "busy"


class MessageNotFoundError(RefusedError):
    """No message with that seq in that room to edit or delete (none, an event, or a
    message deleted already)."""

    code = "not_found"
