"""``roomcast token NAME``: print a connection token for a user of the bundled site.

The token is the only thing printed (``TOKEN=$(roomcast token alice)`` works); it is
signed with the site's ``SECRET_KEY``, so it is issued against the same data dir (or
``ROOMCAST_SECRET_KEY``) as the servers that will check it. With ``--server`` it comes
from a running server's HTTP API (``POST /api/tokens``) instead.
"""

from __future__ import annotations

import argparse

from ._api import DEFAULT_SERVER, request
from ._common import (
    EXIT_FAILED,
    CommandError,
    Parser,
    add_service_flags,
    apply_service_flags,
    describe,
)
from ._database import database_error, ready_database

#: The most digits --ttl takes (the API's bound, 30 days, is checked after).
_TTL_MAX_DIGITS = 18


def add_parser(commands: argparse._SubParsersAction[Parser]) -> None:
    """Add ``token`` to the ``roomcast`` command."""
    token = commands.add_parser(
        "token",
        help="print a connection token for a user",
        description=describe(
            "Print a signed connection token for the user NAME, and nothing else. A client "
            "without a session cookie sends it in the Authorization: Bearer header of the "
            'WebSocket handshake, or a browser page in its first frame ({"type": "auth", '
            '"token": ...}); never in the URL. It expires after --ttl seconds; tokens '
            "cannot be revoked one by one, but deactivating the user or changing their "
            "password ends them all.",
        ),
        epilog="examples:\n"
        "  TOKEN=$(roomcast token alice --ttl 600)\n"
        "  roomcast token alice --server https://chat.example.com --api-key $KEY",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    token.add_argument("name", metavar="NAME", help="the user's username")
    token.add_argument(
        "--ttl",
        type=_seconds,
        metavar="SECONDS",
        help="lifetime in seconds, at most 2592000 (30 days) (default: the TOKEN_TTL_SECS "
        "setting, 3600)",
    )
    token.add_argument(
        "--server",
        metavar="URL",
        help=f"ask this server's HTTP API for the token (e.g. {DEFAULT_SERVER}) instead of "
        "signing it here with the site's secret key",
    )
    token.add_argument(
        "--api-key",
        metavar="KEY",
        help="with --server: the HTTP API key (env ROOMCAST_API_KEY; default: the api_key "
        "file in ROOMCAST_DATA_DIR, ./.roomcast)",
    )
    add_service_flags(token)
    token.set_defaults(run=run, prog=token.prog)


def _seconds(value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > _TTL_MAX_DIGITS:
        raise argparse.ArgumentTypeError(f"{value[:20]!r} is not a number of seconds")
    return int(value)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Print a token for ``args.name``."""
    apply_service_flags(args)
    if args.server:
        body = {"user": args.name, **({"ttl": args.ttl} if args.ttl is not None else {})}
        reply = request(args, "POST", "/api/tokens", body)
        if not isinstance(reply, dict) or not isinstance(reply.get("token"), str):
            raise CommandError(f"unexpected answer {reply!r:.100}", EXIT_FAILED)
        print(reply["token"])
        return 0
    ready_database(args.prog)
    from django.contrib.auth import get_user_model
    from django.db import DatabaseError

    from roomcast import api, auth
    from roomcast.protocol import ProtocolError, codec

    try:
        ttl = None if args.ttl is None else api.parse_ttl(args.ttl, "--ttl")
        codec.check_text(args.name, "NAME")  # NUL, or argv bytes that are not UTF-8
    except ProtocolError as exc:
        raise CommandError(exc.detail) from None
    User = get_user_model()
    try:
        user = User._default_manager.filter(**{User.USERNAME_FIELD: args.name}).first()
    except DatabaseError as exc:
        raise database_error(exc) from None
    if user is None:
        raise CommandError(f"no user {args.name!r}: create it with `roomcast user create NAME`")
    if not user.is_active:
        raise CommandError(f"user {args.name!r} is inactive: no token is issued")
    from roomcast import access, revocation

    if (ban := access.banned(user.pk)) is not None:  # as POST /api/tokens answers 403
        raise CommandError(
            f"user {args.name!r} is {revocation.ban_reason(ban)}: no token is issued "
            "(end the ban in the admin's Bans page first)"
        )
    print(auth.issue_token(user, ttl=ttl))
    return 0
