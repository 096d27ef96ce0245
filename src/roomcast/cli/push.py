"""``roomcast push`` and ``roomcast disconnect``: push to a room from the shell.

Through Redis (``--redis`` or ``ROOMCAST_REDIS_URL``, no ``--server``) the command
stores and publishes from its own process, with the bundled site's settings; otherwise
it calls a running server's HTTP push API, which needs nothing beyond the standard
library. Room names and texts are checked here, before any request, with the protocol's
own rules; the server's answers are shown by their ``detail``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from roomcast.protocol import ProtocolError, codec

from ._common import (
    EXIT_FAILED,
    EXIT_USAGE,
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

DEFAULT_SERVER = "http://127.0.0.1:8000"
#: Longest wait for the server's answer, in seconds: a push is stored before the answer,
#: and a server that has not answered by then is stuck (its store queue is bounded).
HTTP_TIMEOUT_SECS = 30
#: Most bytes read from a server's answer (a push API reply is under 200 bytes; an error
#: page of a proxy may be a few KB).
REPLY_MAX_BYTES = 64 * 1024
#: Most bytes of a message read from standard input: uvicorn's frame limit under roomcast
#: serve. The server's own limit (MAX_FRAME_BYTES, 16 KiB by default) answers with a 413.
STDIN_MAX_BYTES = 1024 * 1024
#: Longest disconnect reason, in characters, as the HTTP push API takes it (the
#: WebSocket close frame holds 123 bytes of reason).
REASON_MAX_CHARS = 120
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
            "sequence number and sent to every member. Without Redis the message goes through "
            "the HTTP push API of the server at --server; with --redis (or ROOMCAST_REDIS_URL) "
            "and no --server it is stored and published from this process, into the "
            "database of --database (or ROOMCAST_DATABASE_URL), which must be the servers'."
        ),
        epilog="examples:\n"
        '  roomcast push lobby "Deploy finished"\n'
        "  git log -1 --format=%s | roomcast push deploys -\n"
        "  roomcast push --server https://chat.example.com --api-key $KEY lobby hi\n"
        "  roomcast push --redis redis://127.0.0.1:6379/0 \\\n"
        "      --database postgresql://postgres@127.0.0.1/chat lobby hi",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    push.add_argument("room", metavar="ROOM", help="the room's name (any text without '/')")
    push.add_argument(
        "text",
        metavar="TEXT",
        help="the message; - reads it from standard input (trailing newlines dropped)",
    )
    _push_flags(push)
    push.set_defaults(run=run_push, prog=push.prog)

    disconnect = commands.add_parser(
        "disconnect",
        help="close the sockets of a room, or of one user in it",
        description=describe(
            "Close the WebSockets of ROOM in every server process, with close "
            "code 4000 (clients do not reconnect): every member's, or only those of the user "
            "given by --user-id. Through the HTTP push API or Redis, like roomcast push."
        ),
        epilog="example:\n  roomcast disconnect lobby --user-id 42 --reason 'banned for spam'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    disconnect.add_argument("room", metavar="ROOM", help="the room's name")
    disconnect.add_argument(
        "--user-id",
        type=_user_id,
        metavar="ID",
        help="close only this user's sockets (the id of Django's user model)",
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


def _server(args: argparse.Namespace) -> str:
    server = str(args.server or DEFAULT_SERVER).rstrip("/")
    parts = urllib.parse.urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CommandError(
            f"--server {server!r} is not an http:// or https:// URL; e.g. {DEFAULT_SERVER}"
        )
    return server


# -- over HTTP ----------------------------------------------------------------------------


def _api_key(args: argparse.Namespace) -> tuple[str, str]:
    """The HTTP push API key, and where it came from (for the error if it is refused)."""
    if args.api_key:
        return str(args.api_key), "--api-key"
    if os.environ.get("ROOMCAST_API_KEY"):
        return os.environ["ROOMCAST_API_KEY"], "ROOMCAST_API_KEY"
    # The bundled site keeps its key in its data dir. Read, never created here: a new
    # key would only be refused.
    data_dir = Path(os.environ.get("ROOMCAST_DATA_DIR") or Path.cwd() / ".roomcast")
    path = data_dir.resolve() / "api_key"
    try:
        return path.read_text().strip(), str(path)
    except (FileNotFoundError, NotADirectoryError):
        raise CommandError(
            f"no API key: {path} does not exist. Pass --api-key (or set ROOMCAST_API_KEY), "
            "or run this where the server's .roomcast/ is (or set ROOMCAST_DATA_DIR to it)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read the API key from {path}: {exc}") from None


def _http(args: argparse.Namespace, room: str, action: str, body: dict[str, Any]) -> Any:
    """POST ``body`` to the push API's ``action`` of ``room``; the JSON answer."""
    server = _server(args)
    url = f"{server}/api/rooms/{urllib.parse.quote(room, safe='')}/{action}"
    key, source = _api_key(args)
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECS) as response:
            reply = response.read(REPLY_MAX_BYTES)
    except urllib.error.HTTPError as exc:
        raise _refused(exc, server, source) from None
    except urllib.error.URLError as exc:
        raise CommandError(
            f"no roomcast server at {server} ({exc.reason}): start one with `roomcast "
            "serve`, or pass --server URL",
            EXIT_FAILED,
        ) from None
    except TimeoutError:
        raise CommandError(
            f"{server} did not answer within {HTTP_TIMEOUT_SECS} s; is it overloaded?",
            EXIT_FAILED,
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        raise CommandError(
            f"{server} did not answer like an HTTP server ({exc or type(exc).__name__}): "
            "is --server the "
            "roomcast server's URL?",
            EXIT_FAILED,
        ) from None
    try:
        return json.loads(reply)
    except ValueError:
        raise CommandError(
            f"{url} answered with something other than JSON: is --server a roomcast server?",
            EXIT_FAILED,
        ) from None


def _refused(exc: urllib.error.HTTPError, server: str, source: str) -> CommandError:
    """One line for an error answer: the API's ``detail``, or what a non-API answer means."""
    body = exc.read(REPLY_MAX_BYTES)
    code = EXIT_USAGE if 400 <= exc.code < 500 and exc.code not in (408, 429) else EXIT_FAILED
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if not isinstance(detail, str):  # not the push API: another site, a proxy, an old server
        if exc.code in (404, 405):
            detail = (
                "no roomcast push API there; is --server the roomcast server's URL (its "
                "site must include roomcast.urls)?"
            )
        else:
            plain = exc.headers.get_content_type() == "text/plain"
            text = body.decode("utf-8", "replace") if plain else ""
            detail = " ".join(text.split())[:200] or str(exc.reason)
    elif exc.code == 413:
        detail = f"the message is too long: {detail}"
    elif exc.code == 401:
        detail = f"{detail} The key came from {source}: pass the server's key with --api-key."
    return CommandError(f"{server} answered {exc.code}: {detail}", code)


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
    """Post ``args.text`` to ``args.room``."""
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
        reply = _http(args, room, "messages", {"message": text})
        if not isinstance(reply, dict) or "seq" not in reply:
            raise CommandError(f"unexpected answer {reply!r:.100}", EXIT_FAILED)
        room, seq = reply.get("room", room), reply["seq"]
    print(f"pushed to {room!r} as seq {seq}")
    return 0


def run_disconnect(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Close the sockets of ``args.room`` (of ``args.user_id`` only, if given)."""
    room = _room(args)
    reason = _reason(args)
    if _direct(args):
        _setup_direct("roomcast disconnect", store=False)
        from roomcast.exceptions import PushError
        from roomcast.push import disconnect

        try:
            disconnect(room, user_id=args.user_id, reason=reason)
        except ProtocolError as exc:
            raise CommandError(exc.detail) from None
        except PushError as exc:
            raise CommandError(str(exc), EXIT_FAILED) from None
    else:
        body: dict[str, Any] = {"reason": reason}
        if args.user_id is not None:
            body["user_id"] = args.user_id
        _http(args, room, "disconnect", body)
    whose = f"user {args.user_id}'s sockets" if args.user_id is not None else "every socket"
    print(f"asked every server to close {whose} in {room!r}")
    return 0
