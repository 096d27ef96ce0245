"""Persistence: rooms and their stored message streams.

Layer: models. Every chat message has a place in its room's stream: ``Message.seq`` is
the room's next sequence number, taken from ``Room.last_seq`` in the transaction that
stores the message (``services.store_message``), so seqs are dense and ordered per room.

Edits and deletes are messages too (kinds ``edit`` and ``delete``, naming the message
they change by ``target_seq``): each takes the room's next seq, so a client replaying
the stream sees them. The changed message's own row holds its final state (its new text
and ``edited_at``; or no text and ``deleted_at``), which history pages show.

Bans (``Ban``) keep a user out of a room or the site for a while (``roomcast.moderation``).

A user's own channel is a room named ``user/<id>`` (``fanout.user_room``), stored alike.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class Room(models.Model):
    """A chat room, named by any Unicode text (NFC-normalised, see protocol.codec).

    Who may join, read and post is decided by ``roomcast.access`` from ``visibility``
    and the room's :class:`RoomMember` rows; a room that has no row yet is public.
    """

    class Visibility(models.TextChoices):
        PUBLIC = "public", "public: anyone may join, read and post"
        PRIVATE = "private", "private: members and staff only"
        READ_ONLY = "read_only", "read-only: anyone may read; staff and room admins post"

    name = models.CharField(max_length=200, unique=True)
    last_seq = models.BigIntegerField(default=0, help_text="Seq of the room's latest message.")
    visibility = models.CharField(
        max_length=16, choices=Visibility.choices, default=Visibility.PUBLIC
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("name",)
        permissions = [("post_in_read_only", "Can post in read-only rooms")]

    def __str__(self) -> str:
        return self.name


class Message(models.Model):
    """One message of a room's stream."""

    class Kind(models.TextChoices):
        CHAT = "chat", "chat"
        SYSTEM = "system", "system"
        #: Stream events: ``target_seq`` names the message changed.
        EDIT = "edit", "edit"
        DELETE = "delete", "delete"
        #: A user channel's JSON payload (``push.send_to_user`` with data): ``text`` holds
        #: its JSON text.
        DATA = "data", "data"

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="messages")
    seq = models.BigIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.CHAT)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The sender's display name when sent: history shows who said it even after the
    # account is renamed or deleted.
    username = models.CharField(max_length=150, blank=True)
    text = models.TextField()
    client_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField()
    # An edit or delete event: the seq of the message it changes.
    target_seq = models.BigIntegerField(null=True, blank=True)
    # The final state of a changed message (and of an edit event whose target was
    # deleted: its text is gone too).
    edited_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("room", "seq")
        constraints = [
            models.UniqueConstraint(fields=("room", "seq"), name="roomcast_message_room_seq"),
            # A client's message is stored once, however often it is sent.
            models.UniqueConstraint(
                fields=("room", "client_id"),
                condition=~models.Q(client_id=""),
                name="roomcast_message_room_client_id",
            ),
        ]
        indexes = [
            # A delete finds the edit events of its target (their text goes too).
            models.Index(
                fields=("room", "target_seq"),
                condition=models.Q(target_seq__isnull=False),
                name="roomcast_message_target",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.room_id}#{self.seq}"


class RoomMember(models.Model):
    """A user's membership of a room: needed to join a private room; admins moderate."""

    class Role(models.TextChoices):
        MEMBER = "member", "member"
        ADMIN = "admin", "admin"

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="roomcast_memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("room", "user")
        constraints = [
            models.UniqueConstraint(fields=("room", "user"), name="roomcast_roommember_unique")
        ]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.room_id} ({self.role})"


class ReadCursor(models.Model):
    """How far a user has read a room: the seq of the last message read.

    Only moves forward (``roomcast.cursors.mark_read``); one row per (user, room),
    shared by every device of the user.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="roomcast_read_cursors"
    )
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="read_cursors")
    seq = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=("user", "room"), name="roomcast_readcursor_unique")
        ]

    def __str__(self) -> str:
        return f"{self.user_id} read {self.room_id} to {self.seq}"


class Ban(models.Model):
    """A user banned from one room, or from the whole site (``room`` None), until a time
    (``until``; None: until lifted).

    Checked whenever access is decided (``roomcast.access.check``), so it ends by itself:
    a ban whose ``until`` has passed refuses nothing, with no job to remove it. Lifting a
    ban early sets ``until`` to now (``roomcast.moderation.unban``), which keeps the row
    as a record. Saving an active ban closes the user's sockets on every process
    (``roomcast.revocation``).
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="roomcast_bans"
    )
    room = models.ForeignKey(
        Room,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="bans",
        help_text="Empty: banned from the whole site.",
    )
    until = models.DateTimeField(
        null=True, blank=True, help_text="When the ban ends by itself. Empty: permanent."
    )
    reason = models.CharField(
        max_length=200, blank=True, help_text="For moderators; not sent to the user."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created_at",)
        indexes = [
            # Deciding access reads a user's bans (the active ones: until is null or later).
            models.Index(fields=("user", "until"), name="roomcast_ban_user_until"),
        ]

    def __str__(self) -> str:
        where = f"room {self.room}" if self.room_id is not None else "the site"
        return f"{self.user} from {where}"

    @property
    def in_force(self) -> bool:
        """Whether the ban keeps the user out now (``access.in_force`` for one row)."""
        return self.until is None or self.until > timezone.now()
