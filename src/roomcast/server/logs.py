"""Logging of the bundled site (``roomcast serve``): one line per event that matters.

At the default level (INFO) the log holds the start-up lines, warnings and errors.
Lines that come with every connection or request are kept at DEBUG, shown by
``--log-level debug``:

* uvicorn's websockets protocol logs ``connection open`` (``connection rejected``, and
  ``connection closed`` when the client's EOF reaches it) at INFO for every socket
  (through the ``websockets`` library's logger, which uvicorn sets to ``uvicorn.error``),
  and a handshake line (``"WebSocket /ws/..." [accepted]``) even with the access log off:
  :class:`QuietConnections` demotes them (the handshake line stays at INFO with
  ``--access-log``, beside the HTTP requests).
* Django logs a WARNING for each 4xx response (``Not Found: /favicon.ico``, a scanner's
  probes): :class:`ClientErrorsAtDebug` demotes them; 5xx stay ERROR.
* A request for a host name the site does not answer to, and any other client-caused
  ``SuspiciousOperation``, logs an ERROR with a traceback that says nothing about the
  server: :class:`OneLineClientErrors` keeps one line, and for ``DisallowedHost`` names
  the variable that fixes it (``ROOMCAST_ALLOWED_HOSTS``, not Django's setting).
* Secrets are never written: at DEBUG websockets logs each handshake header, which would
  put the ``Authorization: Bearer`` token and the session cookie in the log, and the
  handshake and access lines carry the URL's query, where a client may have put a
  ``?token=`` (refused, but already sent): :class:`RedactSecrets` blanks them.

A demoted record gets level DEBUG before the handlers see it, so each handler's level
(the chosen log level) decides whether it is written.

The access log (``--access-log``) is one INFO line per HTTP request (``uvicorn.access``),
one per WebSocket session when it ends (``roomcast.access``, see
``roomcast.socket_log``) and one per refused handshake; the ``[accepted]`` handshake
line is DEBUG, as the session's line says more.

Two formats (``--log-format``): ``text``, the lines above, with ``room=...
user=...`` added to a record logged while a socket was served; and ``json``
(:class:`JsonFormatter`), one object per line for a log shipper. Written by hand:
``python-json-logger`` would format the object, but the fields that matter here (an
access record's client, path and status, the socket's room and user) still need the
mapping below, which is most of the code.

Layer: server (standalone site); imports the standard library only, so the settings can
name these filters without importing uvicorn or Django.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

#: websockets' per-connection lines (``websockets.server``, ``websockets.protocol``),
#: as the format strings it logs them with.
CONNECTION_LINES = frozenset(
    {
        "connection open",
        "connection closed",
        "connection rejected (%d %s)",  # the app refused the handshake (a bad Origin)
        "HTTP response sent (%d %s)",
    }
)
#: The start of uvicorn's handshake lines: ``'%s - "WebSocket %s" [accepted]'``, ``403``...
HANDSHAKE_PREFIX = '%s - "WebSocket %s"'
#: uvicorn's line for an accepted handshake: DEBUG always (the session's end has a line).
HANDSHAKE_ACCEPTED = '%s - "WebSocket %s" [accepted]'
LOG_FORMATS = ("text", "json")
#: Fields a record may carry (``extra=``, or from its socket, ``roomcast.socket_log``),
#: in the order they are written.
FIELDS = (
    "room", "rooms", "user", "client", "method", "path", "status", "code",
    "duration_ms", "frames_in",
)  # fmt: skip
#: Of these, the ones a text line adds as ``key=value`` (the rest are in its message).
TEXT_FIELDS = ("room", "rooms", "user")
#: The arguments of uvicorn's access records: ``'%s - "%s %s HTTP/%s" %d'``.
ACCESS_ARGS = ("client", "method", "path", "http_version", "status")
#: Longest logged message of a client-caused error: the Host header is the client's.
CLIENT_ERROR_MAX_CHARS = 300
#: Handshake headers whose values are credentials (a token, an API key, a session id).
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
#: websockets' format of a logged header line (``< name: value``, ``> name: value``).
HEADER_LINES = frozenset({"< %s: %s", "> %s: %s"})
#: A token (or key) in a URL's query: ``token=...``, ``api_key=...``, ``key=...``.
_QUERY_SECRET = re.compile(r"(?i)([?&](?:token|access_token|api_key|key)=)[^&#\s\"]*")
REDACTED = "[redacted]"


def redact_query(text: str) -> str:
    """``text`` (a URL or a log line) with a token or key in a query blanked."""
    return _QUERY_SECRET.sub(rf"\1{REDACTED}", text)


class RequestsAtDebug(logging.Filter):
    """On ``uvicorn.access``: its request lines to DEBUG. ``roomcast serve`` logs each
    request that reaches Django itself, with the user and the room
    (``server.access.AccessLogMiddleware``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _demote(record)
        return True


def _demote(record: logging.LogRecord) -> None:
    record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)


class QuietConnections(logging.Filter):
    """On ``uvicorn.error``: per-connection lines to DEBUG (handshakes: unless the access
    log is on)."""

    def __init__(self, access_log: bool = False) -> None:
        super().__init__()
        self.access_log = access_log

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else ""
        if (
            msg in CONNECTION_LINES
            or msg == HANDSHAKE_ACCEPTED
            or (msg.startswith(HANDSHAKE_PREFIX) and not self.access_log)
        ):
            _demote(record)
        return True


