"""``roomcast manage``: Django's ``manage.py`` for the bundled site."""

from __future__ import annotations

import argparse

from ._common import (
    Parser,
    add_service_flags,
    apply_service_flags,
    describe,
    require_server_extra,
    service_modules,
    setup_django,
)
from ._database import database_error


def add_parser(commands: argparse._SubParsersAction[Parser]) -> None:
    """Add ``manage`` to the ``roomcast`` command."""
    manage = commands.add_parser(
        "manage",
        help="Django's manage.py for the bundled site (createsuperuser, roomcast_push...)",
        description=describe(
            "Run a Django management command against the bundled site's settings "
            "(the same data dir, database and Redis as roomcast serve): "
            "roomcast manage createsuperuser, roomcast manage roomcast_push ROOM TEXT, "
            "roomcast manage help. Flags of this command come before the management "
            "command's name; everything after it is the management command's."
        ),
        epilog="example:\n  roomcast manage --database postgresql://postgres@127.0.0.1/chat "
        "createsuperuser",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    manage.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        metavar="COMMAND ...",
        help="the management command and its arguments (default: help)",
    )
    add_service_flags(manage)
    manage.set_defaults(run=run, prog=manage.prog)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``manage.py ARGS`` against the bundled site's settings."""
    apply_service_flags(args)
    require_server_extra("roomcast manage", service_modules())
    setup_django()  # a bad setting: one line here, not at the management command's start
    from django.core.management import execute_from_command_line
    from django.db import DatabaseError

    try:
        execute_from_command_line(["roomcast manage", *(args.args or ["help"])])
    except DatabaseError as exc:  # no such database, PostgreSQL down: one line, not 80
        raise database_error(exc) from None
    return 0
