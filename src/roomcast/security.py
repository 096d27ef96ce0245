"""The room socket's middleware (origin check, session user, the server's send), and who a
socket is: its :class:`~roomcast.access.Identity`.

Layer: transport. Browsers' handshakes are checked against cross-site WebSocket
hijacking by ``origins.OriginPolicy``: a page's ``Origin`` must be the site's own
(scheme, host and port, as Django's CSRF check has it) or listed in
``ROOMCAST['ALLOWED_ORIGINS']``. A handshake without ``Origin`` does not come from a
browser (CLI tools, servers) and carries no ambient cookie, so it is allowed; Channels'
``OriginValidator`` refuses it, which would lock out every non-browser client. A refused
handshake gets HTTP 403, and the server log one DEBUG line saying why (any page can
cause one: noise is opt-in, `--log-level debug`).

Who a socket is, in order of precedence (docs/protocol.md, "Authentication"):

1. a token in the handshake's ``Authorization: Bearer TOKEN`` header (non-browser
   clients);
2. a token in the first frame, ``{"type": "auth", "token": TOKEN}``, for a socket opened
   with ``?auth=1`` (browser pages without a session: a browser cannot set headers on a
   WebSocket);
3. the Django session cookie (the site's own pages), with the session's key so that a
   logout can close the socket;
4. a guest, named ``guest-xxxxxx``; the site's room page keeps one name per browser
   session (:data:`GUEST_NAME_SESSION_KEY`), so a guest keeps it across reloads.

A token that does not let its bearer in closes the socket with 4401 and a reason from
:data:`TOKEN_REFUSALS`; a token in the URL (``?token=``) with 4400. A user banned from
the site (``roomcast.moderation``), by token or session, is refused alike with 4401 and
"banned from this site" (with " until <time>" when the ban ends by itself).
"""

from __future__ import annotations

import logging
import re
from importlib import import_module
from typing import Any

from channels.auth import get_user
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.cookie import parse_cookie

from . import access, auth, revocation
from .conf import roomcast_settings
from .origins import OriginPolicy, check_proxy_ssl_header
from .protocol import CloseCode

logger = logging.getLogger(__name__)

_SESSION_KEY = re.compile(r"[a-z0-9]{1,64}")

#: Scope key of the server's unwrapped ``send``: the hub writes room frames with it.
SERVER_SEND = "roomcast.server_send"

#: Django session key under which the site's room page keeps a guest's name
#: (``views.room``), so that a guest is one name across reloads and tabs.
GUEST_NAME_SESSION_KEY = "roomcast_guest_name"

#: Close reasons (with 4401) for a token that does not let its bearer in, by
#: ``TokenError.code``: what the client must fix.
TOKEN_REFUSALS = {
    auth.TokenExpiredError.code: "token expired",
    auth.InvalidTokenError.code: "invalid token",
    auth.InactiveUserError.code: "inactive user",
}

#: Close reason (4501) of a live socket whose token expired: the client reconnects with
#: a fresh token.
TOKEN_EXPIRED_REASON = "token expired: reconnect with a new token"


