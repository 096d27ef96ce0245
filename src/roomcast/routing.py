"""WebSocket URL patterns and the ready-made WebSocket application.

``websocket_urlpatterns`` also works inside your own ``AuthMiddlewareStack(URLRouter(...))``.

In a project's ``asgi.py``::

    from roomcast.routing import websocket_application
    application = ProtocolTypeRouter({"http": django_asgi_app,
                                      "websocket": websocket_application()})

or put ``roomcast.routing.websocket_urlpatterns`` into your own ``URLRouter``.
"""

from __future__ import annotations

from typing import Any

from channels.routing import URLRouter
from django.urls import path

from .consumers import RoomConsumer
from .security import RoomcastMiddleware, allowed_origins

# django-stubs types path() for views only; Channels' URLRouter takes ASGI apps too.
websocket_urlpatterns: list[Any] = [
    path("ws/chat/<str:room_name>/", RoomConsumer.as_asgi()),  # type: ignore[arg-type]
]


def websocket_application() -> Any:
    """The room URLs behind roomcast's middleware: origin check, session user."""
    return RoomcastMiddleware(URLRouter(websocket_urlpatterns), allowed_origins())
