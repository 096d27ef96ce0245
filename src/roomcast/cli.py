"""The ``roomcast`` command: serve, push, disconnect, manage.

    roomcast serve [--host 127.0.0.1] [--port 8000] [--workers N] [--database URL] [--redis URL]
    roomcast push ROOM TEXT [--server URL] [--api-key KEY]
    roomcast disconnect ROOM [--reason TEXT] [--server URL] [--api-key KEY]
    roomcast manage ARGS...        (Django's manage.py for the bundled site)

Flags set the environment variables the bundled site's settings read
(``roomcast.server.settings``), so a flag and its variable mean the same thing.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: uvicorn's own frame limit; roomcast's MAX_FRAME_BYTES (smaller) is checked in the app,
#: which closes with 1009 and a reason. This only stops frames that would cost memory.
UVICORN_WS_MAX_BYTES = 1024 * 1024

DEFAULT_SERVER = "http://127.0.0.1:8000"


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "roomcast.server.settings")
    import django

    django.setup()


def _add_service_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database", metavar="URL", help="database URL (env ROOMCAST_DATABASE_URL)"
    )
    parser.add_argument("--redis", metavar="URL", help="Redis URL (env ROOMCAST_REDIS_URL)")
    parser.add_argument(
        "--layer", choices=("pubsub", "core"), help="channels_redis layer (env ROOMCAST_LAYER)"
    )


def _apply_service_flags(args: argparse.Namespace) -> None:
    for flag, env in (
        ("database", "ROOMCAST_DATABASE_URL"),
        ("redis", "ROOMCAST_REDIS_URL"),
        ("layer", "ROOMCAST_LAYER"),
    ):
        value = getattr(args, flag, None)
        if value:
            os.environ[env] = value


def _serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _apply_service_flags(args)
    if args.workers > 1 and not os.environ.get("ROOMCAST_REDIS_URL"):
        parser.error(
            f"--workers {args.workers} needs --redis URL (or ROOMCAST_REDIS_URL): without Redis "
            "each process keeps its own rooms, and members connected to one process would "
            "never see messages posted through another."
        )
    from django.core.exceptions import ImproperlyConfigured

    try:
        _setup_django()
    except ImproperlyConfigured as exc:  # a bad ROOMCAST_* variable, a bad database URL
        print(f"roomcast serve: {exc}", file=sys.stderr)
        return 2
    from .conf import unknown_environ

    for line in unknown_environ(os.environ):
        print(f"roomcast serve: warning: {line}", file=sys.stderr)
    from django.conf import settings
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    try:
        call_command("check")
    except SystemCheckError as exc:
        print(exc, file=sys.stderr)
        return 2
    call_command("migrate", interactive=False, verbosity=0)
    if os.environ.get("ROOMCAST_REDIS_URL"):
        _announce_database()

    import uvicorn

    from .server.lean_ws import protocol_class

    try:  # say a taken port plainly, before announcing anything
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        with socket.create_server((args.host, args.port), family=family):
            pass
    except OSError as exc:
        print(f"roomcast serve: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    print(
        f"roomcast serving on http://{args.host}:{args.port}/chat/ "
        f"({settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}, "
        f"{str(settings.CHANNEL_LAYERS['default']['BACKEND']).rsplit('.', 1)[-1]}, "
        f"{args.workers} worker{'s' if args.workers > 1 else ''})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        settings.ASGI_APPLICATION.replace(".application", ":application"),
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        # httptools with roomcast's connection caps and deadlines (server.guard).
        http="roomcast.server.guard:GuardedHttpToolsProtocol",
        # websockets-sansio waits for the socket to drain before each send, so a slow
        # client's backlog builds in roomcast's bounded buffer, where it is seen, and not
        # in the transport, where it is not; its close timer ends stuck closes.
        # (Its subclass in roomcast.server.lean_ws: the same, 6 KB less per socket.)
        ws=protocol_class(),
        ws_max_size=UVICORN_WS_MAX_BYTES,
        ws_per_message_deflate=False,  # off: a decompression-bomb surface, and memory
        lifespan="on",
        log_level=args.log_level,
        access_log=args.log_level == "debug",
        timeout_graceful_shutdown=5,
    )
    return 0


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
    except FileNotFoundError:
        raise SystemExit(
            f"roomcast: no API key: {path} does not exist. Pass --api-key (or set "
            "ROOMCAST_API_KEY), or run this where the server's .roomcast/ is (or set "
            "ROOMCAST_DATA_DIR to it)."
        ) from None


def _http(args: argparse.Namespace, path: str, body: dict[str, Any]) -> dict[str, Any]:
    url = args.server.rstrip("/") + path
    key, source = _api_key(args)
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.load(response))
    except urllib.error.HTTPError as exc:
        try:
            detail = json.load(exc).get("detail", exc.reason)
        except ValueError:
            detail = exc.reason
        if exc.code == 401:
            detail = f"{detail} (the key came from {source})"
        raise SystemExit(f"roomcast: {url} answered {exc.code}: {detail}") from None
    except urllib.error.URLError as exc:
        raise SystemExit(
            f"roomcast: no roomcast server at {args.server} ({exc.reason}); start one with "
            "`roomcast serve`, or pass --server URL."
        ) from None


def _room_path(room: str, action: str) -> str:
    return f"/api/rooms/{urllib.parse.quote(room, safe='')}/{action}"


def _database_in_use() -> str:
    """The default database as a URL without credentials: what a push would store into."""
    from django.db import connection

    params = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(str(params['NAME'])).resolve()}"
    host, port = params.get("HOST") or "localhost", params.get("PORT") or 5432
    return f"{connection.vendor}://{host}:{port}/{params['NAME']}"


def _database_key() -> str:
    return f"{os.environ.get('ROOMCAST_REDIS_PREFIX', 'roomcast')}:database"


def _redis_client() -> Any:
    """A short-lived client of the servers' Redis, for the ``<prefix>:database`` key."""
    import redis

    return redis.Redis.from_url(os.environ["ROOMCAST_REDIS_URL"], socket_timeout=5)


