"""WebSocket URL patterns and the ready-made WebSocket application.

``websocket_urlpatterns`` also works inside your own ``AuthMiddlewareStack(URLRouter(...))``,
beside your own WebSocket routes.

In a project's ``asgi.py``::

    from roomcast.routing import websocket_application
    application = ProtocolTypeRouter({"http": django_asgi_app,
                                      "websocket": websocket_application()})

or put ``roomcast.routing.websocket_urlpatterns`` into your own ``URLRouter``.

Every path gets a named answer, never a traceback: a room URL that names no room
(``/ws/chat/a%2Fb/``) is closed with 4400 and a reason, a path no route matches gets
HTTP 404 (or, on a server without the ``websocket.http.response`` extension, a close
with 4404). Channels' own ``URLRouter`` raises ``ValueError`` for a path none of its
routes match, which servers answer with HTTP 500: the last pattern below catches every
path under ``ws/chat/`` so that a project's router never gets there for a room URL.
"""

from __future__ import annotations

from typing import Any

from django.urls import path, re_path

from .consumers import MuxConsumer, RoomConsumer, bad_room_url, no_route
from .security import RoomcastMiddleware, allowed_origins

# django-stubs types path() for views only; Channels' URLRouter takes ASGI apps too.
# Endpoints only (no nested URLRouter): _Router matches whole paths. A new endpoint
# (such as a multi-room /ws/) goes before the catch-all of the room prefix.
websocket_urlpatterns: list[Any] = [
    path("ws/chat/<str:room_name>/", RoomConsumer.as_asgi()),  # type: ignore[arg-type]
    # Many rooms on one socket (docs/protocol.md, "One socket, many rooms").
    path("ws/", MuxConsumer.as_asgi()),  # type: ignore[arg-type]
    # Any other path under ws/chat/: a room name with '/' (decoded from %2F), an empty
    # name, a missing final '/'. (?s): a decoded %0A is a character like any other.
    re_path(r"^ws/chat/(?P<rest>(?s:.*))\Z", bad_room_url),  # type: ignore[arg-type]
]


def websocket_application() -> Any:
    """The roomcast WebSocket URLs behind roomcast's middleware: origin check, session user."""
    return RoomcastMiddleware(_Router(websocket_urlpatterns), allowed_origins())


class _Router:
    """What ``URLRouter(routes)`` does as the outermost router for endpoint routes,
    setting ``url_route`` in the scope in place (URLRouter copies the scope and keeps its
    frame for the socket's life: about 1.2 KB per idle socket, traced), and answering a
    path no route matches with 404 instead of raising ``ValueError`` (an HTTP 500)."""

    def __init__(self, routes: list[Any]) -> None:
        self.routes = [(r.pattern, r.callback, dict(r.default_args)) for r in routes]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        path, root_path = scope["path"], scope.get("root_path", "")
        if path.startswith(root_path):
            relative = path[len(root_path) :].lstrip("/")
            for pattern, application, defaults in self.routes:
                if match := pattern.match(relative):
                    _, args, kwargs = match
                    scope["url_route"] = {"args": args, "kwargs": {**kwargs, **defaults}}
                    return await application(scope, receive, send)
        return await no_route(scope, receive, send)
