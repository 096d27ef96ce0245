"""The WebSocket Origin check: which handshakes a browser page may open, and the setting.

The middleware is driven through ASGI (asgiref's ApplicationCommunicator) with the scope a
server builds, in front of an application that accepts; tests/e2e/test_origin.py runs
the same rule on real ``roomcast serve`` processes and in Chromium.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from roomcast import hub
from roomcast.conf import settings_from_environ
from roomcast.origins import (
    LOG_VALUE_MAX_CHARS,
    Origin,
    OriginPolicy,
    OriginSettingError,
    parse_allowed,
    parse_origin,
)
from roomcast.routing import websocket_urlpatterns
from roomcast.security import OriginCheckMiddleware
from roomcast.testing import RoomCommunicator


async def _accept(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The application behind the check: accepts every handshake that reaches it."""
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})


async def handshake(
    headers: list[tuple[str, str]],
    allowed: list[str] | None = None,
    **scope: Any,
) -> bool:
    """Whether a handshake with ``headers`` (and scope keys) gets through the check."""
    app = OriginCheckMiddleware(_accept, allowed if allowed is not None else [])
    full_scope = {
        "type": "websocket",
        "path": "/ws/chat/lobby/",
        "headers": [(k.lower().encode("latin1"), v.encode("latin1")) for k, v in headers],
        "subprotocols": [],
        **scope,
    }
    communicator = ApplicationCommunicator(app, full_scope)
    await communicator.send_input({"type": "websocket.connect"})
    output = await communicator.receive_output(timeout=2)
    await communicator.wait(timeout=2)
    if output["type"] == "websocket.close":
        assert output["code"] == 1008  # a named close before accept: servers send 403
        return False
    assert output["type"] == "websocket.accept"
    return True


def host_and_origin(host: str, origin: str) -> list[tuple[str, str]]:
    return [("Host", host), ("Origin", origin)]


@pytest.mark.parametrize(
    ("host", "origin", "allowed"),
    [
        ("localhost:8000", "http://localhost:8000", True),
        ("localhost:8000", "http://localhost:8001", False),  # another port of the host
        ("localhost:8000", "https://localhost:8000", False),  # another scheme
        ("localhost:8000", "http://127.0.0.1:8000", False),  # another allowed host
        ("localhost:8000", "http://localhost", False),
        ("localhost", "http://localhost:80", True),  # default ports are the same origin
        ("localhost:80", "http://localhost", True),
        ("LocalHost:8000", "http://localhost:8000", True),  # host names ignore case
        ("localhost:8000", "http://localhost:8000/", False),  # not a serialised origin
        ("localhost:8000", "http://user@localhost:8000", False),
        ("localhost:8000", "http://[::1", False),
        ("localhost:8000", "null", False),
        ("localhost:8000", "", False),
        # A DNS-rebinding page: its Host and Origin agree, but the host is not ours.
        ("evil.example:8000", "http://evil.example:8000", False),
    ],
)
async def test_only_the_handshakes_own_origin_is_allowed(host, origin, allowed):
    """Scheme, host and port of the Host header (which must pass ALLOWED_HOSTS), exactly."""
    assert await handshake(host_and_origin(host, origin)) is allowed


