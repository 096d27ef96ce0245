"""``roomcast serve``: run the bundled site on uvicorn."""

from __future__ import annotations

import argparse
import os
import socket
import sys

from ._common import add_service_flags, apply_service_flags, setup_django
from ._database import announce_database

#: uvicorn's own frame limit; roomcast's MAX_FRAME_BYTES (smaller) is checked in the app,
#: which closes with 1009 and a reason. This only stops frames that would cost memory.
UVICORN_WS_MAX_BYTES = 1024 * 1024


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve`` to the ``roomcast`` command."""
    serve = commands.add_parser("serve", help="run the server (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="processes (above 1 needs --redis)")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    add_service_flags(serve)
    serve.set_defaults(run=run)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Check the settings, migrate, and serve until stopped."""
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    apply_service_flags(args)
    if args.workers > 1 and not os.environ.get("ROOMCAST_REDIS_URL"):
        parser.error(
            f"--workers {args.workers} needs --redis URL (or ROOMCAST_REDIS_URL): without Redis "
            "each process keeps its own rooms, and members connected to one process would "
            "never see messages posted through another."
        )
    from django.core.exceptions import ImproperlyConfigured

    try:
        setup_django()
    except ImproperlyConfigured as exc:  # a bad ROOMCAST_* variable, a bad database URL
        print(f"roomcast serve: {exc}", file=sys.stderr)
        return 2
    from roomcast.conf import unknown_environ

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
        announce_database()

    import uvicorn

    from roomcast.server.lean_ws import protocol_class

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
        http="httptools",
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
