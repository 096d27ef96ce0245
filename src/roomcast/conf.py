"""roomcast settings: one ``ROOMCAST`` dict in the Django settings, read lazily.

Like DRF's ``api_settings``: ``DEFAULTS`` below, the user's dict on top, nothing read at
import time, the cache dropped on ``setting_changed`` so ``override_settings`` works.
Unknown keys raise at first use with a hint; bad values are reported by the system
checks in ``checks.py`` (``roomcast.E001``...) before the server starts.
"""

from __future__ import annotations

import difflib
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
    # Origins allowed to open a WebSocket from a browser; None means the origins of
    # ALLOWED_HOSTS (any scheme and port). Clients that send no Origin are allowed.
    "ALLOWED_ORIGINS": None,
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
}


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
