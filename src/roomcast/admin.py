"""Django admin for rooms, their members, messages and bans (seqs are assigned by services).

Rooms show their visibility (and are filtered by it) with their members inline, and how
many are connected to each now, on every process (``roomcast.moderation.connected``:
distinct signed-in users plus guests' subscriptions, from ``roomcast.presence``). Every
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
log. Messages are found by room, user and text (the search box; or the list of one room
or one user, ``?room__id__exact=`` / ``?user__id__exact=``, linked from the room list).

Bans (``roomcast.models.Ban``): a user banned from a room or the whole site, for an hour,
a day, a week, a month, until a time, or for good. Saving one closes the user's sockets
on every process at once (``roomcast.revocation``); "End selected bans now" lifts them.
From the messages list, "Ban the senders of selected messages from those rooms for a
day" bans each (sender, room) of the selection.
Every change (bans, ends, edits, deletes, visibility, members) is recorded in Django's
admin log (``LogEntry``), as the admin records any change. Users' own channels (rooms
named ``user/<id>``) are listed apart from chat rooms.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db import router, transaction
from django.db.models import Count, QuerySet
from django.forms import BaseInlineFormSet, ModelForm
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from . import access, edits, moderation
from .exceptions import MessageNotFoundError
from .fanout import USER_STREAM_PREFIX
from .models import Ban, Message, Room, RoomMember
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
    list_display = (
        "name",
        "visibility",
        "member_count",
        "connected",
        "last_seq",
        "messages_link",
        "created_at",
    )
    list_filter = (StreamFilter, "visibility")
    search_fields = ("name",)
    readonly_fields = ("connected_now", "last_seq", "created_at")
    inlines = (RoomMemberInline,)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Room]:
        rooms: QuerySet[Room] = super().get_queryset(request)
        return rooms.annotate(_members=Count("memberships"))

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        # One read of presence for the page's rooms together (a Redis round trip each,
        # run at once), put on the rows the page shows.
        changelist = super().get_changelist_instance(request)
        shown = [r for r in changelist.result_list if not r.name.startswith(USER_STREAM_PREFIX)]
        counts = moderation.connected(room.name for room in shown)
        for room in shown:
            room._connected = counts.get(room.name)
        return changelist

    @admin.display(description="members", ordering="_members")
    def member_count(self, room: Room) -> int:
        """How many members the room has."""
        return int(getattr(room, "_members", 0))

    @admin.display(description="connected now")
    def connected(self, room: Room) -> str:
        """Signed-in users plus guests' subscriptions, on every process; "?" when
        presence could not be read; "-" for a user's own channel (no presence)."""
        if room.name.startswith(USER_STREAM_PREFIX):
            return "-"
        found = getattr(room, "_connected", None)
        return "?" if found is None else str(found.total)

    @admin.display(description="connected now")
    def connected_now(self, room: Room) -> str:
        """Who is connected now, on every process, by name (with their subscriptions)."""
        if room.pk is None or room.name.startswith(USER_STREAM_PREFIX):
            return "-"
        found = moderation.connected([room.name]).get(room.name)
        if found is None:
            return "unknown: presence could not be read (is Redis up?)"
        names = ", ".join(name if n == 1 else f"{name} ({n})" for name, n in found.names)
        more = ", ..." if found.truncated else ""
        text = f"{found.users} user(s), {found.guests} guest subscription(s)"
        return f"{text}: {names}{more}" if names else text

    @admin.display(description="messages")
    def messages_link(self, room: Room) -> str:
        """A link to the room's messages (and to its bans)."""
        query = urlencode({"room__id__exact": room.pk})
        if room.name.startswith(USER_STREAM_PREFIX):
            query += "&stream=user"
        return format_html(
            '<a href="{}?{}">messages</a> · <a href="{}?{}">bans</a>',
            reverse("admin:roomcast_message_changelist"),
            query,
            reverse("admin:roomcast_ban_changelist"),
            urlencode({"room__id__exact": room.pk}),
        )

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


