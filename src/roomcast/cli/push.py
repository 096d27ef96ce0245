"""``roomcast push`` and ``roomcast disconnect``: push to a room from the shell.

Through Redis (``--redis`` or ``ROOMCAST_REDIS_URL``, no ``--server``) the command
stores and publishes from its own process, with the bundled site's settings; otherwise
it calls a running server's HTTP push API, which needs nothing beyond the standard
library. Room names and texts are checked here, before any request, with the protocol's
own rules; the server's answers are shown by their ``detail``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from roomcast.protocol import ProtocolError, codec

from ._api import DEFAULT_SERVER, call, quote, request
from ._common import (
    EXIT_FAILED,
    CommandError,
    Parser,
    add_service_flags,
    apply_service_flags,
    describe,
    require_server_extra,
    service_modules,
    setup_django,
)
from ._database import check_database, check_redis, database_error

#: Most bytes of a message read from standard input: uvicorn's frame limit under roomcast
#: serve. The server's own limit (MAX_FRAME_BYTES, 16 KiB by default) answers with a 413.
STDIN_MAX_BYTES = 1024 * 1024
#: Longest disconnect reason, in characters, as the HTTP push API takes it (the
#: WebSocket close frame holds 123 bytes of reason).
REASON_MAX_CHARS = 120
#: Longest username --user takes (the HTTP API's bound: an e-mail address).
USERNAME_MAX_CHARS = 254
#: Room names are checked here for everything but their length: the limit is the
#: server's ROOM_NAME_MAX_CHARS setting, which it answers with its own detail.
_ANY_LENGTH = sys.maxsize


def add_parsers(commands: argparse._SubParsersAction[Parser]) -> None:
    """Add ``push`` and ``disconnect`` to the ``roomcast`` command."""
    push = commands.add_parser(
        "push",
        help="post a system message to a room",
        description=describe(
            "Post a system message to ROOM: it is stored with the room's next "
            "sequence number and sent to every member; or, with --user NAME, to that user's "
            "own channel. Without Redis the message goes through "
            "the HTTP push API of the server at --server; with --redis (or ROOMCAST_REDIS_URL) "
            "and no --server it is stored and published from this process, into the "
            "database of --database (or ROOMCAST_DATABASE_URL), which must be the servers'."
        ),
        epilog="examples:\n"
        '  roomcast push lobby "Deploy finished"\n'
        "  git log -1 --format=%s | roomcast push deploys -\n"
        '  roomcast push --user alice "Your export is ready"\n'
        "  roomcast push --server https://chat.example.com --api-key $KEY lobby hi\n"
        "  roomcast push --redis redis://127.0.0.1:6379/0 \\\n"
        "      --database postgresql://postgres@127.0.0.1/chat lobby hi",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [flags] ROOM TEXT\n       %(prog)s [flags] --user NAME TEXT",
    )
    # Both optional to argparse: with --user there is no ROOM (run_push checks).
    push.add_argument(
        "room", metavar="ROOM", nargs="?", help="the room's name (any text without '/')"
    )
    push.add_argument(
        "text",
        metavar="TEXT",
        nargs="?",
        help="the message; - reads it from standard input (trailing newlines dropped)",
    )
    push.add_argument(
        "--user",
        metavar="NAME",
        help="send TEXT to this user's own channel instead of a room: every /ws/ socket of "
        "theirs gets it (stored: a socket that reconnects gets what it missed)",
    )
    _push_flags(push)
    push.set_defaults(run=run_push, prog=push.prog)

    disconnect = commands.add_parser(
        "disconnect",
        help="close the sockets of a room, or of one user in it",
        description=describe(
            "Close the WebSockets of ROOM in every server process, with close "
            "code 4000 (clients do not reconnect): every member's, or only those of the user "
            "given by --user (a username) or --user-id. Through the HTTP push API or Redis, "
            "like roomcast push."
        ),
        epilog="examples:\n  roomcast disconnect lobby --user alice --reason 'banned for spam'"
        "\n  roomcast disconnect lobby --user-id 42",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    disconnect.add_argument("room", metavar="ROOM", help="the room's name")
    whose = disconnect.add_mutually_exclusive_group()
    whose.add_argument("--user", metavar="NAME", help="close only this user's sockets")
    whose.add_argument(
        "--user-id",
        type=_user_id,
        metavar="ID",
        help="close only this user's sockets, by the id of Django's user model",
    )
    disconnect.add_argument(
        "--reason",
        default="",
        help=f"close reason sent to the clients (at most {REASON_MAX_CHARS} characters)",
    )
    _push_flags(disconnect)
    disconnect.set_defaults(run=run_disconnect, prog=disconnect.prog)


def _push_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        metavar="URL",
        help=f"the server's URL, for the HTTP push API (default {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help="the HTTP push API key (env ROOMCAST_API_KEY; default: the api_key file in "
        "ROOMCAST_DATA_DIR, ./.roomcast)",
    )
    add_service_flags(parser)


def _user_id(value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 18 or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value[:20]!r} is not a user id (a positive number)")
    return int(value)


# -- checks before any request ----------------------------------------------------------


def _room(args: argparse.Namespace) -> str:
    try:
        return codec.validate_room_name(args.room, max_chars=_ANY_LENGTH)
    except ProtocolError as exc:
        raise CommandError(f"ROOM {args.room[:40]!r}: {exc.detail}") from None


def _text(args: argparse.Namespace) -> str:
    text = _read_stdin() if args.text == "-" else args.text
    if not text.strip():
        raise CommandError("the message is empty: give TEXT, or - with the text on standard input")
    try:
        codec.check_text(text, "TEXT")
    except ProtocolError as exc:  # a lone surrogate: argv bytes that are not UTF-8
        raise CommandError(f"{exc.detail} Pass UTF-8 text.") from None
    return text


def _read_stdin() -> str:
    data = sys.stdin.buffer.read(STDIN_MAX_BYTES + 1)
    if len(data) > STDIN_MAX_BYTES:
        raise CommandError(
            f"standard input holds more than {STDIN_MAX_BYTES // 1024} KiB; a message is "
            "at most the server's MAX_FRAME_BYTES (16 KiB by default)"
        )
    try:
        return data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise CommandError(f"standard input is not UTF-8 text (byte {exc.start})") from None


def _reason(args: argparse.Namespace) -> str:
    if len(args.reason) > REASON_MAX_CHARS:
        raise CommandError(f"--reason is limited to {REASON_MAX_CHARS} characters")
    try:
        codec.check_text(args.reason, "--reason")
    except ProtocolError as exc:
        raise CommandError(exc.detail) from None
    return str(args.reason)


# -- through Redis ------------------------------------------------------------------------


def _direct(args: argparse.Namespace) -> bool:
    """Push in-process (through Redis) rather than over HTTP?"""
    apply_service_flags(args)
    return bool(os.environ.get("ROOMCAST_REDIS_URL")) and args.server is None


def _setup_direct(command: str, *, store: bool) -> None:
    require_server_extra(f"{command} through Redis", ["redis", *service_modules()])
    setup_django()
    if store:
        check_database()
    check_redis(same_database=store)


def run_push(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Post ``args.text`` to ``args.room`` (or to ``args.user``'s own channel)."""
    if args.user is not None:
        if args.text is not None:
            raise CommandError("with --user NAME give TEXT alone, no ROOM")
        if args.room is None:
            raise CommandError("the following arguments are required: TEXT")
        args.text, args.room = args.room, None
        return _push_to_user(args)
    if args.room is None or args.text is None:
        missing = "ROOM, TEXT" if args.room is None else "TEXT"
        raise CommandError(f"the following arguments are required: {missing}")
    room = _room(args)
    text = _text(args)
    if _direct(args):
        _setup_direct("roomcast push", store=True)
        from django.db import DatabaseError

        from roomcast.exceptions import PushError
        from roomcast.push import send_to_room

        try:
            stored = send_to_room(room, text)
        except (ProtocolError, ValueError) as exc:  # the room name's length, the text
            raise CommandError(getattr(exc, "detail", str(exc))) from None
        except DatabaseError as exc:
            raise database_error(exc) from None
        except PushError as exc:
            raise CommandError(f"{exc} (the message is stored)", EXIT_FAILED) from None
        room, seq = stored.room, stored.seq
    else:
        reply = call(args, room, "messages", {"message": text})
        if not isinstance(reply, dict) or "seq" not in reply:
            raise CommandError(f"unexpected answer {reply!r:.100}", EXIT_FAILED)
        room, seq = reply.get("room", room), reply["seq"]
    print(f"pushed to {room!r} as seq {seq}")
    return 0