class AuthenticationFailed(Exception):
    """The client said who it is, and it does not hold: close with 4401 and ``reason``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def bearer_token(headers: Any) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header among ASGI ``headers``.

    None when there is none, or when the header has another scheme: a browser sends the
    site's HTTP Basic credentials on its WebSocket handshakes too, and those are not
    roomcast's to refuse. More than one ``Authorization`` header, or an empty bearer
    token, is an invalid token (:class:`AuthenticationFailed`).
    """
    values = [value for name, value in headers if name == b"authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise AuthenticationFailed(TOKEN_REFUSALS[auth.InvalidTokenError.code])
    raw: bytes = values[0]
    scheme, _, token = raw.decode("latin-1").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    if not token:
        raise AuthenticationFailed(TOKEN_REFUSALS[auth.InvalidTokenError.code])
    return token


async def identity_from_token(token: str) -> access.Identity:
    """The identity a token proves (checked in a worker thread: it reads the user).

    Raises:
        AuthenticationFailed: expired, forged or damaged, or its user is inactive or
            banned from the site.
    """

    def verify() -> tuple[Any, float, Any]:
        user, expires_at = auth.verify_token(token)
        return user, expires_at, access.banned(user.pk)

    try:
        user, expires_at, ban = await database_sync_to_async(verify)()
    except auth.TokenError as exc:
        raise AuthenticationFailed(TOKEN_REFUSALS.get(exc.code, "invalid token")) from None
    if ban is not None:
        raise AuthenticationFailed(revocation.ban_reason(ban))
    return access.identity_for(user, via="token", expires_at=expires_at)


async def identity_from_session(scope: Any) -> access.Identity:
    """The identity of a socket that brought no token: the session's user, or a guest
    (named from the session when the site's room page gave it a name).

    Raises:
        AuthenticationFailed: the session's user is banned from the site.
    """
    user = scope.get("user")
    session = scope.get("session")
    if user is not None and user.is_authenticated:
        # A user known to have no ban costs nothing; else one thread hop.
        if (ban := await access.abanned(user.pk)) is not None:
            raise AuthenticationFailed(revocation.ban_reason(ban))
        key = getattr(session, "session_key", None) if session is not None else None
        return access.identity_for(user, via="session", session_key=key)
    name = None
    if session is not None:
        # Loaded by get_user already under RoomcastMiddleware; a project's own session
        # middleware may load it lazily, which is a database read: in a worker thread.
        name = await database_sync_to_async(session.get)(GUEST_NAME_SESSION_KEY)
    return access.anonymous(name if is_guest_name(name) else None)


def is_guest_name(name: Any) -> bool:
    """Whether ``name`` (from a session) is a guest's name a socket takes as it is."""
    return isinstance(name, str) and name.startswith("guest-") and 6 < len(name) <= 32


class RoomcastMiddleware:
    """Origin check, then ``scope["user"]`` from the Django session, in one layer.

    Does what ``OriginValidator(AuthMiddlewareStack(app))`` does for a room socket, with
    the same Channels and Django functions (``get_user``, the ``SESSION_ENGINE`` store),
    but as one layer that sets the scope in place instead of four that each copy it and
    keep a coroutine frame for the socket's life (about 4 KB per idle socket, traced),
    and without a database round trip for a socket that has no session cookie. It also
    puts the server's own ``send`` in the scope: the session middleware's wrapper
    checks the session on every outgoing message, though it saves only on
    ``http.response.start``, never for a WebSocket.

    Outermost only: the server made the scope for this connection alone. Inside your
    own middleware stack, use ``roomcast.routing.websocket_urlpatterns`` instead, behind
    :class:`OriginCheckMiddleware`.
    """

    def __init__(self, application: Any, allowed_origins: Any = None) -> None:
        """Wrap ``application``; ``allowed_origins`` as ``ROOMCAST['ALLOWED_ORIGINS']``
        (None: that setting).

        Raises:
            ImproperlyConfigured: an entry is not an origin, or SECURE_PROXY_SSL_HEADER
                is malformed (both would otherwise fail every browser's handshake).
        """
        self.application = application
        self.origins = OriginCheckMiddleware(application, allowed_origins)
        self.session_store = import_module(settings.SESSION_ENGINE).SessionStore

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        cookies = ""
        for name, value in scope.get("headers", ()):
            if name == b"cookie":
                cookies = value.decode("latin1")
        if not self.origins.allows(scope):
            return await _deny(scope, receive, send)
        scope[SERVER_SEND] = send
        if "user" not in scope:
            key = parse_cookie(cookies).get(settings.SESSION_COOKIE_NAME) if cookies else None
            # Django's session keys are [a-z0-9]; anything else (a crafted cookie, NUL
            # that PostgreSQL refuses with a DataError) is no session, not a query.
            if key and _SESSION_KEY.fullmatch(key):
                scope["session"] = self.session_store(key)
                scope["user"] = await get_user(scope)
            else:
                scope["user"] = AnonymousUser()
        return await self.application(scope, receive, send)


class OriginCheckMiddleware:
    """ASGI middleware: refuse a browser's WebSocket handshake from another origin.

    For a project that mounts ``roomcast.routing.websocket_urlpatterns`` in its own
    stack, in place of Channels' ``OriginValidator``/``AllowedHostsOriginValidator``
    (which accept any scheme and port of a listed host, and refuse non-browser clients)::

        OriginCheckMiddleware(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))

    The rule is in ``roomcast.origins``; ``allowed_origins`` defaults to
    ``ROOMCAST['ALLOWED_ORIGINS']``.
    """

    def __init__(self, application: Any, allowed_origins: Any = None) -> None:
        """Raises ImproperlyConfigured as :class:`RoomcastMiddleware` does."""
        self.application = application
        if allowed_origins is None:
            allowed_origins = roomcast_settings.ALLOWED_ORIGINS
        self.policy = OriginPolicy.from_setting(allowed_origins)
        check_proxy_ssl_header()

    def allows(self, scope: Any) -> bool:
        """Whether the handshake of ``scope`` may go on; if not, log one DEBUG line why."""
        origins = [value for name, value in scope.get("headers", ()) if name == b"origin"]
        if not origins:
            return True
        if len(origins) == 1:
            why = self.policy.refusal(origins[0].decode("latin1"), scope)
        else:
            why = "more than one Origin header"
        if why is None:
            return True
        client = scope.get("client") or ("?", 0)
        logger.debug("WebSocket handshake refused from %s: %s", client[0], why)
        return False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        if scope.get("type") == "websocket" and not self.allows(scope):
            return await _deny(scope, receive, send)
        return await self.application(scope, receive, send)


async def _deny(scope: Any, receive: Any, send: Any) -> None:
    """Refuse the handshake with a close before accept, which servers answer with HTTP
    403. Plain ASGI, unlike Channels' ``WebsocketDenier`` consumer: a refused socket gets
    no layer channel (a Redis subscription on the pub/sub layer) and no thread hop.

    Not ASGI's denial response (a 403 with a body saying why): uvicorn's websockets-sansio
    protocol, which ``roomcast serve`` runs, logs "ASGI callable returned without
    completing handshake" at ERROR after each one (see:
    https://github.com/Kludex/uvicorn/pull/3138). The reason is in the server's log.
    """
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION})


def allowed_origins() -> Any:
    """``ROOMCAST['ALLOWED_ORIGINS']``: origins allowed besides the site's own.

    Passed on as set (None, a list, or a wrong type that ``OriginPolicy`` reports).
    """
    return roomcast_settings.ALLOWED_ORIGINS
