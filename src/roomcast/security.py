"""Origin checks against cross-site WebSocket hijacking.

A browser sends ``Origin`` with every WebSocket handshake, and a page on another site
could otherwise open a socket with the visitor's session cookie. Browsers' origins are
checked against ``ROOMCAST['ALLOWED_ORIGINS']`` (default: the hosts of ``ALLOWED_HOSTS``,
any scheme and port). A handshake without ``Origin`` does not come from a browser
(CLI tools, servers) and carries no ambient cookie, so it is allowed; Channels'
``OriginValidator`` refuses it, which would lock out every non-browser client.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import ParseResult

from channels.security.websocket import OriginValidator
from django.conf import settings

from .conf import roomcast_settings


class RoomcastOriginValidator(OriginValidator):
    """``OriginValidator`` that lets handshakes without ``Origin`` through."""

    def valid_origin(self, parsed_origin: ParseResult | None) -> bool:
        """True for no ``Origin``, else Channels' pattern match."""
        if parsed_origin is None:
            return True
        return bool(self.validate_origin(parsed_origin))


def origin_checked(application: Any) -> RoomcastOriginValidator:
    """Wrap a WebSocket ASGI app so cross-site browser handshakes get HTTP 403."""
    origins = roomcast_settings.ALLOWED_ORIGINS
    if origins is None:
        origins = list(settings.ALLOWED_HOSTS)
        if settings.DEBUG and not origins:
            origins = ["localhost", "127.0.0.1", "[::1]"]
    return RoomcastOriginValidator(application, origins)
