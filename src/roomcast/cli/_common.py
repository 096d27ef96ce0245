"""Helpers shared by the ``roomcast`` commands: errors, exit codes, service flags, set-up.

Layer: command line. Imports only the standard library at import time, so that
``roomcast --help`` works whatever extras are installed. Every error a command can
foresee is a :class:`CommandError`: ``main`` prints it as one line,
``roomcast <command>: <what is wrong and what to do>``, and exits with its code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import textwrap
from collections.abc import Iterable
from typing import NoReturn

from roomcast.server import redis_urls

#: Exit codes (docs/cli.md). 2 is also what argparse exits with on a bad flag.
EXIT_OK = 0
#: The run failed: a server, database or Redis could not be reached, or answered an
#: error that is not the command's fault. Running it again later may work.
EXIT_FAILED = 1
#: What was typed or configured is wrong (a flag, an argument, a setting, a missing
#: extra, a database that does not exist): it fails the same way until it is fixed.
EXIT_USAGE = 2

#: The modules of the ``server`` extra that the commands import, each named by its import
#: name. ``roomcast push`` over HTTP needs none of them.
SERVER_EXTRA_MODULES = frozenset(
    {"uvicorn", "uvloop", "httptools", "websockets", "dj_database_url", "psycopg",
     "channels_redis", "redis"}
)  # fmt: skip


#: Width of the descriptions the commands' --help prints (argparse's own wraps to the
#: terminal; these are wrapped here because they keep their paragraphs).
HELP_WIDTH = 88


def describe(*paragraphs: str) -> str:
    """``paragraphs`` wrapped for a RawDescriptionHelpFormatter, a blank line between."""
    return "\n\n".join(textwrap.fill(p, HELP_WIDTH) for p in paragraphs)


class CommandError(Exception):
    """An error to show as one line (``roomcast <command>: <message>``), then exit ``code``.

    ``whole_line``: the message names the command itself and is shown as it is.
    """

    def __init__(self, message: str, code: int = EXIT_USAGE, *, whole_line: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.whole_line = whole_line

    def line(self, prog: str) -> str:
        """The line to print for the command ``prog``."""
        return str(self) if self.whole_line else f"{prog}: {self}"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line that says where the flags are listed."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message}. See '{self.prog} --help'.\n")


def missing_extra(command: str, module: str) -> str:
    """The line for a command run without the extra that installs ``module``."""
    return (
        f"{command} needs the server extra: pip install 'roomcast[server]' "
        f"({module} is not installed)"
    )


def require_server_extra(command: str, modules: Iterable[str]) -> None:
    """Import each of ``modules`` (all from the server extra), or raise a CommandError
    naming the extra to install. Checked before anything imports them deep inside
    Django or uvicorn, where a missing one would end in a long traceback."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            missing = (exc.name or name).partition(".")[0]
            raise CommandError(missing_extra(command, missing), whole_line=True) from None
        except ImportError as exc:  # installed, but broken (a wheel for another Python)
            raise CommandError(
                f"{command}: {name} is installed but does not import ({exc}); reinstall "
                "it: pip install --force-reinstall 'roomcast[server]'",
                whole_line=True,
            ) from None


def service_modules() -> list[str]:
    """The server-extra modules the bundled site's settings need, for the configured
    database and channel layer (read from the environment the flags have set)."""
    modules = ["dj_database_url"]
    if os.environ.get("ROOMCAST_DATABASE_URL", "").startswith(("postgres", "pgsql")):
        modules.append("psycopg")
    if os.environ.get("ROOMCAST_REDIS_URL"):
        modules += ["redis", "channels_redis"]
    return modules


def setup_django() -> None:
    """Load the bundled site's settings (``roomcast.server.settings``) and set Django up,
    turning a bad setting or an unusable data directory into a CommandError."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "roomcast.server.settings")
    import django
    from django.core.exceptions import ImproperlyConfigured

    try:
        django.setup()
    except ImproperlyConfigured as exc:  # a bad ROOMCAST_* variable, a bad database URL
        raise CommandError(str(exc)) from None
    except OSError as exc:  # the data directory cannot be created or written
        raise CommandError(
            f"{exc.strerror or exc}: {exc.filename}; set ROOMCAST_DATA_DIR to a writable "
            "directory (default ./.roomcast)"
        ) from None


def add_service_flags(parser: argparse.ArgumentParser) -> None:
    """``--database``, ``--redis`` and ``--layer``: the services a command runs against."""
    parser.add_argument(
        "--database",
        metavar="URL",
        help="database URL: sqlite:///path or postgresql://user@host/db "
        "(env ROOMCAST_DATABASE_URL)",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="Redis URL, e.g. redis://127.0.0.1:6379/0; the servers' list of shards, "
        "comma-separated, or redis+sentinel://HOST:26379/MASTER_NAME (env ROOMCAST_REDIS_URL)",
    )
    parser.add_argument(
        "--layer",
        choices=("pubsub", "core"),
        help="channels_redis layer: pubsub (default) or core (env ROOMCAST_LAYER)",
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
    redis_url = os.environ.get("ROOMCAST_REDIS_URL", "")
    if redis_url:
        try:
            redis_urls.parse(redis_url)
        except redis_urls.RedisURLError as exc:
            raise CommandError(f"--redis (or ROOMCAST_REDIS_URL): {exc}") from None
