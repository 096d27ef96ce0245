"""The seed's ``websocket_urlpatterns``; Channels 3+ routes to ``as_asgi()``."""

from __future__ import annotations

from django.urls import path

from . import consumers

websocket_urlpatterns = [
    path("ws/chat/<str:room_name>/", consumers.ChatConsumer.as_asgi()),
]
