"""Log lines about WebSockets: one access line per session, and who and where on every
record logged while serving one.

Layer: transport helper (the consumers call it); imports the standard library only.

* :class:`Session`: made when a consumer starts serving its socket, ended when it stops.
  Its end logs one line on ``roomcast.access`` at INFO: the path, the room (a room
  socket) or the rooms subscribed at the end (``/ws/``), the user, the client's address,
  the close code (the client's, or the one the server sent), the duration and the number
  of frames the client sent. At INFO because it is an access line: ``roomcast serve``
  shows that logger only with ``--access-log`` (docs/cli.md, "Logs"); in a project, its
  ``LOGGING`` decides.
* :class:`SocketFields`: a filter for handlers that gives each record logged while a
  socket is served (in its task, or in a task it started) the ``room``/``rooms``,
  ``user`` and ``client`` of that socket, unless the record names them itself, so that
  an error says whose frame failed. A context variable carries the session; records from
  other threads or tasks get nothing.

Frames the server sends are not counted: room frames are written to the sockets
straight from the hub (``roomcast.direct``), where even a counter is paid per member and
message.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar, Token
from typing import Any

__all__ = ["Session", "SocketFields", "access_logger"]

access_logger = logging.getLogger("roomcast.access")

#: The session of the socket the current task serves.
_session: ContextVar[Session | None] = ContextVar("roomcast_socket_session", default=None)
#: Close code when the server saw the socket go without one (connection lost).
NO_CODE = 1006


def _client(scope: dict[str, Any]) -> str | None:
    client = scope.get("client")
    if isinstance(client, list | tuple) and len(client) == 2:
        return f"{client[0]}:{client[1]}"
    return None


class Session:
    """One served WebSocket, for its log lines. Made at the start of the consumer's
    ``run()``; after it, you must call :meth:`end` (in a ``finally``), before the
    consumer forgets its rooms."""

    __slots__ = ("code", "consumer", "frames_in", "started", "token")

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.started = time.monotonic()
        self.frames_in = 0
        self.code = NO_CODE
        self.token: Token[Session | None] | None = _session.set(self)

    def fields(self) -> dict[str, Any]:
        """``room`` or ``rooms``, ``user``, ``client``, ``path`` as known now (nothing
        once the session ended)."""
        consumer = self.consumer
        if consumer is None:
            return {}
        scope = consumer.scope
        out: dict[str, Any] = {"path": scope.get("path"), "client": _client(scope)}
        connection = getattr(consumer, "connection", None)
        room = getattr(consumer, "room", None)
        if room:
            out["room"] = room
        elif connection is not None and connection.subs:
            out["rooms"] = sorted(connection.subs)
        identity = getattr(connection, "identity", None)
        if identity is not None:
            out["user"] = identity.name
        return out

    def end(self) -> None:
        """Log the access line (if ``roomcast.access`` shows INFO); forget the session."""
        if self.token is not None:
            try:
                _session.reset(self.token)
            except ValueError:  # ended in another context than it started in
                _session.set(None)
            self.token = None
        # Timers and tasks started while the socket was served copied the context that
        # holds this session, and may outlive the socket (a room's receiver lives as long
        # as the room): they must not keep the consumer alive, nor tag records with it.
        enabled = access_logger.isEnabledFor(logging.INFO)
        fields = self.fields() if enabled else {}
        self.consumer = None
        if not enabled:
            return
        duration = time.monotonic() - self.started
        access_logger.info(
            '%s - "WebSocket %s" closed %d after %.3f s, %d frames in',
            fields.get("client") or "-",
            fields.get("path") or "-",
            self.code,
            duration,
            self.frames_in,
            extra={
                **fields,
                "code": self.code,
                "duration_ms": round(duration * 1000),
                "frames_in": self.frames_in,
            },
        )


class SocketFields(logging.Filter):
    """On a handler: ``room``/``rooms``, ``user`` and ``client`` of the socket being
    served, on records that do not carry them already."""

    def filter(self, record: logging.LogRecord) -> bool:
        session = _session.get()
        if session is not None and record.name != access_logger.name:
            try:
                fields = session.fields()
            except Exception:  # never let a log line fail on the way
                return True
            fields.pop("path", None)
            for key, value in fields.items():
                if value is not None and not hasattr(record, key):
                    setattr(record, key, value)
        return True
