"""roomcast settings: one ``ROOMCAST`` dict in the Django settings, read lazily.

Like DRF's ``api_settings``: ``DEFAULTS`` below, the user's dict on top, nothing read at
import time, the cache dropped on ``setting_changed`` so ``override_settings`` works.
Unknown keys raise at first use with a hint; bad values are reported by the system
checks in ``checks.py`` (``roomcast.E001``...) before the server starts.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    # Largest client frame, in UTF-8 bytes; a larger one closes the socket with 1009.
    "MAX_FRAME_BYTES": 16 * 1024,
    # Messages sent to a member when it joins without since=.
    "HISTORY_COUNT": 50,
    # Most messages replayed to a client reconnecting with since=; a longer gap gets
    # recovered: false and the latest HISTORY_COUNT messages instead.
    "REPLAY_LIMIT": 500,
    # Frames queued for one socket before it counts as too slow and is closed with
    # 1013 (reconnect and recover). Must exceed max(REPLAY_LIMIT, HISTORY_COUNT).
    "OUTBOUND_BUFFER_FRAMES": 1000,
    # Longest room name, in characters (after NFC normalisation).
    "ROOM_NAME_MAX_CHARS": 200,
    # Whether users who are not logged in may post (the seed's rooms are open to all).
    "ALLOW_ANONYMOUS": True,
    # Browser origins allowed to open a WebSocket besides the site's own (the handshake's
    # scheme, Host and port, exactly): "https://app.example.com", "https://*.example.com"
    # (a domain and its subdomains), "null" or "*" (every origin; both warn). Clients that
    # send no Origin (not browsers) are allowed. See roomcast.origins.
    "ALLOWED_ORIGINS": [],
    # Keys accepted by the HTTP push API (Authorization: Bearer KEY). Empty: API off.
    "API_KEYS": [],
    # CHANNEL_LAYERS alias the hub uses to link processes.
    "CHANNEL_LAYER": "default",
    # Seconds a synchronous push waits for the channel layer before raising PushError.
    "PUBLISH_TIMEOUT_SECS": 10.0,
    # Seconds between the hub's checks of each of its rooms against the database. A
    # message whose publish never reached this process (Redis restarted while it was
    # subscribed, a layer queue overflowed) and that no later message exposes as a gap
    # is delivered within two checks: this bounds how late such a message can be.
    "POSITION_CHECK_SECS": 5.0,
    # Posts waiting to be stored in one process, at most; past it a post is refused with
    # a "busy" error event (the client sends it again).
    "STORE_QUEUE_LIMIT": 10_000,
    # PostgreSQL: longest wait, in milliseconds, of a writer thread for a room's row
    # lock held by another transaction; past it the room's posts are set aside and
    # retried every second while the rest is stored.
    "STORE_LOCK_TIMEOUT_MS": 1000,
    # Seconds a post may stay set aside (its room locked) before it fails with "busy".
    "STORE_LOCKED_GIVE_UP_SECS": 30.0,
    # Bytes of frames queued for one socket before it counts as too slow (closed with
    # 1013, like OUTBOUND_BUFFER_FRAMES; whichever is reached first). A join's catch-up
    # (at most REPLAY_LIMIT frames) is allowed on top while it drains.
    "OUTBOUND_BUFFER_BYTES": 1024 * 1024,
    # Dotted path of a callable check(user, room, action) -> bool that replaces the
    # built-in access policy (roomcast.access); None: the built-in one.
    "ACCESS_POLICY": None,
    # Lifetime of a connection token when issue_token() is not given one, in seconds.
    "TOKEN_TTL_SECS": 3600.0,
    # roomcast serve's connection limits, per process (roomcast.server.guard). Open
    # connections at most; None: 90% of the open-file limit. Over it: HTTP 503.
    "MAX_CONNECTIONS": None,
    # Open connections from one IP address at most (0: no cap). Behind a proxy every
    # connection comes from the proxy: raise it or set 0 there, and limit in the proxy.
    "MAX_CONNECTIONS_PER_ADDRESS": 1000,
    # Seconds for a request (or a WebSocket handshake) to arrive whole and be answered
    # by the application; a connection that sends nothing, or drips its headers, is
    # closed after it.
    "HANDSHAKE_TIMEOUT_SECS": 10.0,
    # Seconds a socket may take no data while data waits for it (a client that stopped
    # reading); past it the connection is reset and its buffers released.
    "SEND_TIMEOUT_SECS": 30.0,
    # Seconds the server waits for the client to answer its close frame before it
    # resets the connection.
    "CLOSE_TIMEOUT_SECS": 5.0,
    # roomcast serve: the kernel's send buffer per socket, in bytes (SO_SNDBUF); None
    # leaves it to the kernel's autotuning (up to tcp_wmem's maximum, 4 MB on Linux). A
    # cap bounds what a client that stops reading holds before it is cut off.
    "SOCKET_SEND_BUFFER_BYTES": None,
    # Posts per second one socket may make, on average (0: no limit), and how many it may
    # make at once after a pause; over it a post is refused with a rate_limited error
    # (roomcast.limits). Per process. A person types a few messages a second at most.
    "POST_RATE_PER_SOCKET": 5.0,
    "POST_BURST_PER_SOCKET": 10,
    # The same for all of one user's sockets together, in this process (0: no limit).
    "POST_RATE_PER_USER": 10.0,
    "POST_BURST_PER_USER": 20,
    # A socket refused this many times within about RATE_LIMIT_WINDOW_SECS (it ignores
    # retry_after) is closed with 4429 (0: never closed for it).
    "RATE_LIMIT_CLOSE_AFTER": 10,
    "RATE_LIMIT_WINDOW_SECS": 10.0,
    # Room sockets one user, and one client address (IPv6: one /64), may have open in
    # this process; one more is closed with 4429 (0: no cap). Behind a proxy that hides
    # client addresses, set MAX_SOCKETS_PER_ADDRESS to 0.
    "MAX_SOCKETS_PER_USER": 100,
    "MAX_SOCKETS_PER_ADDRESS": 500,
    # Rooms one /ws/ connection may be subscribed to at once; one more subscribe gets a
    # too_many_subscriptions error.
    "MAX_SUBSCRIPTIONS": 100,
    # /ws/ subscribes and presence requests one socket may make per second, on average,
    # after a burst of MAX_SUBSCRIPTIONS (0: no limit); over it: a rate_limited error.
    "ROOM_REQUESTS_PER_SOCKET": 10.0,
    # Seconds between two typing frames forwarded for one user in one room (per process);
    # the ones in between are dropped, whatever the client sends.
    "TYPING_INTERVAL_SECS": 2.0,
    # Seconds after posting during which the author may edit or delete a message (0:
    # never; moderators, staff and room admins, always may).
    "EDIT_WINDOW_SECS": 900.0,
    # Seconds a room stays subscribed in a process after its last member there left, so
    # that a socket coming back (a page load, a reconnect, a user's own stream at each
    # connect) finds it ready: no layer subscription, no database read (0: unsubscribe
    # at once). At most 1,000 such rooms per process (hub.LINGER_MAX_ROOMS).
    "ROOM_LINGER_SECS": 30.0,
    # Presence (roomcast.presence). A process that stops refreshing its entries (it
    # died) drops out of everyone's presence after this many seconds, with leave frames.
    "PRESENCE_TTL_SECS": 30.0,
    # Join/leave changes of a room are gathered for this long and sent together.
    "PRESENCE_BATCH_SECS": 0.2,
    # Rooms with more users than this get presence_count frames instead of join/leave.
    "PRESENCE_LIVE_MAX": 200,
    # Those rooms get one presence_count frame at most this often, in seconds.
    "PRESENCE_COUNT_SECS": 2.0,
    # Users listed in a presence frame at most (the rest are counted).
    "PRESENCE_LIST_MAX": 1000,
    # Whether GET /metrics answers without an API key. Off: the counts tell who is active
    # and when, so Prometheus sends Authorization: Bearer <API key>.
    "METRICS_PUBLIC": False,
    # roomcast serve, on SIGTERM: seconds over which it closes its WebSockets, in evenly
    # spaced batches, with 1012 (service restart: reconnect with since=), so that the
    # clients come back to the other processes a few at a time; 0 closes them all at
    # once. A socket's post being stored is stored and acked before its close
    # (roomcast.server.drain).
    "DRAIN_SECS": 5.0,
}

#: Keys that ``settings_from_environ`` does not read (the server has its own variable).
_NOT_FROM_ENVIRON = frozenset({"API_KEYS"})
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
#: Keys whose default None means "work it out" (``auto`` in the environment).
_INT_OR_AUTO = frozenset({"MAX_CONNECTIONS", "SOCKET_SEND_BUFFER_BYTES"})


#: roomcast serve's own variables (docs/settings.md), and the test suite's.
SERVER_VARIABLES = frozenset(
    f"ROOMCAST_{name}"
    for name in (
        "DATA_DIR", "DATABASE_URL", "REDIS_URL", "LAYER", "REDIS_PREFIX", "SECRET_KEY",
        "API_KEY", "ALLOWED_HOSTS", "DEBUG", "LOG_LEVEL", "LOG_FORMAT", "ACCESS_LOG",
        "TEST_POSTGRES", "TEST_SQLITE",
    )
)  # fmt: skip


def unknown_environ(environ: Mapping[str, str]) -> list[str]:
    """A line for each ``ROOMCAST_*`` variable that nothing reads (a misspelling?)."""
    known = SERVER_VARIABLES | {f"ROOMCAST_{key}" for key in DEFAULTS}
    lines = []
    for name in sorted(n for n in environ if n.startswith("ROOMCAST_") and n not in known):
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        lines.append(f"{name} is not a roomcast variable and is ignored.{hint}")
    return lines


def settings_from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """``ROOMCAST`` values from ``ROOMCAST_<KEY>`` variables, for ``roomcast serve``.

    Each is parsed as its default's type: whole numbers, numbers, booleans
    (``1/true/yes/on``, ``0/false/no/off``), comma-separated lists (``ALLOWED_ORIGINS``),
    text. A value that does not parse raises ImproperlyConfigured naming the variable;
    one that parses but is out of range is left to the system checks.
    """
    values: dict[str, Any] = {}
    for key, default in DEFAULTS.items():
        name = f"ROOMCAST_{key}"
        raw = environ.get(name)
        if raw is None or key in _NOT_FROM_ENVIRON:
            continue
        raw = raw.strip()
        try:
            if isinstance(default, bool):
                if raw.lower() not in _TRUE + _FALSE:
                    raise ValueError
                values[key] = raw.lower() in _TRUE
            elif isinstance(default, int):
                values[key] = int(raw)
            elif isinstance(default, float):
                values[key] = float(raw)
            elif key in _INT_OR_AUTO:
                values[key] = None if raw.lower() in ("", "auto") else int(raw)
            elif isinstance(default, list):  # ALLOWED_ORIGINS: "https://a.example, null"
                values[key] = [item.strip() for item in raw.split(",") if item.strip()]
            else:
                values[key] = raw
        except ValueError:
            kind = (
                "true or false"
                if isinstance(default, bool)
                else "a whole number"
                if isinstance(default, int)
                else "a whole number or auto"
                if key in _INT_OR_AUTO
                else "a number"
            )
            raise ImproperlyConfigured(f"{name} must be {kind}, not {raw!r}.") from None
    return values


class RoomcastSettings:
    """Attribute access to ``settings.ROOMCAST`` over :data:`DEFAULTS`."""

    def __init__(self) -> None:
        self._cached: dict[str, Any] | None = None

    @property
    def user_settings(self) -> dict[str, Any]:
        """The project's ``ROOMCAST`` dict, checked for unknown keys."""
        configured = getattr(settings, "ROOMCAST", {})
        if not isinstance(configured, dict):
            raise ImproperlyConfigured("settings.ROOMCAST must be a dict.")
        for key in configured:
            if key not in DEFAULTS:
                close = difflib.get_close_matches(key, DEFAULTS, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ImproperlyConfigured(
                    f"Unknown setting ROOMCAST[{key!r}].{hint} "
                    f"Known settings: {', '.join(sorted(DEFAULTS))}."
                )
        return configured

    def _values(self) -> dict[str, Any]:
        if self._cached is None:
            self._cached = {**DEFAULTS, **self.user_settings}
        return self._cached

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in DEFAULTS:
            raise AttributeError(f"Invalid roomcast setting: {name!r}")
        return self._values()[name]

    def reload(self) -> None:
        """Forget cached values (called when ``settings.ROOMCAST`` changes)."""
        self._cached = None


roomcast_settings = RoomcastSettings()


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "ROOMCAST":
        roomcast_settings.reload()


setting_changed.connect(_reload)
