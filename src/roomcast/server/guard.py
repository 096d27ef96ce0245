"""Connection limits of ``roomcast serve``: caps, a handshake deadline, stalled sockets.

Layer: server (transport, below ASGI). uvicorn accepts every TCP connection it is
offered and keeps it until the peer goes: a connection that never sends a request, or
drips its headers a byte at a time, holds a file descriptor forever, and about 20,000 of
them from one address took the server down for everyone (issue 6). uvicorn's own
``limit_concurrency`` answers 503 only once a request has been parsed, so it does not see
these. This module adds, per process:

* a total cap (``MAX_CONNECTIONS``, default 90% of the open-file limit) and a cap per
  peer address (``MAX_CONNECTIONS_PER_ADDRESS``): a connection over either is answered
  ``503 Service Unavailable`` at once and closed, before anything is read from it;
* a deadline (``HANDSHAKE_TIMEOUT_SECS``) for each request to arrive whole, the first
  one and every later one on a kept-alive connection; a WebSocket handshake counts as
  done when the application accepts (or refuses) it;
* a deadline (``SEND_TIMEOUT_SECS``) for a socket that takes no data while data waits for
  it (its transport stays paused): it is aborted with a TCP reset, which releases the
  kernel's send buffer too (a plain close waits for the data to drain, which for a
  client that never reads is forever);
* an abort for a close the peer never completes (``CLOSE_TIMEOUT_SECS``).

Why by hand: uvicorn has no per-address cap and no header deadline (it recommends a
proxy in front); these are small subclasses of its protocol classes, in the same way
roomcast's WebSocket protocol is (``lean_ws``). A proxy in front should still limit
what it can see better: see docs/deploy.md.

Counts are per process: with ``--workers N`` each process has its own caps.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import struct
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from roomcast.conf import DEFAULTS, roomcast_settings

logger = logging.getLogger(__name__)

__all__ = ["GuardedHttpToolsProtocol", "Limits", "abort", "guard", "limits"]

#: File descriptors kept out of the total cap when it is derived from the open-file
#: limit: the database and Redis connections, log files and the listening socket need
#: some, and a server that runs out of them cannot even accept to refuse.
FD_RESERVE_FRACTION = 0.10
FD_RESERVE_MIN = 64

#: Seconds between log lines that sum up refused or aborted connections: under an
#: attack one line a minute says what happened without writing a line per connection.
TALLY_LOG_SECS = 60.0

_SO_LINGER_RESET = struct.pack("ii", 1, 0)  # close() sends RST and drops unsent data


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """The connection limits in force in this process (from ``ROOMCAST`` settings)."""

    max_connections: int  # 0: no cap
    max_per_address: int  # 0: no cap
    handshake_timeout: float
    send_timeout: float
    close_timeout: float
    send_buffer: int | None  # SO_SNDBUF per socket; None: the kernel's autotuning


_limits: Limits | None = None


def _open_file_limit() -> int:
    """The soft open-file limit, raised to the hard limit first (as nginx's
    ``worker_rlimit_nofile`` or a systemd ``LimitNOFILE`` would)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # not allowed here: keep the soft limit
            pass
    return soft if soft != resource.RLIM_INFINITY else 1_000_000


def limits() -> Limits:
    """This process's limits, read from the settings on first use."""
    global _limits
    if _limits is None:
        try:
            values: Any = roomcast_settings
            values.MAX_CONNECTIONS  # noqa: B018  (reads the settings)
        except (ImproperlyConfigured, ImportError):  # outside Django (a bare ASGI app)
            values = SimpleNamespace(**DEFAULTS)
        total = values.MAX_CONNECTIONS
        if total is None:
            fds = _open_file_limit()
            total = max(1, fds - max(FD_RESERVE_MIN, int(fds * FD_RESERVE_FRACTION)))
        _limits = Limits(
            max_connections=total,
            max_per_address=values.MAX_CONNECTIONS_PER_ADDRESS,
            handshake_timeout=float(values.HANDSHAKE_TIMEOUT_SECS),
            send_timeout=float(values.SEND_TIMEOUT_SECS),
            close_timeout=float(values.CLOSE_TIMEOUT_SECS),
            send_buffer=values.SOCKET_SEND_BUFFER_BYTES,
        )
    return _limits


def _reset_limits(*, setting: str, **kwargs: Any) -> None:
    global _limits
    if setting == "ROOMCAST":
        _limits = None


setting_changed.connect(_reset_limits)


