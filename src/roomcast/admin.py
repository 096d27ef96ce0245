"""Django admin for rooms, their members, and messages (seqs are assigned by services).

Rooms show their visibility (and are filtered by it) with their members inline. Every
change made here that can take rights away sends ``roomcast.signals.access_changed``
once the transaction commits, as :mod:`roomcast.rooms` does, so live sockets lose what
they lost within a second: a visibility change, a member removed (inline, on the
membership's own page, or by the "delete selected" action), an admin made a member, a
membership moved to another user or room, a room deleted. A room's name is fixed once
it exists: sockets and stored messages are bound to it.

Messages change only as stream events (``roomcast.edits``), so live members see the
change at once and history keeps its seqs dense: a message's text saved here is an
edit, and deleting messages (the "Delete selected messages (as stream events)" action,
or the Delete button of a message) leaves tombstones. Each is recorded in the admin
log. Users' own channels (rooms named ``user/<id>``) are listed apart from chat rooms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import router, transaction
from django.db.models import Count, QuerySet
from django.forms import BaseInlineFormSet, ModelForm
from django.http import HttpRequest

from . import edits
from .exceptions import MessageNotFoundError
from .fanout import USER_STREAM_PREFIX
from .models import Message, Room, RoomMember
from .protocol import ProtocolError
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


class StreamFilter(admin.SimpleListFilter):
    """Chat rooms (by default) or users' own channels: never the two mixed."""

    title = "stream"
    parameter_name = "stream"
    #: The field holding the room's name, from the admin's model.
    name_field = "name"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("user", "users' channels")]

    def choices(self, changelist: Any) -> Iterator[Any]:
        yield {
            "selected": self.value() != "user",
            "query_string": changelist.get_query_string(remove=[self.parameter_name]),
            "display": "chat rooms",
        }
        yield {
            "selected": self.value() == "user",
            "query_string": changelist.get_query_string({self.parameter_name: "user"}),
            "display": "users' channels",
        }

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        users = {f"{self.name_field}__startswith": USER_STREAM_PREFIX}
        if self.value() == "user":
            return queryset.filter(**users)
        return queryset.exclude(**users)


class MessageStreamFilter(StreamFilter):
    name_field = "room__name"


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("name", "visibility", "member_count", "last_seq", "created_at")
    list_filter = (StreamFilter, "visibility")
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


def _changeable(message: Message) -> bool:
    """Whether ``message`` can still be edited or deleted (as a stream event)."""
    return (
        message.kind in edits.CHANGEABLE_KINDS
        and message.deleted_at is None
        and not message.room.name.startswith(USER_STREAM_PREFIX)
    )


class MessageForm(ModelForm):  # type: ignore[type-arg]
    """The text, held to a client's rules: a save is an edit (``roomcast.edits``)."""

    class Meta:
        model = Message
        fields = ("text",)

    def clean_text(self) -> str:
        text = self.cleaned_data["text"]
        try:
            return edits.check_text(text)
        except ProtocolError as exc:
            raise ValidationError(exc.detail) from None


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    form = MessageForm
    list_display = ("room", "seq", "kind", "username", "text", "target_seq", "state", "created_at")
    list_filter = (MessageStreamFilter, "kind")
    search_fields = ("text", "username", "room__name")
    list_select_related = ("room",)
    readonly_fields = (
        "room",
        "seq",
        "kind",
        "user",
        "username",
        "client_id",
        "created_at",
        "target_seq",
        "edited_at",
        "deleted_at",
    )
    actions = ("delete_as_events",)

    @admin.display(description="state")
    def state(self, message: Message) -> str:
        """deleted, edited, or empty."""
        if message.deleted_at is not None:
            return "deleted"
        return "edited" if message.edited_at is not None else ""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # messages get their seqs from services, never from a form

    def has_delete_permission(self, request: HttpRequest, obj: Message | None = None) -> bool:
        if obj is not None and not _changeable(obj):
            return False  # a tombstone or an event: nothing left to delete
        return super().has_delete_permission(request, obj)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        # Removing rows would leave holes in rooms' streams, unseen by live members.
        actions.pop("delete_selected", None)
        return actions

    def get_readonly_fields(self, request: HttpRequest, obj: Message | None = None) -> Any:
        fields = tuple(super().get_readonly_fields(request, obj))
        if obj is not None and not _changeable(obj):
            return (*fields, "text")
        return fields

    def save_model(
        self,
        request: HttpRequest,
        obj: Message,
        form: ModelForm,  # type: ignore[type-arg]
        change: bool,
    ) -> None:
        if change and "text" in form.changed_data:
            # An edit event, as the site: live members see it; obj's row gets the text.
            edits.edit_message(obj.room.name, obj.seq, obj.text)

    def delete_model(self, request: HttpRequest, obj: Message) -> None:
        # The message's Delete button: a tombstone and a delete event, not a hole.
        if _changeable(obj):
            edits.delete_message(obj.room.name, obj.seq)

    @admin.action(description="Delete selected messages (as stream events)")
    def delete_as_events(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        """Delete each selected message as a stream event (a tombstone stays); events,
        deleted messages and users' channels' messages are skipped."""
        deleted = skipped = 0
        for message in queryset.select_related("room").order_by("room", "seq"):
            if not _changeable(message):
                skipped += 1
                continue
            try:
                change = edits.delete_message(message.room.name, message.seq)
            except MessageNotFoundError:  # deleted meanwhile
                skipped += 1
                continue
            deleted += 1
            self.log_change(request, message, f"Deleted as stream event {change.seq}.")
        if deleted:
            self.message_user(request, f"Deleted {deleted} message(s) as stream events.")
        if skipped:
            self.message_user(
                request,
                f"Skipped {skipped} (events, deleted already, or users' channels).",
                messages.WARNING,
            )