async def test_the_scheme_follows_the_socket_and_the_proxy_header():
    """wss means https; SECURE_PROXY_SSL_HEADER is honoured as request.is_secure() does."""
    assert await handshake(host_and_origin("localhost", "https://localhost"), scheme="wss")
    assert not await handshake(host_and_origin("localhost", "http://localhost"), scheme="wss")
    proxied = [*host_and_origin("localhost", "https://localhost"), ("X-Forwarded-Proto", "https")]
    assert not await handshake(proxied)  # the header means nothing unless configured
    with override_settings(SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https")):
        assert await handshake(proxied)
        assert not await handshake(host_and_origin("localhost", "https://localhost"))
    with override_settings(SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO"):
        with pytest.raises(ImproperlyConfigured, match="SECURE_PROXY_SSL_HEADER"):
            OriginCheckMiddleware(_accept, [])  # at start-up, not on every handshake


async def test_the_host_is_djangos_get_host():
    """USE_X_FORWARDED_HOST, DEBUG's local hosts, and the server address without Host."""
    forwarded = [*host_and_origin("127.0.0.1:8000", "http://localhost:9000")]
    forwarded.append(("X-Forwarded-Host", "localhost:9000"))
    assert not await handshake(forwarded)
    with override_settings(USE_X_FORWARDED_HOST=True):
        assert await handshake(forwarded)
    rebound = host_and_origin("app.localhost:8000", "http://app.localhost:8000")
    assert not await handshake(rebound)
    with override_settings(DEBUG=True, ALLOWED_HOSTS=[]):
        assert await handshake(rebound)
    with override_settings(ALLOWED_HOSTS=["[::1]"]):
        assert await handshake(host_and_origin("[::1]:8000", "http://[::1]:8000"))
        assert not await handshake(host_and_origin("[::1]:8000", "http://[::2]:8000"))
    origin = [("Origin", "http://127.0.0.1:8000")]
    assert await handshake(origin, server=("127.0.0.1", 8000))
    assert not await handshake(origin)  # no Host, no server address: no own origin


async def test_handshakes_without_origin_pass_and_two_origins_do_not():
    """No Origin: not a browser, no ambient cookie. Two: which one would a browser mean?"""
    assert await handshake([("Host", "localhost:8000")])
    assert await handshake([])
    two = [*host_and_origin("localhost:8000", "http://localhost:8000")]
    two.append(("Origin", "http://localhost:8000"))
    assert not await handshake(two)


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost:3000", True),
        ("http://localhost:3001", False),
        ("https://chat.example.com", True),
        ("https://a.b.example.com", True),
        ("https://example.com", True),  # the domain itself, as CSRF_TRUSTED_ORIGINS has it
        ("https://chat.example.com:8443", False),
        ("http://chat.example.com", False),
        ("https://badexample.com", False),
        ("https://example.com.evil.example", False),
        ("https://api.example.org:8443", True),
        ("https://api.example.org", False),
        ("chrome-extension://abcdef", True),
        ("chrome-extension://abcdeg", False),
        ("null", False),
    ],
)
async def test_listed_origins_are_allowed_besides_the_own(origin, allowed):
    """Exact origins (port included) and *. wildcards, as CSRF_TRUSTED_ORIGINS takes them."""
    listed = [
        "http://localhost:3000",
        "https://*.example.com",
        "HTTPS://API.example.org:8443",
        "chrome-extension://abcdef",
    ]
    headers = host_and_origin("localhost:8000", origin)
    assert await handshake(headers, listed) is allowed
    assert await handshake(host_and_origin("localhost:8000", "http://localhost:8000"), listed)


async def test_null_and_every_origin_only_when_listed():
    """'null' admits sandboxed pages only; '*' admits everything."""
    null = host_and_origin("localhost:8000", "null")
    evil = host_and_origin("localhost:8000", "https://evil.example")
    assert await handshake(null, ["null"]) and not await handshake(evil, ["null"])
    assert await handshake(null, ["*"]) and await handshake(evil, ["*"])


async def test_a_refusal_is_one_debug_line_saying_why(caplog):
    """No traceback; the origin and the site's origin in one bounded line."""
    with caplog.at_level(logging.DEBUG, logger="roomcast"):
        assert not await handshake(host_and_origin("localhost:8000", "http://localhost:3000"))
        hostile = "http://" + "a" * 5000 + "\r\nX-Injected: 1"
        assert not await handshake(
            host_and_origin("localhost:8000", hostile), client=("10.0.0.7", 5555)
        )
        assert not await handshake(host_and_origin("localhost", "https://localhost"))
    records = [r for r in caplog.records if r.name == "roomcast.security"]
    assert [r.levelno for r in records] == [logging.DEBUG] * 3
    assert not any(r.exc_info for r in records)
    first, second, third = (r.getMessage() for r in records)
    assert first == (
        "WebSocket handshake refused from ?: Origin 'http://localhost:3000' is not this "
        "site's origin 'http://localhost:8000' nor listed in ROOMCAST['ALLOWED_ORIGINS']"
    )
    assert second.startswith("WebSocket handshake refused from 10.0.0.7: Origin 'http://aaa")
    assert "\n" not in second and len(second) < LOG_VALUE_MAX_CHARS + 200
    assert "SECURE_PROXY_SSL_HEADER" in third  # https page, http socket: a TLS proxy?


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("http://localhost:8000", Origin("http", "localhost", 8000)),
        ("HTTPS://Example.COM", Origin("https", "example.com", 443)),
        ("http://[::1]:80", Origin("http", "::1", 80)),
        ("app://local", Origin("app", "local", None)),
        ("http://x.example:99999", None),
        ("http://x.example:port", None),
        ("http://x.example/", None),
        ("http://x.example?", None),
        ("http://x.example#", None),
        ("http://x.exam\tple", None),
        (" http://x.example", None),
        ("//x.example", None),
        ("x.example", None),
        ("null", None),
        ("", None),
    ],
)
def test_parse_origin(value, parsed):
    """Serialised origins only; the default port is written out."""
    assert parse_origin(value) == parsed
    if parsed is not None and value.lower() == str(parsed):
        assert str(parse_origin(value)) == value.lower()


