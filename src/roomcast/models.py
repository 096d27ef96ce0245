"""Persistence: rooms and their stored message streams.

Layer: models. Every chat message has a place in its room's stream: ``Message.seq`` is
the room's next sequence number, taken from ``Room.last_seq`` in the transaction that
stores the message (``services.store_message``), so seqs are dense and ordered per room.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Room(models.Model):
    """A chat room, named by any Unicode text (NFC-normalised, see protocol.codec)."""

    name = models.CharField(max_length=200, unique=True)
    last_seq = models.BigIntegerField(default=0, help_text="Seq of the room's latest message.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name


class Message(models.Model):
    """One message of a room's stream."""

    class Kind(models.TextChoices):
        CHAT = "chat", "chat"
        SYSTEM = "system", "system"

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

    def __str__(self) -> str:
        return f"{self.room_id}#{self.seq}"
