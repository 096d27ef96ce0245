"""Rate and connection limits at the edge: posts per socket and per user, sockets per
user and per client address.

Layer: edge (between the transport and the services). Imports ``conf``, ``protocol`` and
``hub`` (for :class:`~roomcast.hub.Member`); never models, services or the channel layer.
Nothing here waits or reads the database: a check is a few float operations.

The contract with the consumer (three calls, one per place)::

    quota = limits.admit(scope, user_id)           # on connect, before joining the room
    if not quota.allow_post(member, client_id):    # each post, before storing it
        return                                     # refused: the client has been told
    quota.release()                                # when the socket closes (idempotent)

:func:`admit` raises :class:`TooManySocketsError` (a ``ProtocolError``: 4429 and a
reason naming the limit) when the user already has ``MAX_SOCKETS_PER_USER`` sockets, or
the client's address ``MAX_SOCKETS_PER_ADDRESS``. :meth:`Quota.allow_post` answers a post
over the limit itself: the socket gets an ``error`` event ``rate_limited`` with the
post's ``client_id`` and ``retry_after`` (seconds), and the post is not stored; nothing
else is lost (the socket stays, its live stream goes on). A socket that keeps posting
after being told, ``RATE_LIMIT_CLOSE_AFTER`` refusals within about
``RATE_LIMIT_WINDOW_SECS``, is closed with 4429 "kept posting after rate_limited".

Token buckets. A socket's bucket holds up to ``POST_BURST_PER_SOCKET`` posts and refills
at ``POST_RATE_PER_SOCKET`` per second; a user's (shared by all the user's sockets in
this process) ``POST_BURST_PER_USER`` and ``POST_RATE_PER_USER``. A post takes a token
from both, or is refused by whichever is empty, with ``retry_after`` the time until both
have one. A bucket is two floats (tokens, when last filled) filled lazily at the next
post: no timers, no task. A socket's :class:`Quota` is one slotted object; a user's state
exists while the user has a socket here and is dropped with the last one. Guests have no
user bucket: they are limited per socket, and their sockets per address.

Per process, not cluster-wide, on purpose. A cluster-wide bucket would cost a Redis
round trip on every post (a post otherwise costs no network call before the store) and
make posting fail when Redis does; socket counts shared through Redis would need
expiring entries refreshed by each process to forget a process that died. With N
processes behind a load balancer a user may post up to N times the per-user rate, and
hold up to N times ``MAX_SOCKETS_PER_USER`` sockets, at most: the limits bound what one
client can cost each process, which is what they are for. Set them per process with
that in mind, or limit in the proxy in front for exact cluster-wide numbers.

Addresses are ``scope["client"]``'s host: behind a proxy that is the proxy unless the
server is told to trust its forwarded-for header (uvicorn's ``--forwarded-allow-ips``);
set ``MAX_SOCKETS_PER_ADDRESS`` to 0 there, or let the proxy limit. IPv6 addresses count
per /64, the block a single host is usually given.
"""

from __future__ import annotations

import ipaddress
import math
import time
from dataclasses import dataclass
from typing import Any

from django.core.signals import setting_changed

from . import metrics
from .conf import roomcast_settings
from .hub import Member
from .protocol import CloseCode, codec
from .protocol.errors import ProtocolError

__all__ = ["FLOODING", "Quota", "TooManySocketsError", "address_of", "admit"]

#: The close reason of a socket that kept posting after ``rate_limited``.
FLOODING = "kept posting after rate_limited"
#: Prefix length IPv6 addresses are counted by (a host usually gets a /64 of its own).
IPV6_PREFIX_BITS = 64


class TooManySocketsError(ProtocolError):
    """The user or the address has as many sockets as allowed: closed with 4429."""

    code = "too_many_sockets"
    default_detail = "Too many sockets."
    close_code = CloseCode.TOO_MANY


@dataclass(frozen=True, slots=True)
class _Config:
    socket_rate: float
    socket_burst: float
    user_rate: float
    user_burst: float
    close_after: int
    window: float
    per_user: int
    per_address: int
    request_rate: float
    request_burst: float


_config_cache: _Config | None = None


