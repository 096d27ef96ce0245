"""System checks: a bad ROOMCAST setting stops the server at start-up with what to fix.

Ids: ``roomcast.E001``... for errors, ``roomcast.W001``... for warnings (a setting that
works but opens more than its author may mean). ``roomcast serve`` runs these checks
before it binds a port and prints the warnings; ``manage.py check`` (and ``runserver``,
``migrate``) runs them in a project that installs the app.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from .conf import roomcast_settings
from .origins import ANY_ORIGIN, NULL_ORIGIN, OriginSettingError, parse_allowed

_POSITIVE_INTS = (
    "MAX_FRAME_BYTES",
    "HISTORY_COUNT",
    "REPLAY_LIMIT",
    "OUTBOUND_BUFFER_FRAMES",
    "ROOM_NAME_MAX_CHARS",
    "STORE_QUEUE_LIMIT",
    "STORE_LOCK_TIMEOUT_MS",
    "OUTBOUND_BUFFER_BYTES",
    "POST_BURST_PER_SOCKET",
    "POST_BURST_PER_USER",
    "MAX_SUBSCRIPTIONS",
    "PRESENCE_LIVE_MAX",
    "PRESENCE_LIST_MAX",
)
#: Whole numbers where 0 turns the limit off.
_LIMIT_INTS = (
    "MAX_CONNECTIONS_PER_ADDRESS",
    "RATE_LIMIT_CLOSE_AFTER",
    "MAX_SOCKETS_PER_USER",
    "MAX_SOCKETS_PER_ADDRESS",
)
#: Longest drain (DRAIN_SECS), in seconds: a service manager kills a process that takes
#: longer to stop (systemd's default TimeoutStopSec is 90 s), and a drain that long spreads
#: reconnects thinner than any server needs.
MAX_DRAIN_SECS = 600
#: Rates (per second) where 0 turns the limit off.
_RATES = ("POST_RATE_PER_SOCKET", "POST_RATE_PER_USER", "ROOM_REQUESTS_PER_SOCKET")


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Validate ``settings.ROOMCAST`` and the channel layer it names."""
    try:
        roomcast_settings.reload()
        roomcast_settings.user_settings  # noqa: B018  (raises on unknown keys)
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="roomcast.E001")]
    errors: list[CheckMessage] = []
    for key in _POSITIVE_INTS:
        value = getattr(roomcast_settings, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            errors.append(
                Error(
                    f"ROOMCAST[{key!r}] must be a positive integer, not {value!r}.",
                    hint="Set it to a whole number above 0, or remove it for the default.",
                    id="roomcast.E002",
                )
            )
    for key in _LIMIT_INTS:
        value = getattr(roomcast_settings, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            errors.append(
                Error(
                    f"ROOMCAST[{key!r}] must be a whole number (0 for no limit), not {value!r}.",
                    id="roomcast.E012",
                )
            )
    value = roomcast_settings.SOCKET_SEND_BUFFER_BYTES
    if value is not None and (
        not isinstance(value, int) or isinstance(value, bool) or value < 4096
    ):
        errors.append(
            Error(
                f"ROOMCAST['SOCKET_SEND_BUFFER_BYTES'] must be None (the kernel's autotuning) "
                f"or a whole number of bytes of at least 4096, not {value!r}.",
                id="roomcast.E019",
            )
        )
    for key in _RATES:
        value = getattr(roomcast_settings, key)
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not 0 <= value < float("inf")
        ):
            errors.append(
                Error(
                    f"ROOMCAST[{key!r}] must be a number of posts per second, 0 or more "
                    f"(0 for no limit), not {value!r}.",
                    id="roomcast.E017",
                )
            )
    value = roomcast_settings.MAX_CONNECTIONS
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        errors.append(
            Error(
                f"ROOMCAST['MAX_CONNECTIONS'] must be a positive whole number or None "
                f"(90% of the open-file limit), not {value!r}.",
                id="roomcast.E013",
            )
        )
    if not errors:
        replay = max(roomcast_settings.REPLAY_LIMIT, roomcast_settings.HISTORY_COUNT)
        if roomcast_settings.OUTBOUND_BUFFER_FRAMES <= replay:
            errors.append(
                Error(
                    "ROOMCAST['OUTBOUND_BUFFER_FRAMES'] must be larger than REPLAY_LIMIT and "
                    "HISTORY_COUNT: a replay is queued whole and would close every socket "
                    "that recovers as too slow.",
                    hint=f"Raise OUTBOUND_BUFFER_FRAMES above {replay}.",
                    id="roomcast.E003",
                )
            )
    if not isinstance(roomcast_settings.ALLOW_ANONYMOUS, bool):
        errors.append(
            Error("ROOMCAST['ALLOW_ANONYMOUS'] must be True or False.", id="roomcast.E004")
        )
    if not isinstance(roomcast_settings.METRICS_PUBLIC, bool):
        errors.append(
            Error("ROOMCAST['METRICS_PUBLIC'] must be True or False.", id="roomcast.E022")
        )
    errors.extend(_check_allowed_origins(roomcast_settings.ALLOWED_ORIGINS))
    keys = roomcast_settings.API_KEYS
    if not isinstance(keys, list | tuple) or not all(
        isinstance(k, str) and len(k) >= 16 for k in keys
    ):
        errors.append(
            Error(
                "ROOMCAST['API_KEYS'] must be a list of strings of at least 16 characters.",
                hint="Generate one with: "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'",
                id="roomcast.E006",
            )
        )
    for key, check_id in (
        ("PUBLISH_TIMEOUT_SECS", "roomcast.E007"),
        ("POSITION_CHECK_SECS", "roomcast.E009"),
        ("STORE_LOCKED_GIVE_UP_SECS", "roomcast.E010"),
        ("HANDSHAKE_TIMEOUT_SECS", "roomcast.E014"),
        ("SEND_TIMEOUT_SECS", "roomcast.E014"),
        ("CLOSE_TIMEOUT_SECS", "roomcast.E014"),
        ("TOKEN_TTL_SECS", "roomcast.E016"),
        ("RATE_LIMIT_WINDOW_SECS", "roomcast.E018"),
        ("TYPING_INTERVAL_SECS", "roomcast.E020"),
        ("PRESENCE_TTL_SECS", "roomcast.E020"),
        ("PRESENCE_BATCH_SECS", "roomcast.E020"),
        ("PRESENCE_COUNT_SECS", "roomcast.E020"),
    ):
        value = getattr(roomcast_settings, key)
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            errors.append(Error(f"ROOMCAST[{key!r}] must be a positive number.", id=check_id))
    value = roomcast_settings.ROOM_LINGER_SECS
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 86400:
        errors.append(
            Error(
                f"ROOMCAST['ROOM_LINGER_SECS'] must be a number of seconds from 0 (rooms "
                f"unsubscribe as their last member leaves) to 86400, not {value!r}.",
                id="roomcast.E024",
            )
        )
    value = roomcast_settings.EDIT_WINDOW_SECS
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1e12:
        errors.append(
            Error(
                f"ROOMCAST['EDIT_WINDOW_SECS'] must be a number of seconds, 0 or more "
                f"(0: authors never edit), not {value!r}.",
                id="roomcast.E021",
            )
        )
    value = roomcast_settings.DRAIN_SECS
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not 0 <= value <= MAX_DRAIN_SECS
    ):
        errors.append(
            Error(
                f"ROOMCAST['DRAIN_SECS'] must be a number of seconds from 0 (close every "
                f"socket at once) to {MAX_DRAIN_SECS:g}, not {value!r}.",
                id="roomcast.E023",
            )
        )
    errors.extend(_check_access_policy(roomcast_settings.ACCESS_POLICY))
    alias = roomcast_settings.CHANNEL_LAYER
    if alias not in getattr(settings, "CHANNEL_LAYERS", {}):
        errors.append(
            Error(
                f"ROOMCAST['CHANNEL_LAYER'] is {alias!r}, but CHANNEL_LAYERS has no such alias.",
                hint="Add it to CHANNEL_LAYERS, e.g. {'default': {'BACKEND': "
                "'channels.layers.InMemoryChannelLayer'}} for one process.",
                id="roomcast.E008",
            )
        )
    return errors


