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

from .consumers import RoomConsumer
from .security import origin_checked

# django-stubs types path() for views only; Channels' URLRouter takes ASGI apps too.
websocket_urlpatterns: list[Any] = [
    path("ws/chat/<str:room_name>/", RoomConsumer.as_asgi()),  # type: ignore[arg-type]
]


def websocket_application() -> Any:
    """Origin check, then Django sessions (``scope["user"]``), then the room URLs."""
    return origin_checked(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
