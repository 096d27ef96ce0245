"""WebSocket close codes roomcast uses, each named and each saying whether to reconnect.

RFC 6455 section 7.4.1 defines 1000-1015; 4000-4999 are for applications. roomcast
splits its own range the way a client needs it: 4000-4499 mean "do not reconnect,
something must change first", 4500-4999 mean "reconnect (with ``since``)".
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    """Close codes sent by the server. ``docs/protocol.md`` has the table."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001  # server shutting down: reconnect, maybe to another process
    UNSUPPORTED_DATA = 1003
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009  # a frame above MAX_FRAME_BYTES
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013  # this socket fell too far behind: reconnect with since=
    DISCONNECTED = 4000  # disconnected by the server (push.disconnect): do not reconnect
    BAD_REQUEST = 4400  # the URL is wrong (room name, since=): fix it before reconnecting
    UNAUTHORIZED = 4401  # the token is forged, expired or names an inactive user
    FORBIDDEN = 4403  # not allowed in this room (any more): do not reconnect
    TOO_MANY = 4429  # kept flooding after rate_limited, or too many sockets: do not reconnect
    TOKEN_EXPIRED = 4501  # the socket's token expired: reconnect with a fresh token
    NOT_FOUND = 4404  # no WebSocket endpoint at this path (server without HTTP denial)


_RECONNECT = frozenset(
    {
        CloseCode.GOING_AWAY,
        CloseCode.INTERNAL_ERROR,
        CloseCode.SERVICE_RESTART,
        CloseCode.TRY_AGAIN_LATER,
    }
)


def should_reconnect(code: int) -> bool:
    """Whether a client that saw close ``code`` should reconnect (and recover with ``since``).

    Unknown codes in 4500-4999 mean reconnect, 4000-4499 mean do not; abnormal closures
    without a close frame (1005, 1006) mean reconnect: the network, not the server, chose.
    """
    if code in _RECONNECT or code in (1005, 1006):
        return True
    return 4500 <= code <= 4999
