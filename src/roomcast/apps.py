"""Django app config: registers the system checks."""

from __future__ import annotations

from django.apps import AppConfig


class RoomcastConfig(AppConfig):
    """The ``roomcast`` Django app."""

    name = "roomcast"
    verbose_name = "roomcast"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the checks; import for side effect)
