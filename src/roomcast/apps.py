"""Django app config: registers the system checks and the revocation receivers."""

from __future__ import annotations

from django.apps import AppConfig


class RoomcastConfig(AppConfig):
    """The ``roomcast`` Django app."""

    name = "roomcast"
    verbose_name = "roomcast"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # checks registers the system checks: imported for that side effect.
        from . import checks, revocation  # noqa: F401

        # Rights taken away (access_changed, a user deactivated, deleted or logged out)
        # reach live sockets on every process.
        revocation.connect_receivers()