def _config() -> _Config:
    global _config_cache
    if _config_cache is None:
        s = roomcast_settings
        _config_cache = _Config(
            socket_rate=float(s.POST_RATE_PER_SOCKET),
            socket_burst=float(s.POST_BURST_PER_SOCKET),
            user_rate=float(s.POST_RATE_PER_USER),
            user_burst=float(s.POST_BURST_PER_USER),
            close_after=int(s.RATE_LIMIT_CLOSE_AFTER),
            window=float(s.RATE_LIMIT_WINDOW_SECS),
            per_user=int(s.MAX_SOCKETS_PER_USER),
            per_address=int(s.MAX_SOCKETS_PER_ADDRESS),
            request_rate=float(s.ROOM_REQUESTS_PER_SOCKET),
            request_burst=float(s.MAX_SUBSCRIPTIONS),
        )
    return _config_cache


def _reset_config(*, setting: str, **kwargs: Any) -> None:
    global _config_cache
    if setting == "ROOMCAST":
        _config_cache = None


setting_changed.connect(_reset_config)


class _User:
    """A user's sockets in this process, and their shared post bucket."""

    __slots__ = ("id", "sockets", "stamp", "tokens")

    def __init__(self, user_id: int, burst: float, now: float) -> None:
        self.id = user_id
        self.sockets = 0
        self.tokens = burst
        self.stamp = now


# This process's counts. Touched only from the event loop that serves the sockets.
_users: dict[int, _User] = {}
_addresses: dict[str, int] = {}


def address_of(scope: dict[str, Any]) -> str | None:
    """The client address ``scope`` counts against (IPv6 by /64), or None if unknown."""
    client = scope.get("client")
    if not client:
        return None
    host = str(client[0])
    if ":" not in host:
        return host  # IPv4 (or a name a test server made up): as it is
    try:
        address = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, IPV6_PREFIX_BITS), strict=False))


def admit(scope: dict[str, Any], user_id: int | None) -> Quota:
    """Count a new socket of ``user_id`` (None: a guest) from ``scope``'s client address.

    Returns:
        The socket's :class:`Quota`.

    Raises:
        TooManySocketsError: over ``MAX_SOCKETS_PER_USER`` or ``MAX_SOCKETS_PER_ADDRESS``
            (close the socket with its ``close_code`` and ``detail``).

    After calling this, you must call :meth:`Quota.release` when the socket closes.
    """
    config = _config()
    address = address_of(scope)
    user = _users.get(user_id) if user_id is not None else None
    if user is not None and config.per_user and user.sockets >= config.per_user:
        raise TooManySocketsError(
            f"too many sockets for this user (MAX_SOCKETS_PER_USER={config.per_user})"
        )
    if (
        address is not None
        and config.per_address
        and _addresses.get(address, 0) >= config.per_address
    ):
        raise TooManySocketsError(
            f"too many sockets from this address (MAX_SOCKETS_PER_ADDRESS={config.per_address})"
        )
    now = time.monotonic()
    if user_id is not None and user is None:
        user = _users[user_id] = _User(user_id, config.user_burst, now)
    if user is not None:
        user.sockets += 1
    if address is not None:
        _addresses[address] = _addresses.get(address, 0) + 1
    return Quota(user, address, config.socket_burst, now)


