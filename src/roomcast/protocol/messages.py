"""Typed shapes of the frames on the wire.

Client frames are what :func:`roomcast.protocol.codec.parse_frame` returns (always with
a ``type``, even for the seed's bare ``{"message": ...}``). Server events are what the
builders in ``codec`` return before :func:`~roomcast.protocol.codec.encode`.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

# -- client to server -------------------------------------------------------------------


class SendMessageFrame(TypedDict):
    """Post a chat message. The seed's ``{"message": TEXT}`` parses to this."""

    type: Literal["message"]
    message: str
    client_id: str | None
    room: NotRequired[str]  # /ws/: the room it is for (required there)


class HistoryFrame(TypedDict):
    """Ask for a page of older messages: those with ``seq < before`` (latest if None)."""

    type: Literal["history"]
    before: int | None
    limit: int
    room: NotRequired[str]


class PingFrame(TypedDict):
    """Application-level liveness check; answered with ``pong``."""

    type: Literal["ping"]


class AuthFrame(TypedDict):
    """The first frame of a socket opened with ``?auth=1``: who the client is."""

    type: Literal["auth"]
    token: str


class SubscribeFrame(TypedDict):
    """/ws/: join a room (catch-up after ``since`` when given)."""

    type: Literal["subscribe"]
    room: str
    since: int | None


class RoomFrame(TypedDict):
    """/ws/: ``unsubscribe``, ``typing``, ``presence``: a type and a room."""

    type: Literal["unsubscribe", "typing", "presence"]
    room: str


class EditFrame(TypedDict):
    """Edit (``message`` set) or delete (``message`` None) message ``seq`` of the room."""

    type: Literal["edit", "delete"]
    seq: int
    message: str | None
    client_id: str | None
    room: NotRequired[str]


class ReadFrame(TypedDict):
    """/ws/: the user has read the room up to ``seq``."""

    type: Literal["read"]
    room: str
    seq: int


ClientFrame = (
    SendMessageFrame
    | HistoryFrame
    | PingFrame
    | AuthFrame
    | SubscribeFrame
    | RoomFrame
    | EditFrame
    | ReadFrame
)

# -- server to client -------------------------------------------------------------------

MessageKind = Literal["chat", "system"]


class MessageEvent(TypedDict):
    """A message of the room's stream. ``message`` holds the text, as in the seed."""

    type: Literal["message"]
    room: str
    message: str
    kind: MessageKind
    user: str | None
    ts: str
    seq: NotRequired[int]  # absent on ephemeral (unstored) messages
    client_id: NotRequired[str]


class JoinedEvent(TypedDict):
    """First frame after accept (protocol v1): where the room's stream stands."""

    type: Literal["joined"]
    room: str
    seq: int
    recovered: NotRequired[bool]  # only when the client asked to recover with since=


class AckEvent(TypedDict):
    """The sender's message is stored with ``seq``."""

    type: Literal["ack"]
    client_id: str | None
    seq: int
    room: NotRequired[str]  # /ws/


class ErrorEvent(TypedDict):
    """A frame was refused; the connection stays open."""

    type: Literal["error"]
    code: str
    detail: str
    client_id: NotRequired[str]  # the refused message's, when it had one
    message: NotRequired[str]  # the detail again, for seed-dialect clients
    room: NotRequired[str]  # /ws/: the room of the refused frame


class PongEvent(TypedDict):
    """Answer to ``ping``."""

    type: Literal["pong"]


ServerEvent = MessageEvent | JoinedEvent | AckEvent | ErrorEvent | PongEvent