@pytest.mark.parametrize(
    ("entry", "problem", "fix"),
    [
        ("example.com", "host name", "'https://example.com'"),
        (".example.com", "host name", "'https://*.example.com'"),
        ("*.example.com", "host name", "'https://*.example.com'"),
        ("localhost:3000", "host name", "'http://localhost:3000'"),
        ("[::1]", "host name", "'http://[::1]'"),
        ("ws://localhost:3000", "socket URL", "'http://localhost:3000'"),
        ("wss://*.example.com/", "socket URL", "'https://*.example.com'"),
        ("https://example.com/", "not an origin", "'https://example.com'"),
        ("https://u@example.com:8443/x?y", "not an origin", "'https://example.com:8443'"),
        ("https://*", "not an origin", "'https://*.example.com' for a domain"),
        ("https://a*.example.com", "not an origin", "e.g. 'https://chat.example.com'"),
        ("*://example.com", "not an origin", "scheme://host[:port]"),
    ],
)
def test_an_entry_that_is_not_an_origin_says_what_to_write(entry, problem, fix):
    """Old host-name entries neither widen (any scheme and port) nor vanish: an error."""
    with pytest.raises(OriginSettingError) as info:
        parse_allowed(entry)
    assert problem in str(info.value) and repr(entry) in str(info.value)
    assert fix in info.value.hint
    with pytest.raises(ImproperlyConfigured, match="ALLOWED_ORIGINS"):
        OriginPolicy.from_setting(["https://ok.example", entry])


def roomcast_checks(**settings: Any) -> list[tuple[str, str]]:
    with override_settings(ROOMCAST={"API_KEYS": ["test-api-key-0123456789"], **settings}):
        return [(m.id, m.msg) for m in run_checks() if m.id and m.id.startswith("roomcast")]


def test_the_checks_report_each_bad_entry_and_warn_of_every_origin():
    """E011 per entry that is not an origin, W001 for '*', W002 for 'null' alone."""
    assert roomcast_checks(ALLOWED_ORIGINS=[]) == []
    assert roomcast_checks(ALLOWED_ORIGINS=None) == []  # the earlier default: the same
    assert roomcast_checks(ALLOWED_ORIGINS=["https://a.example", "https://*.b.example"]) == []
    found = roomcast_checks(ALLOWED_ORIGINS=["example.com", "https://ok.example", "ws://x"])
    assert [i for i, _ in found] == ["roomcast.E011", "roomcast.E011"]
    assert [i for i, _ in roomcast_checks(ALLOWED_ORIGINS=["*", "null"])] == ["roomcast.W001"]
    (null,) = roomcast_checks(ALLOWED_ORIGINS=["null"])
    assert null[0] == "roomcast.W002" and "sandboxed" in null[1]
    for wrong in ("https://a.example", [b"https://a.example"]):
        assert [i for i, _ in roomcast_checks(ALLOWED_ORIGINS=wrong)] == ["roomcast.E005"]
        with pytest.raises(ImproperlyConfigured, match="must be a list"):
            OriginPolicy.from_setting(wrong)


def test_the_environment_variable_is_a_comma_separated_list():
    """ROOMCAST_ALLOWED_ORIGINS for roomcast serve; an empty value lists nothing."""
    environ = {"ROOMCAST_ALLOWED_ORIGINS": " https://a.example ,null,, https://*.b.example "}
    assert settings_from_environ(environ) == {
        "ALLOWED_ORIGINS": ["https://a.example", "null", "https://*.b.example"]
    }
    assert settings_from_environ({"ROOMCAST_ALLOWED_ORIGINS": ""}) == {"ALLOWED_ORIGINS": []}


@pytest.mark.django_db(transaction=True)
async def test_the_check_guards_a_projects_own_channels_stack():
    """``OriginCheckMiddleware(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))``:
    the room works from the site's own origin and is refused from another port."""
    stack = OriginCheckMiddleware(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
    try:
        other = RoomCommunicator(stack, "own", headers=_raw("localhost:8000", "http://localhost:1"))
        assert await other.connect() == (False, 1008)
        own = RoomCommunicator(
            stack, "own", headers=_raw("localhost:8000", "http://localhost:8000")
        )
        assert (await own.join() or {})["type"] == "joined"
        await own.disconnect()
    finally:
        running = hub.running_hub()
        if running is not None:
            await running.close()


def _raw(host: str, origin: str) -> list[tuple[bytes, bytes]]:
    return [(b"host", host.encode()), (b"origin", origin.encode())]
