"""The room socket's middleware: origin check, session user, the server's send.

Layer: transport. Origins are checked against cross-site WebSocket hijacking. A browser
sends ``Origin`` with every WebSocket handshake, and a page on another site
could otherwise open a socket with the visitor's session cookie. Browsers' origins are
checked against ``ROOMCAST['ALLOWED_ORIGINS']`` (default: the hosts of ``ALLOWED_HOSTS``,
any scheme and port). A handshake without ``Origin`` does not come from a browser
(CLI tools, servers) and carries no ambient cookie, so it is allowed; Channels'
``OriginValidator`` refuses it, which would lock out every non-browser client.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any
from urllib.parse import ParseResult, urlparse

from channels.auth import get_user
from channels.security.websocket import OriginValidator, WebsocketDenier
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http.cookie import parse_cookie

from .conf import roomcast_settings


class RoomcastOriginValidator(OriginValidator):
    """``OriginValidator`` that lets handshakes without ``Origin`` through."""

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        """True for no ``Origin``, else Channels' pattern match."""
        if parsed_origin is None:
            return True
        return bool(self.validate_origin(parsed_origin))


#: Scope key of the server's unwrapped ``send``: the hub writes room frames with it.
SERVER_SEND = "roomcast.server_send"


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
    own middleware stack, use ``roomcast.routing.websocket_urlpatterns`` instead.
    """

    def __init__(self, application: Any, allowed_origins: list[str]) -> None:
        self.application = application
        self.origins = RoomcastOriginValidator(application, allowed_origins)
        self.session_store = import_module(settings.SESSION_ENGINE).SessionStore

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        origin: ParseResult | None = None
        cookies = ""
        valid = True
        for name, value in scope.get("headers", ()):
            if name == b"origin":
                try:
                    origin = urlparse(value.decode("latin1"))
                except ValueError:  # e.g. "http://[::1": not an origin a browser sends
                    valid = False
            elif name == b"cookie":
                cookies = value.decode("latin1")
        if not (valid and self.origins.valid_origin(origin)):
            return await WebsocketDenier()(scope, receive, send)
        scope[SERVER_SEND] = send
        if "user" not in scope:
            key = parse_cookie(cookies).get(settings.SESSION_COOKIE_NAME) if cookies else None
            if key:
                scope["session"] = self.session_store(key)
                scope["user"] = await get_user(scope)
            else:
                scope["user"] = AnonymousUser()
        return await self.application(scope, receive, send)


def allowed_origins() -> list[str]:
    """``ROOMCAST['ALLOWED_ORIGINS']``, or the hosts of ``ALLOWED_HOSTS``."""
    origins = roomcast_settings.ALLOWED_ORIGINS
    if origins is None:
        origins = list(settings.ALLOWED_HOSTS)
        if settings.DEBUG and not origins:
            origins = ["localhost", "127.0.0.1", "[::1]"]
    return list(origins)
