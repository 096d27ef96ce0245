"""Settings of the standalone site that ``roomcast serve`` runs. Environment-driven.

================================  ===========================================================
ROOMCAST_DATA_DIR                 where SQLite, the secret key and the API key live
                                  (default ``./.roomcast``; kept 0700, files 0600)
ROOMCAST_DATABASE_URL             ``sqlite:///path`` or ``postgres://user@host/db``
                                  (default: SQLite in the data dir)
ROOMCAST_REDIS_URL                ``redis://host:6379/0``: link processes through Redis; several
                                  URLs, comma-separated, are shards; ``redis+sentinel://h1:26379,
                                  h2:26379/mymaster`` asks Sentinel (redis_urls.py)
                                  (default: in-memory layer, one process)
ROOMCAST_LAYER                    ``pubsub`` (default) or ``core``: which channels_redis layer
ROOMCAST_REDIS_PREFIX             key/channel prefix on Redis (default ``roomcast``)
ROOMCAST_SECRET_KEY               Django SECRET_KEY (default: generated, kept in the data dir)
ROOMCAST_API_KEY                  key of the HTTP push API (default: generated, in the data dir)
ROOMCAST_ALLOWED_HOSTS            comma-separated (default ``localhost,127.0.0.1,[::1]``;
                                  roomcast serve adds its ``--host`` address)
ROOMCAST_DEBUG                    ``1`` for Django's debug mode
ROOMCAST_LOG_LEVEL                ``debug``, ``info`` (default), ``warning``, ``error``
ROOMCAST_LOG_FORMAT               ``text`` (default) or ``json`` (one object per line)
ROOMCAST_ACCESS_LOG               ``1``: a line per request and WebSocket session
                                  (default: on with ``debug``)
================================  ===========================================================
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from roomcast.conf import settings_from_environ
from roomcast.server import redis_urls
from roomcast.server.data_dir import create_private_file, private_data_dir

DATA_DIR = Path(os.environ.get("ROOMCAST_DATA_DIR") or Path.cwd() / ".roomcast").resolve()
# 0700 and its files 0600, whatever the umask: messages, sessions and keys (data_dir.py).
if _tightened := private_data_dir(DATA_DIR):
    print(f"roomcast: {_tightened}", file=sys.stderr, flush=True)


def _kept_secret(name: str, env: str) -> str:
    """The value of ``env``, else a random secret generated once and kept in DATA_DIR.

    ``roomcast serve`` loads these settings once before it starts worker processes, so
    workers only read the file; O_EXCL keeps two first runs from keeping different keys.
    """
    if os.environ.get(env):
        return os.environ[env]
    path = DATA_DIR / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another first run won the race: use its key
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


SECRET_KEY = _kept_secret("secret_key", "ROOMCAST_SECRET_KEY")
DEBUG = os.environ.get("ROOMCAST_DEBUG", "") in ("1", "true", "yes")
ALLOWED_HOSTS = [
    h.strip()
    for h in os.environ.get("ROOMCAST_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
    if h.strip()
]
# Django never matches an entry with a scheme, port or path: no request would get through.
for _allowed in ALLOWED_HOSTS:
    if "/" in _allowed or (":" in _allowed and not _allowed.startswith("[")):
        raise ImproperlyConfigured(
            f"ROOMCAST_ALLOWED_HOSTS: {_allowed!r} is not a host name; give names and addresses "
            "without scheme, port or path (IPv6 in brackets: [::1]), comma-separated, e.g. "
            "ROOMCAST_ALLOWED_HOSTS=chat.example.com,192.0.2.10"
        )

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "roomcast",
]
MIDDLEWARE = [
    # First: the access line of each request (with --access-log), its user and room.
    "roomcast.server.access.AccessLogMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "roomcast.server.urls"
ASGI_APPLICATION = "roomcast.server.asgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

_database_url = os.environ.get("ROOMCAST_DATABASE_URL") or f"sqlite:///{DATA_DIR / 'db.sqlite3'}"
try:
    _database = dj_database_url.parse(_database_url, conn_max_age=600, conn_health_checks=True)
except ValueError as exc:  # unknown scheme
    raise ImproperlyConfigured(
        f"ROOMCAST_DATABASE_URL={_database_url!r} is not a database URL ({exc}); "
        "use sqlite:///path/to/db.sqlite3 or postgres://user@host:5432/dbname."
    ) from None
if _database["ENGINE"] not in (
    "django.db.backends.sqlite3",
    "django.db.backends.postgresql",
):
    raise ImproperlyConfigured(
        f"ROOMCAST_DATABASE_URL={_database_url!r}: roomcast serve runs on SQLite or "
        "PostgreSQL; use sqlite:///path/to/db.sqlite3 or postgres://user@host:5432/dbname."
    )
if _database["ENGINE"] == "django.db.backends.sqlite3":
    if _database["NAME"] and _database["NAME"] != ":memory:":
        # Created 0600 before SQLite opens it, which gives -wal and -shm the same mode.
        create_private_file(Path(_database["NAME"]))
    # Kept open (600 s, health-checked, as for PostgreSQL): with 0, every database call
    # of a join (token, user stream, cursors) opened a new SQLite connection and ran the
    # PRAGMAs below, and under a flat-out fan-out 50 joins/s managed 7/s with a 12.7 s
    # median join; kept open, 49.8/s at 119 ms (benchmarks/results/2026-11-29-churn-conn.md).
    _database["CONN_MAX_AGE"] = 600
    _database["OPTIONS"] = {
        # WAL lets readers run beside the writer; IMMEDIATE takes the write lock at
        # BEGIN, so two processes queue (for up to `timeout` s) instead of deadlocking.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
else:
    # Fail a connection attempt after 5 s (unless the URL says otherwise): libpq would
    # wait for the OS, minutes for an unreachable host, while posts queue behind it.
    _database.setdefault("OPTIONS", {}).setdefault("connect_timeout", 5)
    # So that pg_stat_activity tells roomcast's connections from others.
    _database["OPTIONS"].setdefault("application_name", "roomcast")
DATABASES = {"default": _database}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_redis_url = os.environ.get("ROOMCAST_REDIS_URL", "")
_layer = os.environ.get("ROOMCAST_LAYER", "pubsub")
if _layer not in ("pubsub", "core"):
    raise ImproperlyConfigured(f"ROOMCAST_LAYER={_layer!r}: use 'pubsub' or 'core'.")
if _redis_url:
    try:
        # One host spec per shard (comma-separated URLs, redis+sentinel:// for Sentinel:
        # roomcast.server.redis_urls), each with these connection options.
        _hosts = redis_urls.parse(
            _redis_url,
            # redis-py 8 defaults to a 5 s socket timeout, equal to the core layer's 5 s
            # blocking read, and to 100 pooled connections: both stall under connect bursts.
            socket_timeout=15,
            socket_connect_timeout=5,
            max_connections=1000,
            # RESP2, not redis-py 8's default RESP3: in a standalone reproduction (redis-py
            # 8.1, channels_redis 4.3) a RESP3 pub/sub layer resubscribed after a Redis
            # restart yet received nothing more; on RESP2 it resumed at once. The hub's
            # position check would still deliver, but only every POSITION_CHECK_SECS.
            protocol=2,
        )
    except redis_urls.RedisURLError as exc:
        raise ImproperlyConfigured(f"ROOMCAST_REDIS_URL: {exc}") from None
    _prefix = os.environ.get("ROOMCAST_REDIS_PREFIX", "roomcast")
    CHANNEL_LAYERS: dict[str, dict[str, Any]] = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer"
            if _layer == "pubsub"
            else "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": _hosts, "prefix": _prefix}
            if _layer == "pubsub"
            else {"hosts": _hosts, "prefix": _prefix, "capacity": 1000},
        }
    }
else:
    # One process: the hub drains each room's channel as messages arrive; a burst larger
    # than this shows up as a gap and is read back from the database.
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "roomcast.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1000}}
    }

# Every other ROOMCAST key from ROOMCAST_<KEY> (docs/settings.md), e.g. ROOMCAST_HISTORY_COUNT.
ROOMCAST = {
    "API_KEYS": [_kept_secret("api_key", "ROOMCAST_API_KEY")],
    **settings_from_environ(os.environ),
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
# The web app (roomcast.app_views): its login page, and the rooms after logging in.
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/rooms/"

_LOG_LEVEL = os.environ.get("ROOMCAST_LOG_LEVEL", "info").upper()
if _LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR"):
    raise ImproperlyConfigured(
        f"ROOMCAST_LOG_LEVEL={_LOG_LEVEL.lower()!r}: use debug, info, warning or error."
    )
_LOG_FORMAT = os.environ.get("ROOMCAST_LOG_FORMAT", "text").lower()
if _LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"ROOMCAST_LOG_FORMAT={_LOG_FORMAT!r}: use text or json.")
_ACCESS_LOG = os.environ.get("ROOMCAST_ACCESS_LOG", "").lower()
if _ACCESS_LOG not in ("", "1", "true", "yes", "on", "0", "false", "no", "off"):
    raise ImproperlyConfigured(f"ROOMCAST_ACCESS_LOG={_ACCESS_LOG!r}: use 1 (on) or 0 (off).")
# Unset: on with debug, as roomcast serve decides (it sets the variable for its workers).
_ACCESS = _ACCESS_LOG in ("1", "true", "yes", "on") or (not _ACCESS_LOG and _LOG_LEVEL == "DEBUG")
# One line per event that matters; per-request noise at DEBUG (roomcast.server.logs).
# roomcast.access: a line per WebSocket session at INFO, shown with the access log only.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"()": "roomcast.server.logs.JsonFormatter"}
        if _LOG_FORMAT == "json"
        else {
            "()": "roomcast.server.logs.TextFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s: %(message)s",
        }
    },
    "filters": {
        "client_errors_at_debug": {"()": "roomcast.server.logs.ClientErrorsAtDebug"},
        "one_line_client_errors": {"()": "roomcast.server.logs.OneLineClientErrors"},
        "socket_fields": {"()": "roomcast.socket_log.SocketFields"},
    },
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "level": _LOG_LEVEL,
            "filters": ["one_line_client_errors", "socket_fields"],
        },
        # Beside uvicorn's access lines (stdout).
        "access": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "stream": "ext://sys.stdout",
        },
    },
    "loggers": {
        "roomcast": {"handlers": ["stderr"], "level": _LOG_LEVEL},
        "roomcast.access": {
            "handlers": ["access"],
            "level": "INFO" if _ACCESS else "WARNING",
            "propagate": False,
        },
        "django": {"handlers": ["stderr"], "level": "WARNING"},
        "django.request": {"filters": ["client_errors_at_debug"]},
    },
}