def _check_allowed_origins(origins: Any) -> list[CheckMessage]:
    """E005 for a wrong type, E011 for each entry that is not an origin (with the origin
    to write), W001 for ``*``, W002 for ``null``."""
    if origins is None:  # the default before origins were checked exactly: same as []
        return []
    if not isinstance(origins, list | tuple) or not all(isinstance(o, str) for o in origins):
        return [
            Error(
                "ROOMCAST['ALLOWED_ORIGINS'] must be a list of origins "
                "such as 'https://chat.example.com'.",
                hint="The site's own origin needs no entry: use [] for it alone.",
                id="roomcast.E005",
            )
        ]
    messages: list[CheckMessage] = []
    for entry in origins:
        if entry in (ANY_ORIGIN, NULL_ORIGIN):
            continue
        try:
            parse_allowed(entry)
        except OriginSettingError as exc:
            messages.append(
                Error(
                    str(exc),
                    hint=f"{exc.hint} (ROOMCAST_ALLOWED_ORIGINS for roomcast serve: "
                    "origins separated by commas.)",
                    id="roomcast.E011",
                )
            )
    if ANY_ORIGIN in origins:
        messages.append(
            Warning(
                "ROOMCAST['ALLOWED_ORIGINS'] contains '*': pages of every origin, 'null' "
                "included, may open a WebSocket carrying your users' sessions.",
                hint="List the origins of your own front ends instead, e.g. "
                "'https://app.example.com'; the site's own origin needs no entry.",
                id="roomcast.W001",
            )
        )
    elif NULL_ORIGIN in origins:
        messages.append(
            Warning(
                "ROOMCAST['ALLOWED_ORIGINS'] contains 'null': sandboxed iframes and file: "
                "or data: pages, which any site can make, may open a WebSocket carrying "
                "your users' sessions.",
                hint="Remove it unless such pages are your own and the rooms hold nothing private.",
                id="roomcast.W002",
            )
        )
    return messages


def _check_access_policy(path: Any) -> list[CheckMessage]:
    """E015 unless ACCESS_POLICY is None or the dotted path of a callable."""
    if path is None:
        return []
    problem = None
    if not isinstance(path, str) or "." not in path:
        problem = f"must be the dotted path of a callable, like 'myapp.access.check', not {path!r}"
    else:
        try:
            function = import_string(path)
        except ImportError as exc:
            problem = f"{path!r} does not import ({exc})"
        else:
            if not callable(function):
                problem = f"{path!r} is not callable"
    if problem is None:
        return []
    return [
        Error(
            f"ROOMCAST['ACCESS_POLICY'] {problem}.",
            hint="Point it at check(user, room, action) -> bool, or remove it for the "
            "built-in policy (public, private and read-only rooms).",
            id="roomcast.E015",
        )
    ]