class ClientErrorsAtDebug(logging.Filter):
    """On ``django.request``: a 4xx response's WARNING becomes DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if isinstance(status, int) and status < 500:
            _demote(record)
        return True


class OneLineClientErrors(logging.Filter):
    """On the site's handler: ``django.security.*`` records (a client's bad Host header,
    too many fields...) without their traceback, and DisallowedHost naming
    ROOMCAST_ALLOWED_HOSTS."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("django.security."):
            return True
        message = record.getMessage()[:CLIENT_ERROR_MAX_CHARS]
        if record.name == "django.security.DisallowedHost":
            # Django: "Invalid HTTP_HOST header: 'h:8000'. You may need to add 'h' to
            # ALLOWED_HOSTS." The bundled site reads that setting from the environment.
            message = message.replace(
                " to ALLOWED_HOSTS.",
                " to ROOMCAST_ALLOWED_HOSTS (comma-separated) and restart roomcast serve.",
            )
        record.msg, record.args = message, None
        record.exc_info, record.exc_text = None, None
        return True


class RedactSecrets(logging.Filter):
    """On ``uvicorn.error`` and ``uvicorn.access``: credential headers and ``token=``
    query values replaced by ``[redacted]`` before any handler writes the line."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or not args:
            return True
        if record.msg in HEADER_LINES and len(args) == 2:
            if str(args[0]).lower() in SECRET_HEADERS:
                record.args = (args[0], REDACTED)
            return True
        if any(isinstance(a, str) and "=" in a for a in args):
            record.args = tuple(redact_query(a) if isinstance(a, str) else a for a in args)
        return True


def _text_fields(record: logging.LogRecord) -> str:
    parts = []
    for key in TEXT_FIELDS:
        value = getattr(record, key, None)
        if value is None:
            continue
        if isinstance(value, list | tuple):
            value = ",".join(map(str, value))
        text = str(value)
        if _needs_quotes(text):
            text = json.dumps(text, ensure_ascii=False)
        parts.append(f"{key}={text}")
    return " " + " ".join(parts) if parts else ""


def _needs_quotes(text: str) -> bool:
    return not text or any(c.isspace() or c in '"=\\' or not c.isprintable() for c in text)


class FieldsMixin(logging.Formatter):
    """Adds ``room=... user=...`` to the formatted message (before a traceback); a value
    with spaces or quotes is quoted as JSON, so a room name cannot forge a field."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record) + _text_fields(record)


class TextFormatter(FieldsMixin, logging.Formatter):
    """The ``text`` format of roomcast's and Django's records."""


def uvicorn_text_formatter(**kwargs: Any) -> logging.Formatter:
    """uvicorn's ``DefaultFormatter`` (``INFO:     ...``) with the fields (a dictConfig
    factory: uvicorn is imported only when the server configures its logging)."""
    from uvicorn.logging import DefaultFormatter

    class UvicornTextFormatter(FieldsMixin, DefaultFormatter):
        pass

    return UvicornTextFormatter(**kwargs)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (UTC, ISO 8601, ms),
    ``level``, ``logger``, ``message``, the :data:`FIELDS` the record has, and ``exc``
    (the traceback, as one string) or ``stack``. JSON escapes every newline, so a
    record is one line whatever it holds."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message.rstrip("\n"),
        }
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            out.update(zip(ACCESS_ARGS, args, strict=True))
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def uvicorn_log_config(level: str, *, access_log: bool, log_format: str = "text") -> dict[str, Any]:
    """uvicorn's default log configuration (``uvicorn.config.LOGGING_CONFIG``: its
    formatters, stderr for the server, stdout for the access log), handlers at ``level``,
    per-connection lines demoted by :class:`QuietConnections`, secrets blanked by
    :class:`RedactSecrets`; ``log_format`` ``json``: :class:`JsonFormatter` for both."""
    json_formatter = {"()": "roomcast.server.logs.JsonFormatter"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "quiet_connections": {
                "()": "roomcast.server.logs.QuietConnections",
                "access_log": access_log,
            },
            "redact_secrets": {"()": "roomcast.server.logs.RedactSecrets"},
            "socket_fields": {"()": "roomcast.socket_log.SocketFields"},
            "requests_at_debug": {"()": "roomcast.server.logs.RequestsAtDebug"},
        },
        "formatters": {
            "default": json_formatter
            if log_format == "json"
            else {
                "()": "roomcast.server.logs.uvicorn_text_formatter",
                "fmt": "%(levelprefix)s %(message)s",
                "use_colors": None,
            },
            "access": json_formatter
            if log_format == "json"
            else {
                "()": "uvicorn.logging.AccessFormatter",
                "fmt": '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s',
            },
        },
        "handlers": {
            "default": {
                "formatter": "default",
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "level": level.upper(),
                "filters": ["socket_fields"],
            },
            "access": {
                "formatter": "access",
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "level": level.upper(),
            },
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {
                "level": "INFO",
                "filters": ["redact_secrets", "quiet_connections"],
            },
            "uvicorn.access": {
                "handlers": ["access"],
                "level": "INFO",
                "propagate": False,
                "filters": ["redact_secrets", "requests_at_debug"],
            },
        },
    }