class _Tally:
    """Counts events by kind and logs them at most once per TALLY_LOG_SECS."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.totals: dict[str, int] = {}
        self._last_log = 0.0

    def add(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.totals[kind] = self.totals.get(kind, 0) + 1
        now = time.monotonic()
        if now - self._last_log >= TALLY_LOG_SECS:
            self._last_log = now
            summary = ", ".join(f"{n} {what}" for what, n in sorted(self.counts.items()))
            self.counts.clear()
            logger.warning("Connection limits since the last report: %s", summary)


class ConnectionGuard:
    """Open connections of this process, in total and per peer address."""

    def __init__(self) -> None:
        self.total = 0
        self.per_address: dict[str, int] = {}
        self.tally = _Tally()

    def admit(self, address: str) -> str | None:
        """Count a new connection from ``address``; or say why it is refused."""
        current = limits()
        if current.max_connections and self.total >= current.max_connections:
            self.tally.add("refused: server at MAX_CONNECTIONS")
            return "The server has too many connections; try again later."
        count = self.per_address.get(address, 0)
        if current.max_per_address and count >= current.max_per_address:
            self.tally.add("refused: an address at MAX_CONNECTIONS_PER_ADDRESS")
            return "Too many connections from your address."
        self.total += 1
        self.per_address[address] = count + 1
        return None

    def release(self, address: str) -> None:
        """Forget a connection counted by :meth:`admit`."""
        self.total -= 1
        count = self.per_address.get(address, 0) - 1
        if count > 0:
            self.per_address[address] = count
        else:
            self.per_address.pop(address, None)


_guard = ConnectionGuard()


def guard() -> ConnectionGuard:
    """This process's connection guard."""
    return _guard


def abort(transport: asyncio.Transport) -> None:
    """End a connection now with a TCP reset, dropping what is queued for it.

    ``transport.abort()`` drops asyncio's buffer, but the kernel would still try to send
    its own (up to ``tcp_wmem``'s 4 MB per socket) to a peer that reads nothing;
    SO_LINGER 0 makes the close a reset that frees it at once.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _SO_LINGER_RESET)
        except OSError:
            pass
    transport.abort()


def _set_send_buffer(transport: asyncio.Transport, size: int) -> None:
    """Cap the kernel's send buffer of one socket (Linux doubles the value for its own
    bookkeeping and then stops autotuning it)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        except OSError:
            pass


def peer_address(transport: asyncio.BaseTransport) -> str:
    """The peer's IP address (``""`` for a Unix socket)."""
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"retry-after: 10\r\n"
    b"connection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the caps and deadlines of this module.

    A connection is counted from ``connection_made``; on a WebSocket upgrade the count
    passes to the WebSocket protocol (``lean_ws``), which releases it when the socket
    closes.
    """

    _guard_address: str | None = None
    _deadline: asyncio.TimerHandle | None = None
    _stall: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        address = peer_address(transport)
        refused = _guard.admit(address)
        if refused is not None:
            # Not handed to uvicorn at all: nothing is read, nothing is counted.
            body = refused.encode()
            transport.write(_REFUSAL % (len(body), body))
            transport.close()
            return
        self._guard_address = address
        send_buffer = limits().send_buffer
        if send_buffer:
            _set_send_buffer(transport, send_buffer)
        super().connection_made(transport)
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._guard_address is None:
            return  # refused in connection_made, or already upgraded and released
        self._disarm()
        _guard.release(self._guard_address)
        self._guard_address = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a kept-alive connection's next request
            self._arm_deadline()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._cancel_deadline()

    def handle_websocket_upgrade(self) -> None:
        self._disarm()
        address, self._guard_address = self._guard_address, None
        super().handle_websocket_upgrade()
        protocol = self.transport.get_protocol()
        if address is not None:
            if hasattr(protocol, "adopt_guard"):
                protocol.adopt_guard(address)
            else:  # another WebSocket protocol class: it will not release the count
                _guard.release(address)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stall is None:
            self._stall = self.loop.call_later(limits().send_timeout, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _arm_deadline(self) -> None:
        self._deadline = self.loop.call_later(limits().handshake_timeout, self._too_slow)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _disarm(self) -> None:
        self._cancel_deadline()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        _guard.tally.add("closed: request not received within HANDSHAKE_TIMEOUT_SECS")
        # No response: the peer has not finished asking anything (RFC 9110's 408 is
        # optional), and a slowloris client would only be told what to tune.
        abort(self.transport)

    def _stalled(self) -> None:
        self._stall = None
        _guard.tally.add("aborted: read nothing for SEND_TIMEOUT_SECS")
        abort(self.transport)