def _username(name: str) -> str:
    if not 0 < len(name) <= USERNAME_MAX_CHARS:
        raise CommandError(f"--user must be a username of 1 to {USERNAME_MAX_CHARS} characters")
    try:
        codec.check_text(name, "--user")
    except ProtocolError as exc:
        raise CommandError(f"{exc.detail} Pass UTF-8 text.") from None
    return name


def _push_to_user(args: argparse.Namespace) -> int:
    """Send ``args.text`` to user ``args.user``'s own channel."""
    name = _username(args.user)
    text = _text(args)
    if _direct(args):
        _setup_direct("roomcast push --user", store=True)
        from django.db import DatabaseError

        from roomcast.exceptions import PushError
        from roomcast.push import UserNotFoundError, send_to_user

        try:
            stored = send_to_user(name, text)
        except UserNotFoundError:
            raise CommandError(f"no user {name!r} in this site's database") from None
        except ValueError as exc:  # the text's size
            raise CommandError(str(exc)) from None
        except DatabaseError as exc:
            raise database_error(exc) from None
        except PushError as exc:
            raise CommandError(f"{exc} (the message is stored)", EXIT_FAILED) from None
        seq = stored.seq
    else:
        reply = request(args, "POST", f"/api/users/{quote(name)}/messages", {"message": text})
        if not isinstance(reply, dict) or "seq" not in reply:
            raise CommandError(f"unexpected answer {reply!r:.100}", EXIT_FAILED)
        name, seq = reply.get("user", name), reply["seq"]
    print(f"sent to user {name!r} as seq {seq}")
    return 0


