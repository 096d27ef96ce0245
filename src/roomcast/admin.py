"""Django admin for rooms, their members, and messages (seqs are assigned by services).

Rooms show their visibility (and are filtered by it) with their members inline. Every
change made here that can take rights away sends ``roomcast.signals.access_changed``
once the transaction commits, as :mod:`roomcast.rooms` does, so live sockets lose what
they lost within a second: a visibility change, a member removed (inline, on the
membership's own page, or by the "delete selected" action), an admin made a member, a
membership moved to another user or room, a room deleted. A room's name is fixed once
it exists: sockets and stored messages are bound to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.contrib import admin
from django.db import router, transaction
from django.db.models import Count, QuerySet
from django.forms import BaseInlineFormSet, ModelForm
from django.http import HttpRequest

from .models import Message, Room, RoomMember
from .signals import access_changed


def _recheck(pairs: Iterable[tuple[str, int | None]]) -> None:
    """Send ``access_changed`` for each (room name, user id or None) after commit."""
    for room, user_id in dict.fromkeys(pairs):
        transaction.on_commit(_sender(room, user_id), using=router.db_for_write(Room))


def _sender(room: str, user_id: int | None) -> Callable[[], object]:
    return lambda: access_changed.send(sender=Room, room=room, user_id=user_id)


def _lost(old: RoomMember) -> tuple[str, int]:
    return (old.room.name, old.user_id)


def _takes_away(before: RoomMember, after: RoomMember) -> bool:
    """Whether changing membership ``before`` into ``after`` takes rights from its user."""
    demoted = before.role == RoomMember.Role.ADMIN and after.role != RoomMember.Role.ADMIN
    return demoted or (before.room_id, before.user_id) != (after.room_id, after.user_id)


def _saved(member: RoomMember) -> RoomMember | None:
    """The membership as stored (forms change the instance before it is saved)."""
    return RoomMember.objects.select_related("room").filter(pk=member.pk).first()


class RoomMemberInline(admin.TabularInline):  # type: ignore[type-arg]
    model = RoomMember
    extra = 1
    raw_id_fields = ("user",)  # a select of every user does not scale
    readonly_fields = ("created_at",)


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("name", "visibility", "member_count", "last_seq", "created_at")
    list_filter = ("visibility",)
    search_fields = ("name",)
    readonly_fields = ("last_seq", "created_at")
    inlines = (RoomMemberInline,)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Room]:
        rooms: QuerySet[Room] = super().get_queryset(request)
        return rooms.annotate(_members=Count("memberships"))

    @admin.display(description="members", ordering="_members")
    def member_count(self, room: Room) -> int:
        """How many members the room has."""
        return int(getattr(room, "_members", 0))

    def get_readonly_fields(self, request: HttpRequest, obj: Room | None = None) -> Any:
        # Sockets and stored messages are bound to the name: no renaming under them.
        fields = tuple(super().get_readonly_fields(request, obj))
        return (*fields, "name") if obj is not None else fields

    def save_model(
        self,
        request: HttpRequest,
        obj: Room,
        form: ModelForm,  # type: ignore[type-arg]
        change: bool,
    ) -> None:
        super().save_model(request, obj, form, change)
        # A room with sockets may have no row yet (rows come with the first message):
        # adding it as private or read-only takes rights away too.
        if "visibility" in form.changed_data or (not change and obj.visibility != "public"):
            _recheck([(obj.name, None)])

    def save_formset(
        self,
        request: HttpRequest,
        form: ModelForm,  # type: ignore[type-arg]
        formset: BaseInlineFormSet,  # type: ignore[type-arg]
        change: bool,
    ) -> None:
        lost: list[tuple[str, int | None]] = []
        if formset.model is RoomMember:
            for member_form in formset.initial_forms:
                deleted = member_form in formset.deleted_forms
                if not (deleted or member_form.has_changed()):
                    continue
                before = _saved(member_form.instance)
                if before is not None and (deleted or _takes_away(before, member_form.instance)):
                    lost.append(_lost(before))
        super().save_formset(request, form, formset, change)
        _recheck(lost)

    def delete_model(self, request: HttpRequest, obj: Room) -> None:
        name = obj.name
        super().delete_model(request, obj)
        _recheck([(name, None)])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Room]) -> None:
        names = list(queryset.values_list("name", flat=True))
        super().delete_queryset(request, queryset)
        _recheck((name, None) for name in names)


@admin.register(RoomMember)
class RoomMemberAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("room", "user", "role", "created_at")
    list_filter = ("role", "room__visibility")
    search_fields = ("room__name", "user__username")
    raw_id_fields = ("room", "user")
    readonly_fields = ("created_at",)
    list_select_related = ("room", "user")

    def save_model(
        self,
        request: HttpRequest,
        obj: RoomMember,
        form: ModelForm,  # type: ignore[type-arg]
        change: bool,
    ) -> None:
        before = _saved(obj) if change else None
        super().save_model(request, obj, form, change)
        if before is not None and _takes_away(before, obj):
            _recheck([_lost(before)])

    def delete_model(self, request: HttpRequest, obj: RoomMember) -> None:
        lost = _lost(obj)
        super().delete_model(request, obj)
        _recheck([lost])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[RoomMember]) -> None:
        lost = [_lost(member) for member in queryset.select_related("room")]
        super().delete_queryset(request, queryset)
        _recheck(lost)


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("room", "seq", "kind", "username", "text", "created_at")
    list_filter = ("kind",)
    search_fields = ("text", "username", "room__name")
    readonly_fields = ("room", "seq", "kind", "user", "username", "client_id", "created_at")