#: How long "Ban the senders of selected messages" bans them for (a day, in seconds).
SENDER_BAN_SECS = 24 * 60 * 60


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
    search_help_text = (
        "Words of the text, the sender's name or the room's name (each word must match one)."
    )
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
    actions = ("delete_as_events", "ban_senders")

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
            try:
                edits.edit_message(obj.room.name, obj.seq, obj.text)
            except MessageNotFoundError:  # deleted since the form was shown
                self.message_user(
                    request, "Not edited: the message was deleted meanwhile.", messages.ERROR
                )

    def delete_model(self, request: HttpRequest, obj: Message) -> None:
        # The message's Delete button: a tombstone and a delete event, not a hole.
        if _changeable(obj):
            try:
                edits.delete_message(obj.room.name, obj.seq)
            except MessageNotFoundError:  # deleted meanwhile: what was asked is done
                pass

    @admin.action(description="Ban the senders of selected messages from those rooms for a day")
    def ban_senders(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        """One ban per (sender, room) among the selected messages, for
        :data:`SENDER_BAN_SECS`; guests' and the site's messages have no sender to ban,
        and staff are left to a ban made by hand (the Bans page)."""
        pairs = (
            queryset.filter(user__isnull=False, user__is_staff=False)
            .exclude(room__name__startswith=USER_STREAM_PREFIX)
            .values_list("user_id", "room__name")
            .distinct()
            .order_by()
        )
        made = 0
        for user_id, room in pairs:
            ban = moderation.ban(
                user_id,
                room=room,
                duration=SENDER_BAN_SECS,
                reason="from the messages list",
                by=request.user,
            )
            self.log_addition(request, ban, [{"added": {}}])
            made += 1
        self.message_user(request, f"Banned {made} sender(s) from their rooms for a day.")

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


# -- bans ----------------------------------------------------------------------------------------

#: The lengths a ban form offers, in seconds (and "" for the end time given, or for good).
BAN_DURATIONS = (
    ("3600", "1 hour"),
    ("86400", "1 day"),
    ("604800", "7 days"),
    ("2592000", "30 days"),
    ("", "until the end time below (empty: permanent)"),
)


class BanForm(ModelForm):  # type: ignore[type-arg]
    """A ban: whom, from where (no room: the whole site), for how long."""

    duration = forms.ChoiceField(
        choices=BAN_DURATIONS,
        required=False,
        initial="86400",
        help_text="From now. Choose the last to give an end time, or none for good.",
    )

    class Meta:
        model = Ban
        fields = ("user", "room", "duration", "until", "reason")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:  # an existing ban: its end time is edited
            self.fields.pop("duration")

    def clean_room(self) -> Room | None:
        room: Room | None = self.cleaned_data.get("room")
        if room is not None and room.name.startswith(USER_STREAM_PREFIX):
            raise ValidationError(
                "A user's own channel is not a chat room: ban from the site instead."
            )
        return room

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        seconds = cleaned.get("duration")
        now = timezone.now()
        if seconds:
            cleaned["until"] = now + datetime.timedelta(seconds=int(seconds))
        elif self.instance.pk is None and cleaned.get("until") is not None:
            if cleaned["until"] <= now:
                self.add_error("until", "A new ban's end time must be in the future.")
        return cleaned


class BanStateFilter(admin.SimpleListFilter):
    """Bans in force now, or ended."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", "in force"), ("ended", "ended")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "active":
            return access.in_force(queryset)  # type: ignore[no-any-return]
        if self.value() == "ended":
            return queryset.filter(until__lte=timezone.now())
        return queryset


class BanScopeFilter(admin.SimpleListFilter):
    """Site bans or room bans."""

    title = "from"
    parameter_name = "scope"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("site", "the whole site"), ("room", "a room")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() in ("site", "room"):
            return queryset.filter(room__isnull=self.value() == "site")
        return queryset


@admin.register(Ban)
class BanAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Bans: saving one in force closes the user's sockets on every process at once
    (the post_save receiver of ``roomcast.revocation``); they end by themselves."""

    form = BanForm
    list_display = ("user", "where", "until", "in_force", "reason", "created_by", "created_at")
    list_filter = (BanStateFilter, BanScopeFilter)
    search_fields = ("user__username", "room__name", "reason")
    search_help_text = "The user's name, the room's name or words of the reason."
    raw_id_fields = ("user", "room")
    list_select_related = ("user", "room", "created_by")
    readonly_fields = ("created_by", "created_at")
    actions = ("end_now",)

    @admin.display(description="from")
    def where(self, ban: Ban) -> str:
        """The room, or the whole site."""
        return "the whole site" if ban.room_id is None else str(ban.room)

    @admin.display(description="in force", boolean=True)
    def in_force(self, ban: Ban) -> bool:
        """Whether the ban keeps the user out now."""
        return ban.in_force

    def save_model(
        self,
        request: HttpRequest,
        obj: Ban,
        form: ModelForm,  # type: ignore[type-arg]
        change: bool,
    ) -> None:
        if not change:
            obj.created_by = request.user if request.user.is_authenticated else None
        super().save_model(request, obj, form, change)

    @admin.action(description="End selected bans now")
    def end_now(self, request: HttpRequest, queryset: QuerySet[Ban]) -> None:
        """Lift the selected bans in force: their end becomes now (the rows stay)."""
        ended = moderation.end_bans(queryset)
        for ban in ended:
            self.log_change(request, ban, "Ended the ban.")
        self.message_user(request, f"Ended {len(ended)} ban(s).")