def _announce_database() -> None:
    """Tell ``roomcast push`` run elsewhere which database this server's rooms live in
    (a Redis key beside the channel layer's), so it refuses to store into another one."""
    import redis

    try:
        with _redis_client() as client:
            client.set(_database_key(), _database_in_use())
    except redis.RedisError as exc:
        print(f"roomcast serve: could not write {_database_key()} to Redis: {exc}", file=sys.stderr)


def _check_same_database() -> None:
    """Refuse a push through Redis that would store into a database the servers do not
    use (the message would be published, seen by nobody, and missing from history)."""
    import redis

    try:
        with _redis_client() as client:
            value = client.get(_database_key())
    except redis.RedisError:
        return  # the push itself will report Redis being unreachable
    theirs = value.decode() if isinstance(value, bytes) else value
    ours = _database_in_use()
    if theirs is not None and theirs != ours:
        raise SystemExit(
            f"roomcast: the servers on this Redis store their rooms in {theirs}, "
            f"but this command would store the message in {ours}. Pass --database (or "
            "ROOMCAST_DATABASE_URL) with the servers' database, or --server URL to push "
            "through a server's HTTP API."
        )


def _direct(args: argparse.Namespace) -> bool:
    """Push in-process (through Redis) rather than over HTTP?"""
    _apply_service_flags(args)
    return bool(os.environ.get("ROOMCAST_REDIS_URL")) and not args.server_given


def _push(args: argparse.Namespace) -> int:
    if _direct(args):
        _setup_django()
        _check_same_database()
        from .push import send_to_room

        stored = send_to_room(args.room, args.text)
        room, seq = stored.room, stored.seq
    else:
        reply = _http(args, _room_path(args.room, "messages"), {"message": args.text})
        room, seq = reply["room"], reply["seq"]
    print(f"pushed to {room!r} as seq {seq}")
    return 0


def _disconnect(args: argparse.Namespace) -> int:
    if _direct(args):
        _setup_django()
        from .push import disconnect

        disconnect(args.room, reason=args.reason)
    else:
        _http(args, _room_path(args.room, "disconnect"), {"reason": args.reason})
    print(f"disconnected the members of {args.room!r}")
    return 0


def _manage(args: argparse.Namespace) -> int:
    _apply_service_flags(args)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "roomcast.server.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(["roomcast manage", *args.args])
    return 0


def _push_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server", help=f"the server's URL, for the HTTP push API (default {DEFAULT_SERVER})"
    )
    parser.add_argument("--api-key", help="HTTP push API key (env ROOMCAST_API_KEY)")
    _add_service_flags(parser)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``roomcast`` command."""
    parser = argparse.ArgumentParser(prog="roomcast", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="processes (above 1 needs --redis)")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    _add_service_flags(serve)

    push = commands.add_parser(
        "push",
        help="post a system message to a room",
        description="Post a system message to ROOM. With Redis configured (--redis or "
        "ROOMCAST_REDIS_URL) it is stored and published from this process; otherwise it "
        "goes through the running server's HTTP push API.",
    )
    push.add_argument("room")
    push.add_argument("text")
    _push_flags(push)

    disconnect = commands.add_parser("disconnect", help="close every socket of a room")
    disconnect.add_argument("room")
    disconnect.add_argument("--reason", default="")
    _push_flags(disconnect)

    manage = commands.add_parser("manage", help="Django management commands for the bundled site")
    manage.add_argument("args", nargs=argparse.REMAINDER)
    _add_service_flags(manage)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``roomcast`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        if args.workers < 1:
            parser.error("--workers must be at least 1")
        return _serve(args, parser)
    if args.command in ("push", "disconnect"):
        args.server_given = args.server is not None
        args.server = args.server or DEFAULT_SERVER
        return _push(args) if args.command == "push" else _disconnect(args)
    return _manage(args)


if __name__ == "__main__":
    sys.exit(main())
