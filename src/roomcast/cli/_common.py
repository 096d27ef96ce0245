"""Helpers shared by the ``roomcast`` commands: service flags and Django set-up.

Layer: command line. Imports only the standard library at import time, so that
``roomcast --help`` works whatever extras are installed.
"""

from __future__ import annotations

import argparse
import os


def setup_django() -> None:
    """Load the bundled site's settings (``roomcast.server.settings``) and set Django up."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "roomcast.server.settings")
    import django

    django.setup()


def add_service_flags(parser: argparse.ArgumentParser) -> None:
    """``--database``, ``--redis`` and ``--layer``: the services a command runs against."""
    parser.add_argument(
        "--database", metavar="URL", help="database URL (env ROOMCAST_DATABASE_URL)"
    )
    parser.add_argument("--redis", metavar="URL", help="Redis URL (env ROOMCAST_REDIS_URL)")
    parser.add_argument(
        "--layer", choices=("pubsub", "core"), help="channels_redis layer (env ROOMCAST_LAYER)"
    )


def apply_service_flags(args: argparse.Namespace) -> None:
    """Set the variables the bundled site's settings read from the service flags given."""
    for flag, env in (
        ("database", "ROOMCAST_DATABASE_URL"),
        ("redis", "ROOMCAST_REDIS_URL"),
        ("layer", "ROOMCAST_LAYER"),
    ):
        value = getattr(args, flag, None)
        if value:
            os.environ[env] = value
