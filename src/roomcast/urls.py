"""HTTP URLs of the app: include with ``path("", include("roomcast.urls"))``."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "roomcast"

urlpatterns = [
    path("chat/", views.index, name="index"),
    path("chat/<str:room_name>/", views.room, name="room"),
    path("api/rooms/<str:room_name>/messages", views.api_messages, name="api-messages"),
    path("api/rooms/<str:room_name>/disconnect", views.api_disconnect, name="api-disconnect"),
]