def run_disconnect(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Close the sockets of ``args.room`` (of ``args.user_id`` only, if given)."""
    room = _room(args)
    reason = _reason(args)
    if _direct(args):
        _setup_direct("roomcast disconnect", store=False)
        from roomcast.exceptions import PushError
        from roomcast.push import disconnect

        if args.user is not None:
            from django.contrib.auth import get_user_model

            User = get_user_model()
            found = User._default_manager.filter(**{User.USERNAME_FIELD: args.user}).first()
            if found is None:
                raise CommandError(f"no user {args.user!r} in this site's database")
            args.user_id = found.pk
        try:
            disconnect(room, user_id=args.user_id, reason=reason)
        except ProtocolError as exc:
            raise CommandError(exc.detail) from None
        except PushError as exc:
            raise CommandError(str(exc), EXIT_FAILED) from None
    else:
        body: dict[str, Any] = {"reason": reason}
        if args.user is not None:
            body["user"] = args.user
        elif args.user_id is not None:
            body["user_id"] = args.user_id
        call(args, room, "disconnect", body)
    if args.user is not None:
        whose = f"{args.user}'s sockets"
    elif args.user_id is not None:
        whose = f"user {args.user_id}'s sockets"
    else:
        whose = "every socket"
    print(f"asked every server to close {whose} in {room!r}")
    return 0
