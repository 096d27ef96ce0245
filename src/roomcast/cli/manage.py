"""``roomcast manage``: Django's ``manage.py`` for the bundled site."""

from __future__ import annotations

import argparse
import os

from ._common import add_service_flags, apply_service_flags


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``manage`` to the ``roomcast`` command."""
    manage = commands.add_parser("manage", help="Django management commands for the bundled site")
    manage.add_argument("args", nargs=argparse.REMAINDER)
    add_service_flags(manage)
    manage.set_defaults(run=run)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``manage.py ARGS`` against the bundled site's settings."""
    apply_service_flags(args)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "roomcast.server.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(["roomcast manage", *args.args])
    return 0
