"""``roomcast serve``: check the settings and the database, migrate, run uvicorn.

Every flag is documented by the table in ``_environ`` (its help, the ``--help``
epilog, docs/settings.md). Start-up problems are one line each (``CommandError``); the
logs keep one line per event that matters (``roomcast.server.logs``).
"""

from __future__ import annotations

import argparse
import errno
import io
import ipaddress
import logging
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from . import _environ
from ._common import (
    EXIT_FAILED,
    EXIT_USAGE,
    CommandError,
    Parser,
    apply_service_flags,
    describe,
    require_server_extra,
    service_modules,
    setup_django,
)
from ._database import announce_database, check_database, database_error

#: uvicorn's own frame limit; roomcast's MAX_FRAME_BYTES (smaller) is checked in the app,
#: which closes with 1009 and a reason. This only stops frames that would cost memory.
UVICORN_WS_MAX_BYTES = 1024 * 1024

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")  # as roomcast.server.logs.LOG_FORMATS (that needs no import)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
#: ALLOWED_HOSTS of the bundled site when ROOMCAST_ALLOWED_HOSTS is unset (its settings'
#: default; serve adds the --host address to it).
DEFAULT_ALLOWED_HOSTS = "localhost,127.0.0.1,[::1]"
#: Addresses that listen on every interface: the host names clients use are unknown.
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def add_parser(commands: argparse._SubParsersAction[Parser]) -> None:
    """Add ``serve`` to the ``roomcast`` command."""
    serve = commands.add_parser(
        "serve",
        help="run the server (uvicorn): the chat pages, WebSockets, the HTTP push API",
        description=describe(
            "Run roomcast's bundled site on uvicorn: the web app (/rooms/, /login/), "
            "the tutorial's /chat/ pages, the WebSocket endpoints /ws/ and "
            "/ws/chat/<room>/, the HTTP push API and the admin. It checks the "
            "settings, creates or migrates the database's tables, then serves until stopped "
            "(Ctrl-C or SIGTERM). Without flags: SQLite in ./.roomcast/ and the in-memory "
            "channel layer, on 127.0.0.1:8000."
        ),
        epilog=_environ.serve_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    flag = _environ.flag_help
    serve.add_argument("--host", default="127.0.0.1", help=flag("--host"))
    serve.add_argument("--port", type=_port, default=8000, help=flag("--port"))
    serve.add_argument("--workers", type=_workers, default=1, metavar="N", help=flag("--workers"))
    serve.add_argument("--log-level", choices=LOG_LEVELS, help=flag("--log-level"))
    serve.add_argument("--log-format", choices=LOG_FORMATS, help=flag("--log-format"))
    serve.add_argument(
        "--access-log", action=argparse.BooleanOptionalAction, help=flag("--access-log")
    )
    serve.add_argument("--database", metavar="URL", help=flag("--database"))
    serve.add_argument("--redis", metavar="URL", help=flag("--redis"))
    serve.add_argument("--layer", choices=("pubsub", "core"), help=flag("--layer"))
    serve.set_defaults(run=run, prog=serve.prog)


def _stopped(signum: int, frame: Any) -> None:
    """SIGTERM after uvicorn's own shutdown (see run): nothing left to do."""


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (1-65535)")
    return int(value)


def _workers(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of processes (1 or more)")
    return int(value)


def _chosen(given: str | None, variable: str, choices: tuple[str, ...], default: str) -> str:
    """A flag's value, else the environment variable's, else ``default``; checked against
    ``choices`` and set in the environment, where the settings (read again by each
    worker process) find it."""
    value = (given or os.environ.get(variable) or default).lower()
    if value not in choices:
        what = variable.removeprefix("ROOMCAST_").lower().replace("_", " ")
        raise CommandError(
            f"{variable}={os.environ[variable]!r} is not a {what}: use "
            + (", ".join(choices) if len(choices) > 2 else " or ".join(choices))
        )
    os.environ[variable] = value
    return value


def _log_level(args: argparse.Namespace) -> str:
    """--log-level, else ROOMCAST_LOG_LEVEL, else info."""
    return _chosen(args.log_level, "ROOMCAST_LOG_LEVEL", LOG_LEVELS, "info")


def _log_format(args: argparse.Namespace) -> str:
    """--log-format, else ROOMCAST_LOG_FORMAT, else text."""
    return _chosen(args.log_format, "ROOMCAST_LOG_FORMAT", LOG_FORMATS, "text")


def _access_log(args: argparse.Namespace, level: str) -> bool:
    """--access-log / --no-access-log, else ROOMCAST_ACCESS_LOG, else on at debug; set in
    the environment."""
    if args.access_log is not None:
        on = bool(args.access_log)
    else:
        value = os.environ.get("ROOMCAST_ACCESS_LOG", "").strip().lower()
        if value and value not in _TRUE + _FALSE:
            raise CommandError(
                f"ROOMCAST_ACCESS_LOG={value!r} is not on or off: use 1 (on) or 0 (off)"
            )
        on = value in _TRUE if value else level == "debug"
    os.environ["ROOMCAST_ACCESS_LOG"] = "1" if on else "0"
    return on


def _say(line: str, log_format: str, level: int = logging.INFO) -> None:
    """A start-up line on stderr; in the json format, as a log record would be."""
    if log_format == "json":
        from roomcast.server.logs import JsonFormatter

        record = logging.LogRecord("roomcast.serve", level, "", 0, line, None, None)
        line = JsonFormatter().format(record)
    print(line, file=sys.stderr, flush=True)


def _host_name(host: str) -> str:
    """``host`` as Django's ALLOWED_HOSTS spells it (IPv6 addresses in brackets)."""
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host


def _allow_host(host: str) -> str | None:
    """Answer requests for the --host address too, unless ROOMCAST_ALLOWED_HOSTS says
    otherwise; for a wildcard address, return the line telling what to set."""
    if os.environ.get("ROOMCAST_ALLOWED_HOSTS"):
        return None
    if host in WILDCARD_HOSTS:
        return (
            f"roomcast serve: listening on every address, but answering only requests for "
            f"{DEFAULT_ALLOWED_HOSTS}: set ROOMCAST_ALLOWED_HOSTS to the names clients use, "
            f"e.g. ROOMCAST_ALLOWED_HOSTS={_example_hosts()}"
        )
    name = _host_name(host)
    if name not in DEFAULT_ALLOWED_HOSTS.split(","):
        os.environ["ROOMCAST_ALLOWED_HOSTS"] = f"{DEFAULT_ALLOWED_HOSTS},{name}"
    return None


def _example_hosts() -> str:
    """This machine's name and its address on the default route, for the hint."""
    names = [socket.gethostname() or "chat.example.com"]
    try:  # a UDP "connect" sends nothing: it only picks the outgoing address
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routed like any address
            names.append(probe.getsockname()[0])
    except OSError:
        names.append("192.0.2.10")
    return ",".join(names)


def _check_listen(host: str, port: int) -> None:
    """Bind ``host:port`` once, or raise a CommandError saying why it cannot be used."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.create_server((host, port), family=family):
            pass
    except OSError as exc:
        # The OS's words, without create_server's "(while attempting to bind on ...)".
        reason = (exc.strerror or str(exc)).split(" (while attempting")[0]
        if exc.errno == errno.EADDRINUSE:
            fix, code = "stop what uses it, or pass --port with another port", EXIT_FAILED
        elif exc.errno == errno.EACCES:
            fix, code = "ports below 1024 need privileges: pass --port 8000", EXIT_USAGE
        else:  # not an address of this machine, a name that does not resolve
            fix, code = "give --host an address of this machine, 0.0.0.0 or ::", EXIT_USAGE
        raise CommandError(f"cannot listen on {host}:{port} ({reason}): {fix}", code) from None


def _metrics_dir(port: int, log_format: str) -> Path:
    """Make ``$ROOMCAST_DATA_DIR/metrics-PORT`` empty and point prometheus-client's
    multiprocess mode at it (``PROMETHEUS_MULTIPROC_DIR``), for every worker's values to
    be summed at each scrape (roomcast.metrics). One directory per port: two servers
    sharing a data dir on one machine listen on two ports. Emptied at each start: the
    previous run's processes are gone, and their values with them."""
    from roomcast.server.data_dir import private_data_dir

    # As the bundled settings do (it is a no-op for them after this): the metrics
    # directory goes in the data dir only once that is known to be private.
    data_dir = Path(os.environ.get("ROOMCAST_DATA_DIR") or Path.cwd() / ".roomcast").resolve()
    try:
        if tightened := private_data_dir(data_dir):
            _say(f"roomcast: {tightened}", log_format)
        directory = data_dir / f"metrics-{port}"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(mode=0o700)
    except ImproperlyConfigured as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(
            f"{exc.strerror or exc}: {exc.filename}; set ROOMCAST_DATA_DIR to a writable "
            "directory (default ./.roomcast)"
        ) from None
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return directory


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Check the settings, migrate, and serve until stopped."""
    level = _log_level(args)
    log_format = _log_format(args)
    access_log = _access_log(args, level)
    apply_service_flags(args)
    if args.workers > 1 and not os.environ.get("ROOMCAST_REDIS_URL"):
        raise CommandError(
            f"--workers {args.workers} needs --redis URL (or ROOMCAST_REDIS_URL): without "
            "Redis each process keeps its own rooms, and members connected to one process "
            "would never see messages posted through another"
        )
    require_server_extra(
        "roomcast serve", ["uvicorn", "uvloop", "httptools", "websockets", *service_modules()]
    )
    _check_listen(args.host, args.port)  # before any work on the database
    hint = _allow_host(args.host)
    _metrics_dir(args.port, log_format)  # before anything imports roomcast.metrics
    setup_django()
    from roomcast.conf import unknown_environ

    for line in unknown_environ(os.environ):
        _say(f"roomcast serve: warning: {line}", log_format, logging.WARNING)
    from django.conf import settings
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError
    from django.db import DatabaseError

    try:  # "no issues" to nothing; warnings still go to stderr
        call_command("check", stdout=io.StringIO())
    except SystemCheckError as exc:  # one line per problem, each naming its setting
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    check_database()
    try:
        call_command("migrate", interactive=False, verbosity=0)
    except DatabaseError as exc:  # e.g. a read-only SQLite file, no CREATE permission
        raise database_error(exc) from None
    if os.environ.get("ROOMCAST_REDIS_URL"):
        announce_database()

    import uvicorn

    from roomcast.conf import roomcast_settings
    from roomcast.server.drain import graceful_shutdown_secs
    from roomcast.server.lean_ws import protocol_class
    from roomcast.server.logs import uvicorn_log_config

    _say(
        f"roomcast serving on http://{_host_name(args.host)}:{args.port}/ "
        f"({settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}, "
        f"{str(settings.CHANNEL_LAYERS['default']['BACKEND']).rsplit('.', 1)[-1]}, "
        f"{args.workers} worker{'s' if args.workers > 1 else ''})",
        log_format,
    )
    if hint:
        _say(hint, log_format, logging.WARNING)
    # uvicorn catches SIGINT and SIGTERM, shuts down, then raises the signal again for
    # the handler that was there before: by default that kills the process (exit 143
    # after SIGTERM). A stop asked for is a success (docs/cli.md, exit codes): this
    # handler lets the re-raised signal end in a return, and exit code 0.
    signal.signal(signal.SIGTERM, _stopped)
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
        log_level=level,
        # Per-connection lines at DEBUG; HTTP requests and handshakes with access_log.
        log_config=uvicorn_log_config(level, access_log=access_log, log_format=log_format),
        access_log=access_log,
        # On SIGTERM the WebSockets close in batches over DRAIN_SECS (server.drain);
        # uvicorn cancels what is left after this.
        timeout_graceful_shutdown=graceful_shutdown_secs(
            roomcast_settings.DRAIN_SECS, roomcast_settings.CLOSE_TIMEOUT_SECS
        ),
    )
    return 0
