"""The exceptions of :mod:`roomcast.client`.

::

    ClientError
    ├── ConnectError          the first connection could not be opened
    ├── ClosedError           the connection ended for good (code, reason)
    ├── UnsubscribedError     the server ended (or refused) one room's subscription
    ├── RefusedError          the server answered a frame with an ``error`` frame
    ├── QueueFullError        MAX_QUEUED_SENDS sends of the room already wait
    └── FrameTooLargeError    the frame would be over the server's MAX_FRAME_BYTES

Wrong arguments (a room name the protocol refuses, an empty text, a negative seq) raise
:class:`ValueError` or :class:`TypeError` before anything is sent.
"""

from __future__ import annotations

__all__ = [
    "ClientError",
    "ClosedError",
    "ConnectError",
    "FrameTooLargeError",
    "QueueFullError",
    "RefusedError",
    "UnsubscribedError",
    "describe_close",
]

#: What each close code means, in words, for :func:`describe_close` (the same words as
#: roomcast.js's ``describeClose``).
_CLOSE_NAMES = {
    1000: "closed",
    1001: "server going away",
    1006: "connection failed or dropped",
    1009: "a message was over the server's size limit",
    1011: "server error",
    1012: "server restarting",
    1013: "fell behind",
    4000: "disconnected by the server",
    4400: "bad request",
    4401: "not authorized",
    4403: "not allowed in this room",
    4404: "not found",
    4429: "too many requests",
    4501: "token expired",
}


def describe_close(code: int, reason: str) -> str:
    """A close code and reason in words, e.g. ``"disconnected by the server: spam (4000)"``."""
    name = _CLOSE_NAMES.get(code, "closed")
    why = reason.rstrip(".")  # the server's reasons are sentences
    if why.startswith(name):  # "not allowed in this room any more"
        return f"{why} ({code})"
    return f"{name}: {why} ({code})" if why else f"{name} ({code})"


class ClientError(Exception):
    """Base class of the errors :mod:`roomcast.client` raises."""


class ConnectError(ClientError):
    """The first connection could not be opened: the server is unreachable, or answered
    the handshake with an HTTP error (``status``, else None). The cause is chained.

    Only the first connection raises this: once a connection was open, a lost one is
    retried with backoff.
    """

    def __init__(self, url: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"cannot connect to {url}: {detail}")
        self.url = url
        self.detail = detail
        self.status = status


class ClosedError(ClientError):
    """The connection ended and will not reconnect: ``code`` and ``reason`` say why.

    The server closed it with a code that says not to reconnect (4000, 4400, 4401, 4403,
    4429, 1000, ..., see ``roomcast.protocol.should_reconnect``), the token source kept
    failing, or the program closed it (1000, ``"closed by the client"``). Raised by
    sends and history requests that were waiting, by room and user-message iterators
    (after the events they hold), and by :meth:`Connection.wait_closed`.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(describe_close(code, reason))
        self.code = code
        self.reason = reason


class UnsubscribedError(ClientError):
    """The server ended the subscription to ``room`` (or refused it): ``code`` is the
    code a one-room socket would be closed with (4403 not allowed, 4400 bad room name,
    4000 disconnected), ``reason`` the server's words. The connection's other rooms
    continue."""

    def __init__(self, room: str, code: int, reason: str) -> None:
        super().__init__(f"{room!r}: {describe_close(code, reason)}")
        self.room = room
        self.code = code
        self.reason = reason


class RefusedError(ClientError):
    """The server answered a frame with an ``error`` frame: ``code`` (``forbidden``,
    ``not_found``, ``rate_limited``, ``busy``, ``too_many_subscriptions``, ...) and
    ``detail``. For a message, edit or delete nothing was stored; ``retry_after`` is the
    server's hint in seconds when it gave one (``rate_limited``)."""

    def __init__(
        self, code: str, detail: str, *, room: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail
        self.room = room
        self.retry_after = retry_after


class QueueFullError(ClientError):
    """``limit`` sends (messages, edits, deletes) of the room already wait for the
    server; nothing was queued. Await some of them first."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} messages are already waiting for the server")
        self.limit = limit


class FrameTooLargeError(ClientError):
    """The frame would be ``size`` bytes of UTF-8, over the server's limit ``limit``
    (``MAX_FRAME_BYTES``): never sent, since the server would close the connection
    with 1009."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message too long: {size} bytes as a frame, the limit is {limit}")
        self.size = size
        self.limit = limit