class Quota:
    """One socket's share: its post bucket, its refusals, and its place in the counts."""

    __slots__ = (
        "_address",
        "_requested",
        "_requests",
        "_strikes",
        "_struck",
        "_user",
        "stamp",
        "tokens",
    )

    def __init__(self, user: _User | None, address: str | None, burst: float, now: float) -> None:
        self._user = user
        self._address = address
        self.tokens = burst  # posts this socket may make now (a bucket starts full)
        self.stamp = now  # when tokens was last brought up to date
        self._strikes = 0.0  # recent refusals, leaking away over RATE_LIMIT_WINDOW_SECS
        self._struck = now
        # /ws/ subscribes and presence requests (each costs a database read or a
        # snapshot): a bucket of MAX_SUBSCRIPTIONS, so a reconnect resubscribes every room.
        self._requests = -1.0  # full, filled on first use (most sockets never ask)
        self._requested = now

    def request_wait(self) -> float:
        """Take a room request's token (``subscribe``, ``presence``): 0.0 if there was
        one, else the seconds until there is (nothing is taken)."""
        config = _config()
        if config.request_rate <= 0:
            return 0.0
        now = time.monotonic()
        tokens = config.request_burst if self._requests < 0 else self._requests
        tokens = min(config.request_burst, tokens + (now - self._requested) * config.request_rate)
        self._requested = now
        if tokens < 1.0:
            self._requests = tokens
            return (1.0 - tokens) / config.request_rate
        self._requests = tokens - 1.0
        return 0.0

    def has_token(self) -> bool:
        """Whether a post now would be allowed (takes nothing; :meth:`allow_post` does)."""
        config = _config()
        now = time.monotonic()
        if config.socket_rate > 0:
            if _refilled(self, now, config.socket_rate, config.socket_burst) < 1.0:
                return False
        user = self._user
        if user is not None and config.user_rate > 0:
            if _refilled(user, now, config.user_rate, config.user_burst) < 1.0:
                return False
        return True

    def allow_post(self, member: Member, client_id: str | None) -> bool:
        """Take a post's token; if there is none, tell the client and return False.

        A refused post gets ``rate_limited`` (with ``client_id`` and ``retry_after``) on
        ``member``'s socket, or, after too many refusals, closes it with 4429. The caller
        stores nothing for a refused post.
        """
        config = _config()
        now = time.monotonic()
        wait = 0.0
        if config.socket_rate > 0:
            tokens = _refilled(self, now, config.socket_rate, config.socket_burst)
            self.tokens, self.stamp = tokens, now
            if tokens < 1.0:
                wait = (1.0 - tokens) / config.socket_rate
        user = self._user
        if user is not None and config.user_rate > 0:
            tokens = _refilled(user, now, config.user_rate, config.user_burst)
            user.tokens, user.stamp = tokens, now
            if tokens < 1.0:
                wait = max(wait, (1.0 - tokens) / config.user_rate)
        if wait == 0.0:
            if config.socket_rate > 0:
                self.tokens -= 1.0
            if user is not None and config.user_rate > 0:
                user.tokens -= 1.0
            return True
        metrics.RATE_LIMITED.inc()
        if config.close_after:
            leaked = (now - self._struck) * config.close_after / config.window
            self._strikes = max(0.0, self._strikes - leaked) + 1.0
            self._struck = now
            # The close_after-th refusal in quick succession closes (what has leaked
            # away since the first is a sliver, hence "> close_after - 1").
            if self._strikes > config.close_after - 1:
                member.connection.close(CloseCode.TOO_MANY, FLOODING)
                return False
        event = rate_limited_event(wait, client_id, seed=not member.v1)
        if member.connection.mux:  # on /ws/, errors about a room's frame name the room
            event["room"] = member.room
        member.send_frame(codec.encode(event))
        return False

    def release(self) -> None:
        """Take the socket out of the counts (the socket closed). Idempotent."""
        user, self._user = self._user, None
        if user is not None:
            user.sockets -= 1
            if user.sockets <= 0 and _users.get(user.id) is user:
                del _users[user.id]  # the user's last socket here: drop the bucket
        address, self._address = self._address, None
        if address is not None:
            left = _addresses.get(address, 0) - 1
            if left > 0:
                _addresses[address] = left
            else:
                _addresses.pop(address, None)


def _refilled(bucket: Any, now: float, rate: float, burst: float) -> float:
    """A token bucket's tokens at ``now`` (``bucket.tokens`` at ``bucket.stamp``)."""
    return float(min(burst, bucket.tokens + (now - bucket.stamp) * rate))


def rate_limited_event(wait: float, client_id: str | None, *, seed: bool) -> dict[str, Any]:
    """The ``error`` event of a refused post: ``rate_limited``, ``retry_after`` seconds
    (rounded up to the millisecond), and the post's ``client_id``."""
    retry_after = math.ceil(wait * 1000) / 1000
    event = codec.error_event(
        code="rate_limited",
        detail=f"Too many messages: wait {retry_after:g} s before sending again.",
        seed=seed,
        client_id=client_id,
    )
    return {**event, "retry_after": retry_after}


def counts() -> tuple[dict[int, int], dict[str, int]]:
    """This process's sockets per user and per address (for tests and diagnostics)."""
    return {uid: user.sockets for uid, user in _users.items()}, dict(_addresses)
