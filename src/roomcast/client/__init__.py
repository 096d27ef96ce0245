"""roomcast.client: an asyncio client of a roomcast server's ``/ws/`` endpoint.

One socket, many rooms (docs/protocol.md, "One socket, many rooms: `/ws/`")::

    from roomcast.client import connect, Message, Edit, Delete, Joined

    async with connect("ws://127.0.0.1:8000/ws/", token=TOKEN) as conn:
        lobby = await conn.subscribe("lobby")
        seq = await lobby.send("hello")          # the stored message's seq
        async for event in lobby:
            match event:
                case Joined(recovered=False):      # a gap too long to replay:
                    clear_screen()                 # start over from the catch-up
                case Message(seq=seq, user=user, text=text):
                    show(seq, user, text)
                case Edit(target=target, text=text):
                    replace(target, text)
                case Delete(target=target):
                    remove(target)

What it does for the program:

- **Reconnects** after a close whose code says to (1001, 1006, 1011, 1012, 1013,
  4500-4999: ``roomcast.protocol.should_reconnect``), with exponential backoff and
  jitter (0.25 s doubling to 10 s), and resubscribes every room with its ``last_seq``
  and the user channel with ``?since=``: nothing is lost or shown twice. When the server
  cannot replay the gap, the room's :class:`Joined` (or the user channel's
  :class:`Connected`) says ``recovered=False``.
- **Sends until stored**: ``await room.send(text)`` returns the seq once the server
  acknowledged it; a send waiting while the connection is down goes out after the
  reconnect, with the same ``client_id``, so the server stores it once. At most
  ``MAX_QUEUED_SENDS`` (100) sends per room wait; more raise :class:`QueueFullError`.
  The connection sends one at a time (the server reads a socket's next frame after it
  answered a post); ``busy`` and ``rate_limited`` answers are sent again after the
  server's ``retry_after``, 3 times at most.
- **Tokens**: ``token=`` is sent in the ``Authorization: Bearer`` header (never in the
  URL). ``get_token=`` (a function, or coroutine function, returning a token) is asked
  before the first connection, after 4501 (the token expired on a live socket: no
  failure) and after 4401 (refused: a failure); after ``MAX_TOKEN_FAILURES`` (5)
  failures in a row the connection ends with ClosedError 4401. Both given: ``token``
  first, ``get_token`` for the next ones. A fixed ``token`` and no ``get_token``: 4401
  and 4501 end the connection. Without either the client is a guest.
- **Ends loudly**: any other close code ends the connection with :class:`ClosedError`
  (``code``, ``reason``), raised by the iterators, waiting calls and
  :meth:`Connection.wait_closed`. A room whose subscription the server ends (4403 after
  its rights were taken away) raises :class:`UnsubscribedError` from its iterator; the
  other rooms continue.
- **Bounded**: each room's events, and the user channel's, wait for the program at most
  ``max_queued_events`` (1000) deep; then the oldest are dropped and the next read is a
  :class:`Lagged` event (treat it like ``recovered=False``). A room nobody reads never
  slows the others.

The first connection raises :class:`ConnectError` when the server cannot be reached or
refuses the handshake; later ones are retried until they succeed or the program closes
the connection.

Layer: client. Imports the standard library, ``websockets`` (``pip install
roomcast[client]``; the ``server`` extra has it too) and :mod:`roomcast.protocol`; never
Django, so it runs in any asyncio program.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from . import _events
from ._connection import (
    DEFAULT_MAX_FRAME_BYTES,
    GET_TOKEN_TIMEOUT_SECS,
    MAX_DELAY_SECS,
    MAX_QUEUED_EVENTS,
    MAX_TOKEN_FAILURES,
    MIN_DELAY_SECS,
    Connection,
    GetToken,
    Status,
    socket_url,
)
from ._errors import (
    ClientError,
    ClosedError,
    ConnectError,
    FrameTooLargeError,
    QueueFullError,
    RefusedError,
    UnsubscribedError,
    describe_close,
)
from ._events import *  # noqa: F403  (the events and HistoryPage: _events.__all__)
from ._room import HISTORY_PAGE_MAX, Room
from ._sends import MAX_QUEUED_SENDS

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "GET_TOKEN_TIMEOUT_SECS",
    "HISTORY_PAGE_MAX",
    "MAX_DELAY_SECS",
    "MAX_QUEUED_EVENTS",
    "MAX_QUEUED_SENDS",
    "MAX_TOKEN_FAILURES",
    "MIN_DELAY_SECS",
    "ClientError",
    "ClosedError",
    "ConnectError",
    "Connection",
    "FrameTooLargeError",
    "GetToken",
    "QueueFullError",
    "RefusedError",
    "Room",
    "Status",
    "UnsubscribedError",
    "connect",
    "describe_close",
    "socket_url",
]
__all__ += _events.__all__


class connect(Connection):
    """Connect to a roomcast server's ``/ws/`` endpoint.

    ``async with connect(url, ...) as conn:`` opens it and closes it at the end of the
    block; ``conn = await connect(url, ...)`` opens it, and ``await conn.close()``
    closes it. It is the :class:`Connection`, made at the call (in a running event loop)
    and opened by ``await`` or ``async with``; a connection whose opening fails is
    closed.

    Args:
        url: the endpoint, ``ws[s]://HOST/ws/`` (``http[s]://`` is turned into
            ``ws[s]://``). Its query must not set ``since``, ``auth`` or a token.
        token: a connection token (``roomcast token NAME``,
            ``roomcast.auth.issue_token``), sent in the ``Authorization`` header.
        get_token: a function (or coroutine function) returning a fresh token; see the
            module's documentation for when it is called. A plain function runs in the
            event loop: wrap blocking calls in ``asyncio.to_thread``.
        since: the last user-channel seq already seen (``conn.user_seq`` of an earlier
            connection, or the last :class:`UserMessage`'s seq): the catch-up is what
            came after it. Without it, the catch-up is the latest user messages (the
            server's ``HISTORY_COUNT``).
        headers: more headers for the handshake (a ``Cookie`` for a session, say).
        ssl: the TLS context for ``wss://`` (default: the system's trusted CAs).
        open_timeout: longest wait for each handshake, in seconds.
        max_frame_bytes: the server's ``MAX_FRAME_BYTES``: larger sends raise
            :class:`FrameTooLargeError` (None: no check).
        max_queued_events: the bound of each room's event queue, and the user channel's.
        min_delay, max_delay: the reconnect backoff's range, in seconds.
        get_token_timeout: longest wait for ``get_token()``, in seconds.
        on_status: called with a :class:`Status` at each change (connecting, open,
            reconnecting with the close code and delay, closed); must not block.

    Raises:
        ValueError, TypeError: bad arguments (at the call).
        ConnectError: the server cannot be reached or refused the handshake (when
            opened).
        ClosedError: the server closed the first socket with a code that says not to
            reconnect (4401 for a refused token and no ``get_token``, ...; when opened).
    """

    def __await__(self) -> Generator[Any, None, Connection]:
        return self._open_or_close().__await__()

    async def __aenter__(self) -> Connection:
        return await self._open_or_close()

    async def _open_or_close(self) -> Connection:
        try:
            return await self.open()
        except BaseException:
            await self.close()
            raise
