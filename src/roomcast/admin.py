"""Django admin for rooms and messages (read-mostly: seqs are assigned by services)."""

from __future__ import annotations

from django.contrib import admin

from .models import Message, Room


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("name", "last_seq", "created_at")
    search_fields = ("name",)
    readonly_fields = ("last_seq", "created_at")


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("room", "seq", "kind", "username", "text", "created_at")
    list_filter = ("kind",)
    search_fields = ("text", "username", "room__name")
    readonly_fields = ("room", "seq", "kind", "user", "username", "client_id", "created_at")
