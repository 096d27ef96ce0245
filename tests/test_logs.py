"""``roomcast serve``'s log formats (``roomcast.server.logs``) and the WebSocket session's
fields (``roomcast.socket_log``), on log records built as the servers build them.

Real servers writing these lines: ``tests/e2e/test_logs_e2e.py`` and
``tests/e2e/test_cli_serve.py``.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from roomcast import socket_log
from roomcast.server.logs import (
    JsonFormatter,
    QuietConnections,
    RedactSecrets,
    TextFormatter,
    uvicorn_log_config,
)


def record(
    msg: str,
    args: Any = None,
    *,
    name: str = "roomcast.consumers",
    level: int = logging.INFO,
    exc: bool = False,
    **extra: Any,
) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad\nframe")
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)
    rec.__dict__.update(extra)
    return rec


def test_json_is_one_object_per_line_with_the_traceback_inside():
    """An error with a multi-line message and a traceback is still one line of JSON."""
    line = JsonFormatter().format(
        record("Handling a %r frame failed\nsecond line", ("message",), level=40, exc=True)
    )
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["level"] == "ERROR" and obj["logger"] == "roomcast.consumers"
    assert obj["message"] == "Handling a 'message' frame failed\nsecond line"
    assert obj["exc"].startswith("Traceback (most recent call last)")
    assert obj["exc"].endswith("ValueError: bad\nframe")
    assert obj["time"].endswith("+00:00") and "T" in obj["time"]


def test_json_names_an_access_records_parts():
    """uvicorn's access record becomes client, method, path, status fields."""
    rec = record(
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/chat/?x=1", "1.1", 200),
        name="uvicorn.access",
    )
    obj = json.loads(JsonFormatter().format(rec))
    assert obj["message"] == '127.0.0.1:5000 - "GET /chat/?x=1 HTTP/1.1" 200'
    assert (obj["client"], obj["method"], obj["path"], obj["status"]) == (
        "127.0.0.1:5000",
        "GET",
        "/chat/?x=1",
        200,
    )


def test_secrets_stay_redacted_in_json():
    """RedactSecrets runs before any formatter: the token never reaches the object."""
    rec = record(
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/ws/?token=s3cr3t&since=4", "1.1", 403),
        name="uvicorn.access",
    )
    RedactSecrets().filter(rec)
    header = record("< %s: %s", ("Authorization", "Bearer s3cr3t"), name="uvicorn.error")
    RedactSecrets().filter(header)
    for line in (JsonFormatter().format(rec), JsonFormatter().format(header)):
        assert "s3cr3t" not in line and "[redacted]" in line, line
    assert json.loads(JsonFormatter().format(rec))["path"] == "/ws/?token=[redacted]&since=4"


def test_text_adds_room_and_user_and_quotes_what_could_forge_a_field():
    """room= and user= after the message, before the traceback; a value with spaces,
    quotes or '=' is a JSON string, so 'a user=root' stays one value."""
    formatter = TextFormatter("%(levelname)s %(name)s: %(message)s")
    line = formatter.format(record("Joining failed", level=40, room="技术交流", user="alice"))
    assert line == "ERROR roomcast.consumers: Joining failed room=技术交流 user=alice"
    forged = formatter.format(record("x", room="a user=root", user='"q"', exc=True))
    first, *rest = forged.splitlines()
    assert first == 'INFO roomcast.consumers: x room="a user=root" user="\\"q\\""'
    assert rest[0].startswith("Traceback")
    assert formatter.format(record("plain")) == "INFO roomcast.consumers: plain"
    rooms = formatter.format(record("y", rooms=["a", "b"]))
    assert rooms.endswith("y rooms=a,b")


def test_the_accepted_handshake_is_debug_even_with_the_access_log():
    """The session's line at its end replaces it; a refused handshake stays INFO."""
    quiet = QuietConnections(access_log=True)
    accepted = record('%s - "WebSocket %s" [accepted]', ("1.2.3.4:5", "/ws/"), name="uvicorn.error")
    refused = record('%s - "WebSocket %s" 403', ("1.2.3.4:5", "/ws/"), name="uvicorn.error")
    quiet.filter(accepted)
    quiet.filter(refused)
    assert (accepted.levelno, refused.levelno) == (logging.DEBUG, logging.INFO)


def test_uvicorn_config_uses_json_for_both_streams():
    config = uvicorn_log_config("info", access_log=True, log_format="json")
    assert {f["()"] for f in config["formatters"].values()} == {
        "roomcast.server.logs.JsonFormatter"
    }
    text = uvicorn_log_config("info", access_log=True)
    assert text["formatters"]["access"]["()"] == "uvicorn.logging.AccessFormatter"
    assert "socket_fields" in text["handlers"]["default"]["filters"]


