"""The connection of :mod:`roomcast.client`: one ``/ws/`` socket at a time, reopened
after every close that says to reconnect, its rooms resubscribed with their ``since``.

Layer: client. The standard library, ``websockets`` and :mod:`roomcast.protocol` (pure).
Never Django.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import random
import sys
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any, Literal

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.typing import Subprotocol

from roomcast.protocol import PROTOCOL_V1, CloseCode, ProtocolError, should_reconnect
from roomcast.protocol.codec import validate_room_name

from ._errors import (
    ClientError,
    ClosedError,
    ConnectError,
    RefusedError,
)
from ._events import Connected, UserEvent, UserMessage, retry_after, user_event
from ._queue import EventQueue, make_lagged
from ._requests import Requests
from ._room import SUBSCRIBE_ERRORS, Room
from ._sends import Outbox, fail

__all__ = ["Connection", "Status"]

logger = logging.getLogger("roomcast.client")

#: Events waiting for the program, per room and for the user channel (see EventQueue).
MAX_QUEUED_EVENTS = 1000
#: The server's default MAX_FRAME_BYTES: a send whose frame is larger is refused here
#: (the server would close the connection with 1009). Pass the server's own setting.
DEFAULT_MAX_FRAME_BYTES = 16 * 1024
#: Largest frame accepted from the server: a history page holds at most 100 messages of
#: up to MAX_FRAME_BYTES (16 KiB by default) each, about 1.7 MB of JSON; 16 MiB leaves
#: room for servers configured with larger frames.
MAX_SERVER_FRAME_BYTES = 16 * 1024 * 1024
#: Reconnect backoff: the ceiling doubles from MIN to MAX (seconds) with each attempt in
#: a row; each delay is drawn between half the ceiling and the ceiling (jitter, so that a
#: restarted server is not hit by every client at once). As roomcast.js.
MIN_DELAY_SECS = 0.25
MAX_DELAY_SECS = 10.0
#: Token failures in a row (get_token() raised, timed out or gave no token, or the server
#: refused what it gave) before the connection gives up with 4401. As roomcast.js.
MAX_TOKEN_FAILURES = 5
#: Longest wait for get_token(), in seconds; past it the attempt counts as failed.
GET_TOKEN_TIMEOUT_SECS = 15.0
#: Longest wait for the server's close frame when the program closes the connection.
CLOSE_TIMEOUT_SECS = 5.0
#: Room names are checked here for everything but their length (the server's
#: ROOM_NAME_MAX_CHARS setting), which the server answers with 4400.
_ANY_LENGTH = sys.maxsize
#: Query parameters this client sets itself, or that the server refuses in the URL.
_RESERVED_QUERY = frozenset({"since", "auth", "token", "access_token"})

State = Literal["connecting", "open", "reconnecting", "closed"]
GetToken = Callable[[], str | Awaitable[str]]


@dataclass(frozen=True, kw_only=True, slots=True)
class Status:
    """A change of the connection's state, given to ``on_status``.

    ``state`` is ``connecting`` (the first connection), ``open`` (the server's
    ``connected`` came), ``reconnecting`` (repeated for each attempt, with the close
    ``code`` and ``reason`` that caused it and the ``delay`` before the next attempt, in
    seconds) or ``closed`` (for good, with ``code`` and ``reason``). ``ever_open``: a
    socket of this connection was ever accepted (False: the server cannot be reached,
    or refuses the handshake).
    """

    state: State
    code: int | None = None
    reason: str = ""
    delay: float | None = None
    ever_open: bool = False


def socket_url(url: str) -> str:
    """``url`` as a WebSocket URL (``http`` -> ``ws``, ``https`` -> ``wss``).

    Raises:
        ValueError: not a ws, wss, http or https URL with a host, or a query that sets
            ``since`` / ``auth`` / a token (the client sets those itself; tokens go in
            the Authorization header).
    """
    parts = urllib.parse.urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"{url[:80]!r} is not a ws://, wss://, http:// or https:// URL")
    reserved = _RESERVED_QUERY & {key for key, _ in urllib.parse.parse_qsl(parts.query)}
    if reserved:
        raise ValueError(
            f"the URL sets {', '.join(sorted(reserved))}: pass since= and token= to "
            "connect() instead (tokens go in the Authorization header)"
        )
    return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path or "/", parts.query, ""))


def _check_token(token: object) -> str:
    # It goes in an HTTP header: no spaces or control characters.
    if not isinstance(token, str) or not token or not token.isprintable() or " " in token:
        raise ValueError("a token is a non-empty string without spaces or control characters")
    return token


class Connection:
    """A connection to a roomcast server's ``/ws/`` endpoint; see :func:`connect`."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        get_token: GetToken | None = None,
        since: int | None = None,
        headers: Mapping[str, str] | None = None,
        ssl: SSLContext | None = None,
        open_timeout: float = 10.0,
        max_frame_bytes: int | None = DEFAULT_MAX_FRAME_BYTES,
        max_queued_events: int = MAX_QUEUED_EVENTS,
        min_delay: float = MIN_DELAY_SECS,
        max_delay: float = MAX_DELAY_SECS,
        get_token_timeout: float = GET_TOKEN_TIMEOUT_SECS,
        on_status: Callable[[Status], object] | None = None,
    ) -> None:
        self.url = socket_url(url)
        if token is not None:
            _check_token(token)
        if get_token is not None and not callable(get_token):
            raise TypeError("get_token must be a function returning a token (or an awaitable)")
        if since is not None and (type(since) is not int or since < 0):
            raise ValueError(f"since must be a non-negative int, not {since!r:.40}")
        if max_queued_events < 1:
            raise ValueError("max_queued_events must be at least 1")
        self._token = token
        self._get_token = get_token
        self._headers = dict(headers or {})
        self._ssl = ssl
        self._open_timeout = open_timeout
        self._max_events = max_queued_events
        self._min_delay = min_delay
        self._max_delay = max_delay
        self._get_token_timeout = get_token_timeout
        self._on_status = on_status
        #: The username the server knows this connection by (a guest's name for a guest);
        #: None until connected.
        self.user: str | None = None
        #: The position in the user channel (the ``since`` of the next connection).
        self.user_seq: int | None = since
        #: Whether the connection is a guest's (no user channel, no read cursors).
        self.guest = False
        self.status = Status(state="connecting")
        self._rooms: dict[str, Room] = {}
        self._user_events: EventQueue[UserEvent] = EventQueue(max_queued_events, None)
        self._ws: ClientConnection | None = None
        self._writes: asyncio.Queue[str] | None = None
        self._socket_id = 0
        self._connected = False
        self._ever_open = False
        self._attempt = 0
        self._token_failures = 0
        self._closing = False
        #: Why the connection ended, unless the program closed it.
        self._end_error: ClientError | None = None
        loop = asyncio.get_running_loop()
        self._opened: asyncio.Future[None] = loop.create_future()
        self._done: asyncio.Future[None] = loop.create_future()
        self._runner: asyncio.Task[None] | None = None
        self._sends = Outbox(self._write, max_frame_bytes)
        self._requests = Requests(self._write)

    def __repr__(self) -> str:
        return f"<Connection {self.url} {self.status.state} user={self.user!r}>"

    # -- the program's calls --------------------------------------------------------------

    async def open(self) -> Connection:
        """Open the first connection and wait for the server's ``connected``.

        Raises:
            ConnectError: the server cannot be reached or refused the handshake.
            ClosedError: it closed the socket with a code that says not to reconnect
                (4401 for a refused token, ...).
        """
        if self._runner is None:
            self._set_status(Status(state="connecting"))
            self._runner = asyncio.create_task(self._run(), name=f"roomcast.client {self.url}")
        await asyncio.shield(self._opened)
        return self

    async def __aenter__(self) -> Connection:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def rooms(self) -> Mapping[str, Room]:
        """The rooms subscribed to, by canonical name."""
        return dict(self._rooms)

    async def subscribe(self, room: str, *, since: int | None = None) -> Room:
        """Subscribe to ``room``; returns its handle once the server's ``joined`` came.

        ``since``: the last seq already seen (the catch-up is what came after it);
        without it the catch-up is the latest messages. After a reconnect the room is
        resubscribed by itself with its ``last_seq``.

        Raises:
            UnsubscribedError: refused (4403 not allowed, 4400 bad room name).
            RefusedError: ``too_many_subscriptions`` (MAX_SUBSCRIPTIONS on the server).
            ClosedError: the connection ended.
            ValueError: a room name the protocol refuses, a bad ``since``, or a room
                already subscribed on this connection (use ``conn.rooms[name]``).
        """
        try:
            name = validate_room_name(room, max_chars=_ANY_LENGTH)
        except ProtocolError as exc:
            raise ValueError(exc.detail) from None
        if since is not None and (type(since) is not int or since < 0):
            raise ValueError(f"since must be a non-negative int, not {since!r:.40}")
        if self._end_error is not None:
            raise self._end_error
        if self._closing:
            raise ClosedError(1000, "closed by the client")
        if self._runner is None:
            raise RuntimeError("open the connection first: async with connect(...) as conn")
        if name in self._rooms:
            raise ValueError(f"already subscribed to {name!r}")
        handle = Room(self, name, since, self._max_events)
        self._rooms[name] = handle
        if self._connected:
            self._write(handle.subscribe_frame())
        try:
            await asyncio.shield(handle._first)
        except asyncio.CancelledError:
            await handle.unsubscribe()
            raise
        return handle

    async def user_messages(self) -> AsyncIterator[UserEvent]:
        """The user channel: :class:`UserMessage` events, each once, and a
        :class:`Connected` event for every (re)connection (``recovered=False``: some
        were missed for good). One task reads it; at most ``max_queued_events`` wait,
        then the oldest are dropped (:class:`Lagged`). Ends after :meth:`close`; raises
        ClosedError when the connection ends otherwise."""
        while True:
            try:
                yield await self._user_events.get(make_lagged)
            except StopAsyncIteration:
                return

    async def close(self) -> None:
        """Close the connection (1000). Waiting sends fail with ClosedError, room and
        user-message iterators end after the events they hold."""
        if not self._done.done():
            self._closing = True
            if self._runner is not None:
                self._runner.cancel()
                await asyncio.gather(self._runner, return_exceptions=True)
            self._finish(None)

    async def wait_closed(self) -> None:
        """Wait until the connection ends: returns after :meth:`close`, raises what
        ended it otherwise (:class:`ClosedError`; :class:`ConnectError` if the first
        connection failed)."""
        await asyncio.shield(self._done)
        if self._end_error is not None:
            raise self._end_error

    # -- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        ws: ClientConnection | None = None
        try:
            while True:
                if self._get_token is not None and self._token is None:
                    failure = await self._fetch_token()
                    if failure is not None:
                        if self._token_failed(f"could not get a token: {failure}"):
                            return
                        await self._wait_to_retry(CloseCode.UNAUTHORIZED, failure)
                        continue
                try:
                    ws = await self._open_socket()
                except (OSError, TimeoutError, WebSocketException) as exc:
                    status = exc.response.status_code if isinstance(exc, InvalidStatus) else None
                    detail = _describe_failure(exc)
                    if not self._ever_open:
                        error = ConnectError(self.url, detail, status)
                        error.__cause__ = exc
                        self._finish(error)
                        return
                    code, reason = 1006, detail
                else:
                    self._ever_open = True
                    code, reason = await self._serve(ws)
                    ws = None
                if not self._after_close(code, reason):
                    return
                await self._wait_to_retry(code, reason)
        except asyncio.CancelledError:
            if ws is not None:
                await self._close_socket(ws)
            raise
        except Exception as exc:  # a bug here must end the connection, not hang it
            logger.exception("roomcast.client: the connection loop failed")
            self._finish(ClosedError(1011, f"client error: {exc!r}"))

    async def _open_socket(self) -> ClientConnection:
        headers = dict(self._headers)
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        url = self.url
        if self.user_seq is not None:
            url += ("&" if "?" in url else "?") + f"since={self.user_seq}"
        kwargs: dict[str, Any] = {}
        if self._ssl is not None:
            kwargs["ssl"] = self._ssl
        return await ws_connect(
            url,
            additional_headers=headers,
            subprotocols=[Subprotocol(PROTOCOL_V1)],
            open_timeout=self._open_timeout,
            max_size=MAX_SERVER_FRAME_BYTES,
            close_timeout=CLOSE_TIMEOUT_SECS,
            **kwargs,
        )

    async def _serve(self, ws: ClientConnection) -> tuple[int, str]:
        """Read ``ws`` until it closes; the close code and reason."""
        self._socket_id += 1
        self._ws = ws
        # Frames for the socket, in order. Not bounded by a count: what enters is, one
        # post at a time (Outbox), a subscribe per room, one typing frame per room per
        # TYPING_RESEND_SECS, and requests the program awaits one by one.
        writes: asyncio.Queue[str] = asyncio.Queue()
        self._writes = writes
        writer = asyncio.create_task(self._write_loop(ws, writes))
        self._sends.socket = self._socket_id
        self._requests.open = True
        try:
            async for data in ws:
                if isinstance(data, str):
                    self._on_text(data)
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            code = ws.close_code if ws.close_code is not None else 1006
            reason = ws.close_reason or ""
            self._socket_lost(code, reason)
        await asyncio.gather(writer, return_exceptions=True)
        return code, reason

    async def _write_loop(self, ws: ClientConnection, writes: asyncio.Queue[str]) -> None:
        try:
            while True:
                await ws.send(await writes.get())
        except ConnectionClosed:
            pass  # the reader sees the close too

    async def _close_socket(self, ws: ClientConnection) -> None:
        try:
            await ws.close()
        except (OSError, WebSocketException):  # already gone: nothing to close politely
            pass

    def _socket_lost(self, code: int, reason: str) -> None:
        self._ws = None
        self._writes = None
        self._requests.socket_lost()  # asked again after the rooms' next joined
        self._connected = False
        self._sends.socket_lost(code, reason)
        for room in list(self._rooms.values()):
            room.socket_lost()

    def _after_close(self, code: int, reason: str) -> bool:
        """Decide after a close: True to reconnect, False when the connection ended."""
        if self._closing:
            return False
        if code == CloseCode.MESSAGE_TOO_BIG:
            # The server read a frame over its limit (the client's max_frame_bytes was
            # not the server's): the send on the wire was rejected (Outbox.socket_lost);
            # the connection itself was fine.
            return True
        if code in (CloseCode.UNAUTHORIZED, CloseCode.TOKEN_EXPIRED) and self._get_token:
            # A fresh token may do. An expired one that had let the socket in is no
            # failure; a refused one is.
            self._token = None
            if code == CloseCode.UNAUTHORIZED:
                return not self._token_failed(reason)
            return True
        if not should_reconnect(code) or code == CloseCode.TOKEN_EXPIRED:
            # TOKEN_EXPIRED without get_token: the same token would be refused.
            self._finish(ClosedError(code, reason))
            return False
        return True

    def _token_failed(self, reason: str) -> bool:
        """Count a token failure; True (and the connection ended) at the limit."""
        self._token = None
        self._token_failures += 1
        if self._token_failures >= MAX_TOKEN_FAILURES:
            self._finish(
                ClosedError(
                    CloseCode.UNAUTHORIZED, f"{reason} ({self._token_failures} times in a row)"
                )
            )
            return True
        return False

    async def _fetch_token(self) -> str | None:
        """Ask get_token() for a token; None when it gave one, else what went wrong."""
        if self._get_token is None:  # pragma: no cover - checked by the caller
            return "no get_token"
        try:
            async with asyncio.timeout(self._get_token_timeout):
                token = self._get_token()
                if inspect.isawaitable(token):
                    token = await token
        except TimeoutError:
            return f"no answer within {self._get_token_timeout:g} s"
        except Exception as exc:  # the program's function: any failure is a failed attempt
            logger.warning("roomcast.client: get_token() failed: %r", exc)
            return str(exc) or type(exc).__name__
        try:
            self._token = _check_token(token)
        except ValueError:
            return f"get_token() gave {type(token).__name__}, not a token"
        return None

    async def _wait_to_retry(self, code: int, reason: str) -> None:
        delay = self._backoff_delay(self._attempt)
        self._attempt += 1
        self._set_status(
            Status(
                state="reconnecting",
                code=code,
                reason=reason,
                delay=delay,
                ever_open=self._ever_open,
            )
        )
        await asyncio.sleep(delay)

    def _backoff_delay(self, attempt: int) -> float:
        ceiling = min(self._max_delay, self._min_delay * 2.0 ** min(attempt, 32))
        return ceiling / 2 + random.random() * ceiling / 2

    def _finish(self, error: ClientError | None) -> None:
        """The connection has ended: ``error`` says why (None: the program closed it)."""
        if self._done.done():
            return
        self._end_error = error
        self._connected = False
        code, reason = (
            (error.code, error.reason)
            if isinstance(error, ClosedError)
            else (1000, "closed by the client")
            if error is None
            else (1006, str(error))
        )
        for_waiting = error or ClosedError(1000, "closed by the client")
        fail(self._opened, for_waiting)
        for room in list(self._rooms.values()):
            room.close(error)
        self._sends.close(for_waiting)
        self._user_events.end(error)
        self._done.set_result(None)
        self._set_status(
            Status(state="closed", code=code, reason=reason, ever_open=self._ever_open)
        )

    def _set_status(self, status: Status) -> None:
        self.status = status
        if self._on_status is not None:
            try:
                self._on_status(status)
            except Exception:  # the program's callback must not break the connection
                logger.exception("roomcast.client: on_status raised")

    # -- frames ---------------------------------------------------------------------------

    def _write(self, frame: dict[str, Any]) -> None:
        """Send ``frame`` on the current socket (dropped when there is none: callers
        resend what matters after the next ``joined``)."""
        if self._writes is not None:
            self._writes.put_nowait(json.dumps(frame, ensure_ascii=False))

    def _on_text(self, text: str) -> None:
        try:
            frame = json.loads(text)
        except (ValueError, RecursionError):  # not JSON, or nested deeper than json reads
            logger.warning("roomcast.client: the server sent a frame that is not JSON")
            return
        if not isinstance(frame, dict):
            return
        kind = frame.get("type")
        room_name = frame.get("room")
        if kind == "pong":
            self._requests.pong()
        elif isinstance(room_name, str):
            self._on_room_frame(room_name, frame)
        elif kind in ("connected", "user_message"):
            event = user_event(frame)
            if event is None:
                logger.warning("roomcast.client: ignored a malformed %r frame", kind)
            elif isinstance(event, Connected):
                self._on_connected(event)
            else:
                self._on_user_message(event)
        elif kind == "error":
            logger.warning(
                "roomcast.client: the server refused a frame: %s: %s",
                frame.get("code"),
                frame.get("detail"),
            )

    def _on_room_frame(self, name: str, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        room = self._rooms.get(name)
        if kind == "error" and not isinstance(frame.get("client_id"), str):
            code = str(frame["code"]) if isinstance(frame.get("code"), str) else "error"
            if code not in SUBSCRIBE_ERRORS:
                detail = str(frame["detail"]) if isinstance(frame.get("detail"), str) else ""
                error = RefusedError(code, detail, room=name, retry_after=retry_after(frame))
                request = self._requests.refused(name)
                if request is not None:
                    if room is not None:
                        room.refused(request.kind, request.future, error)
                elif room is not None and room.subscribing:
                    room.subscribe_refused(error)
                else:
                    logger.warning("roomcast.client: %r: unexpected error %s", name, code)
                return
        elif kind == "history":
            request = self._requests.answered("history", name)
            if request is not None and request.future is not None and room is not None:
                room.answered(request.future, frame)
            return
        elif kind == "presence":
            # Its waiters are served with the room's state (Room._on_event).
            self._requests.answered("presence", name)
        elif kind == "unsubscribed" and frame.get("code") == 1000:
            self._requests.answered("unsubscribe", name)
        if room is not None:
            room.on_frame(frame)

    def _on_connected(self, event: Connected) -> None:
        since = self.user_seq
        if since is not None and event.recovered is not False and (event.user_seq or 0) < since:
            event = dataclasses.replace(event, recovered=False)
        self.user = event.user
        self.guest = event.user_seq is None
        if event.recovered is not True:
            self.user_seq = None
        if self.user_seq is None and event.user_seq == 0:
            self.user_seq = 0
        self._connected = True
        self._attempt = 0
        self._token_failures = 0
        self._user_events.put(event)
        for room in self._rooms.values():
            self._write(room.subscribe_frame())
        self._set_status(Status(state="open", ever_open=True))
        if not self._opened.done():
            self._opened.set_result(None)

    def _on_user_message(self, event: UserMessage) -> None:
        if self.user_seq is not None and event.seq <= self.user_seq:
            return  # already delivered
        self.user_seq = event.seq
        self._user_events.put(event)

    def _forget(self, room: Room, error: BaseException) -> None:
        """``room`` ended: drop it, failing its waiting sends with ``error``."""
        if self._rooms.get(room.name) is room:
            del self._rooms[room.name]
        self._sends.forget(room, error)


def _describe_failure(exc: BaseException) -> str:
    if isinstance(exc, InvalidStatus):
        return f"the server answered HTTP {exc.response.status_code}"
    if isinstance(exc, TimeoutError):
        return "no answer to the handshake in time"
    return str(exc) or type(exc).__name__
