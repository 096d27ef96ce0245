"""WebSocket URL patterns and the ready-made WebSocket application.

``websocket_urlpatterns`` also works inside your own ``AuthMiddlewareStack(URLRouter(...))``,
beside your own WebSocket routes.

In a project's ``asgi.py``::

    from roomcast.routing import websocket_application
    application = ProtocolTypeRouter({"http": django_asgi_app,
                                      "websocket": websocket_application()})

or put ``roomcast.routing.websocket_urlpatterns`` into your own ``URLRouter``.
"""

from __future__ import annotations

from typing import Any

from django.urls import path

from .consumers import RoomConsumer
from .security import RoomcastMiddleware, allowed_origins

# django-stubs types path() for views only; Channels' URLRouter takes ASGI apps too.
websocket_urlpatterns: list[Any] = [
    path("ws/chat/<str:room_name>/", RoomConsumer.as_asgi()),  # type: ignore[arg-type]
]


def websocket_application() -> Any:
    """The room URLs behind roomcast's middleware: origin check, session user."""
    return RoomcastMiddleware(_RoomRouter(), allowed_origins())


class _RoomRouter:
    """What ``URLRouter(websocket_urlpatterns)`` does as the outermost router, for the one
    room route, setting ``url_route`` in the scope in place: URLRouter copies the scope
    and keeps its frame for the socket's life (about 1.2 KB per idle socket, traced)."""

    def __init__(self) -> None:
        route = websocket_urlpatterns[0]
        self.pattern = route.pattern
        self.application = route.callback

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        path, root_path = scope["path"], scope.get("root_path", "")
        match = None
        if path.startswith(root_path):
            match = self.pattern.match(path[len(root_path) :].lstrip("/"))
        if not match:
            raise ValueError(f"No route found for path {path!r}.")  # as URLRouter does
        _, args, kwargs = match
        scope["url_route"] = {"args": args, "kwargs": kwargs}
        return await self.application(scope, receive, send)
