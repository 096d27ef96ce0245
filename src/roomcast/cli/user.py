"""``roomcast user create``: add a user to the bundled site's database.

A user made without ``--password-stdin`` has an unusable password: it cannot log in to
the site's pages or the admin, and connects with a token only (``roomcast token NAME``).
The password, when given, is read from standard input, never from the command line,
where other users of the machine see it (``ps``) and shells keep it in their history.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import (
    CommandError,
    Parser,
    add_service_flags,
    apply_service_flags,
    describe,
)
from ._database import database_error, ready_database

#: Most bytes of a password read from standard input: Django's hashers refuse longer
#: ones (django.contrib.auth.hashers.MAXIMUM_PASSWORD_LENGTH).
PASSWORD_MAX_BYTES = 4096


def add_parser(commands: argparse._SubParsersAction[Parser]) -> None:
    """Add ``user`` (``user create``) to the ``roomcast`` command."""
    user = commands.add_parser(
        "user",
        help="create users of the bundled site (for tokens, or to log in)",
        description=describe(
            "Manage the users of the bundled site's database (the one roomcast serve "
            "uses, from --database or ROOMCAST_DATABASE_URL). roomcast manage "
            "createsuperuser makes an administrator; roomcast manage changepassword NAME "
            "sets a password."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = user.add_subparsers(
        title="actions", dest="action", metavar="ACTION", help="what to do"
    )
    user.set_defaults(run=_no_action(user), prog=user.prog)
    create = actions.add_parser(
        "create",
        help="create a user",
        description=describe(
            "Create the user NAME. Without --password-stdin the user has no password: it "
            "cannot log in to the site, and connects with a token (roomcast token NAME)."
        ),
        epilog="examples:\n"
        "  roomcast user create alice\n"
        "  roomcast user create bob --staff --password-stdin < bob-password.txt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    create.add_argument("name", metavar="NAME", help="the username (Django's username rules)")
    create.add_argument(
        "--staff",
        action="store_true",
        help="a staff user: may join, read and post in every room, and log in to /admin/",
    )
    create.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (one line; the trailing newline is "
        "dropped); without it the user has no password",
    )
    add_service_flags(create)
    create.set_defaults(run=run_create, prog=create.prog)


def _no_action(parser: argparse.ArgumentParser) -> Any:
    def run(args: argparse.Namespace, _: argparse.ArgumentParser) -> int:
        parser.error("give an ACTION: create")

    return run


def _read_password() -> str:
    data = sys.stdin.buffer.read(PASSWORD_MAX_BYTES + 1)
    if len(data) > PASSWORD_MAX_BYTES:
        raise CommandError(f"the password on standard input is over {PASSWORD_MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(f"standard input is not UTF-8 text (byte {exc.start})") from None
    password = text.removesuffix("\n").removesuffix("\r")
    if not password:
        raise CommandError("the password on standard input is empty")
    if "\n" in password or "\x00" in password:
        raise CommandError("the password on standard input must be one line, without NUL")
    return password


def run_create(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Create the user ``args.name``."""
    password = _read_password() if args.password_stdin else None
    apply_service_flags(args)
    ready_database("roomcast user create")
    from django.contrib.auth import get_user_model, password_validation
    from django.core.exceptions import ValidationError
    from django.db import DatabaseError, IntegrityError, transaction

    User = get_user_model()
    field = User._meta.get_field(User.USERNAME_FIELD)
    try:
        name = field.clean(args.name, None)  # type: ignore[union-attr]
        if password is not None:
            password_validation.validate_password(password, User(**{User.USERNAME_FIELD: name}))
    except ValidationError as exc:
        raise CommandError(f"NAME {args.name[:40]!r}: {' '.join(exc.messages)}") from None
    try:
        if User._default_manager.filter(**{User.USERNAME_FIELD: name}).exists():
            raise CommandError(f"user {name!r} exists already")
        with transaction.atomic():
            User._default_manager.create_user(
                **{User.USERNAME_FIELD: name}, password=password, is_staff=args.staff
            )
    except IntegrityError:  # made by someone else since the check
        raise CommandError(f"user {name!r} exists already") from None
    except DatabaseError as exc:
        raise database_error(exc) from None
    kind = "staff user" if args.staff else "user"
    how = "with a password" if password is not None else "without a password: tokens only"
    print(f"created {kind} {name!r} ({how})")
    return 0