def consumer(room: str = "", subs: tuple[str, ...] = (), user: str = "alice") -> Any:
    """A consumer's attributes that a Session reads (a room socket or a /ws/ one)."""
    connection = SimpleNamespace(subs=dict.fromkeys(subs), identity=SimpleNamespace(name=user))
    return SimpleNamespace(
        scope={"path": "/ws/chat/x/", "client": ("10.0.0.9", 4321)},
        connection=connection,
        room=room,
    )


@pytest.fixture
def access_lines() -> Any:
    """The ``roomcast.access`` records, as JSON objects."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = socket_log.access_logger
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(old_level)
    logger.propagate = old_propagate


def test_a_session_logs_one_access_line_at_its_end(access_lines):
    session = socket_log.Session(consumer(room="lobby"))
    session.frames_in = 3
    session.code = 1000
    assert access_lines() == []
    session.end()
    (line,) = access_lines()
    assert line["logger"] == "roomcast.access" and line["level"] == "INFO"
    assert (line["room"], line["user"], line["client"], line["path"]) == (
        "lobby",
        "alice",
        "10.0.0.9:4321",
        "/ws/chat/x/",
    )
    assert (line["code"], line["frames_in"]) == (1000, 3)
    assert isinstance(line["duration_ms"], int) and line["duration_ms"] >= 0
    assert line["message"].startswith('10.0.0.9:4321 - "WebSocket /ws/chat/x/" closed 1000 after')


def test_a_session_is_quiet_when_its_logger_is_off():
    """roomcast serve without --access-log: no line, and no work to build one."""
    logger = socket_log.access_logger
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        session = socket_log.Session(consumer(room="lobby"))
        session.consumer = None  # building the line would fail: it is not built
        session.end()
    finally:
        logger.setLevel(level)


async def test_records_logged_while_a_socket_is_served_carry_its_room_and_user():
    """In the socket's task and the tasks it starts: its room(s) and user; elsewhere,
    and after its end, nothing."""
    fields = socket_log.SocketFields()
    seen: dict[str, logging.LogRecord] = {}

    async def serve(name: str, c: Any) -> None:
        session = socket_log.Session(c)
        seen[name] = record("failed", level=40)
        fields.filter(seen[name])

        async def child() -> None:
            seen[name + " child"] = record("child failed", level=40)
            fields.filter(seen[name + " child"])

        await asyncio.create_task(child())
        session.end()
        seen[name + " after"] = record("later")
        fields.filter(seen[name + " after"])

    await asyncio.gather(
        serve("room", consumer(room="lobby", user="alice")),
        serve("mux", consumer(subs=("b", "a"), user="bob")),
    )
    outside = record("outside")
    fields.filter(outside)
    assert (seen["room"].room, seen["room"].user, seen["room"].client) == (
        "lobby",
        "alice",
        "10.0.0.9:4321",
    )
    assert (seen["mux"].rooms, seen["mux"].user) == (["a", "b"], "bob")
    assert seen["room child"].room == "lobby" and seen["mux child"].user == "bob"
    for rec in (seen["room after"], seen["mux after"], outside):
        assert not hasattr(rec, "room") and not hasattr(rec, "user"), rec.__dict__
    explicit = record("x", room="named")
    session = socket_log.Session(consumer(room="lobby"))
    fields.filter(explicit)
    session.end()
    assert explicit.room == "named"  # a record's own field wins


@pytest.mark.django_db(transaction=True)
def test_an_http_access_line_names_the_room_and_a_user_already_read(caplog):
    """The middleware's line: client, request, status and time, the room of the URL, the
    user if the request read it (never read for the log), a query token blanked."""
    from django.contrib.auth import get_user_model
    from django.http import HttpResponse
    from django.test import RequestFactory
    from django.urls import ResolverMatch

    from roomcast.server.access import AccessLogMiddleware

    alice = get_user_model().objects.create_user("alice")
    middleware = AccessLogMiddleware(lambda request: HttpResponse(status=201))
    caplog.set_level(logging.INFO, logger="roomcast.access")
    for read_user in (True, False):
        request = RequestFactory().post("/api/rooms/lobby/messages?token=abc")
        request.resolver_match = ResolverMatch(lambda r: None, (), {"room_name": "lobby"})
        if read_user:
            request._cached_user = alice  # type: ignore[attr-defined]  # what auth.get_user sets
        middleware(request)
    first, second = caplog.records[-2:]
    assert first.getMessage().startswith(
        '127.0.0.1 - "POST /api/rooms/lobby/messages?token=[redacted]" 201 in '
    )
    assert (first.room, first.user, first.status, first.method) == ("lobby", "alice", 201, "POST")
    assert second.room == "lobby" and not hasattr(second, "user")
