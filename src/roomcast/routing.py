"""WebSocket URL patterns and the ready-made WebSocket application.

In a project's ``asgi.py``::

    from roomcast.routing import websocket_application
    application = ProtocolTypeRouter({"http": django_asgi_app,
                                      "websocket": websocket_application()})

or put ``roomcast.routing.websocket_urlpatterns`` into your own ``URLRouter``.
"""

from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from django.urls import path

from .consumers import SERVER_SEND, RoomConsumer
from .security import origin_checked

# django-stubs types path() for views only; Channels' URLRouter takes ASGI apps too.
websocket_urlpatterns: list[Any] = [
    path("ws/chat/<str:room_name>/", RoomConsumer.as_asgi()),  # type: ignore[arg-type]
]


def websocket_application() -> Any:
    """Origin check, then Django sessions (``scope["user"]``), then the room URLs."""
    return server_send_in_scope(
        origin_checked(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
    )


def server_send_in_scope(application: Any) -> Any:
    """Put the server's own ``send`` in the scope, for the hub's writes.

    Each middleware wraps ``send``; Channels' session middleware checks the session on
    every outgoing message although it saves only on ``http.response.start``, never for
    a WebSocket. Frames fanned out to a room skip those wrappers (about a tenth of the
    server's time in a 1,000-member room, profiled). Outermost, so it sees the raw one.
    """

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> Any:
        # Set in place: the server made this scope for this connection alone, and a copy
        # would be held for the connection's life (0.7 KB each, traced).
        scope[SERVER_SEND] = send
        return await application(scope, receive, send)

    return app
