"""HTTP URLs of the app: include with ``path("", include("roomcast.urls"))``."""

from __future__ import annotations

from django.urls import path

from . import api, app_views, ops_views, presence_views, views

app_name = "roomcast"

urlpatterns = [
    path("chat/", views.index, name="index"),
    # The web app (roomcast.app_views): login, guests, the rooms with their sidebar. The
    # seed tutorial's pages (chat/) stay as they were beside it.
    path("login/", app_views.login, name="login"),
    path("logout/", app_views.logout, name="logout"),
    path("guest/", app_views.guest, name="guest"),
    path("rooms/", app_views.rooms, name="rooms"),
    path("rooms/<str:room_name>/", app_views.app_room, name="app-room"),
    # For the operator: liveness, readiness, Prometheus (roomcast.ops_views).
    path("healthz", ops_views.healthz, name="healthz"),
    path("readyz", ops_views.readyz, name="readyz"),
    path("metrics", ops_views.metrics_view, name="metrics"),
    path("chat/<str:room_name>/", views.room, name="room"),
    path("api/rooms/<str:room_name>/messages", views.api_messages, name="api-messages"),
    path("api/rooms/<str:room_name>/messages/<str:seq>", views.api_message, name="api-message"),
    path("api/rooms/<str:room_name>/disconnect", views.api_disconnect, name="api-disconnect"),
    path("api/rooms/<str:room_name>/presence", presence_views.api_presence, name="api-presence"),
    # The management API (roomcast.api): tokens, rooms, members.
    path("api/tokens", api.tokens, name="api-tokens"),
    path("api/rooms", api.rooms_create, name="api-rooms"),
    path("api/rooms/<str:room_name>", api.room_detail, name="api-room"),
    path("api/rooms/<str:room_name>/members", api.room_members, name="api-room-members"),
    path(
        "api/rooms/<str:room_name>/members/<str:username>",
        api.room_member,
        name="api-room-member",
    ),
    # A user's own channel, and their rooms with unread counts.
    path("api/users/<str:username>/messages", api.user_messages, name="api-user-messages"),
    path("api/users/<str:username>/rooms", api.user_rooms, name="api-user-rooms"),
]
