"""The ``roomcast`` console script: ``serve``, ``push``, ``disconnect``, ``user``,
``room``, ``token``, ``listen``, ``history``, ``rooms``, ``manage``.

One module per command group: ``serve``, ``push`` (push and disconnect), ``user``,
``room``, ``token``, ``listen``, ``history``, ``rooms``, ``manage``; ``_common`` (errors,
exit codes, set-up), ``_database`` (reaching the database and Redis), ``_api`` (the HTTP
API's client), ``_reading`` (what listen, history and rooms share: a user's token, and
printing messages), ``_environ`` (the variables and flags of serve, shared with
docs/settings.md). A new command group is a
module with an ``add_parser(commands)``, added in :func:`build_parser`.
Each module's ``add_parser`` sets ``run``, called as ``run(args, parser)``, returning the
exit code or raising :class:`~._common.CommandError`, which :func:`main` prints as one
line. docs/cli.md documents every command, flag and exit code.

Flags set the environment variables the bundled site's settings read
(``roomcast.server.settings``), so a flag and its variable mean the same thing.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from . import history, listen, manage, push, room, rooms, serve, token, user
from ._common import EXIT_USAGE, SERVER_EXTRA_MODULES, CommandError, Parser, missing_extra

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
roomcast: real-time rooms and server push for Django.

Run the bundled chat site with 'roomcast serve', then open http://127.0.0.1:8000/chat/;
push to its rooms from the shell with 'roomcast push ROOM TEXT'; make rooms private
with 'roomcast room', users with 'roomcast user', tokens with 'roomcast token'; follow
a room with 'roomcast listen ROOM', read it with 'roomcast history ROOM', list a user's
rooms with 'roomcast rooms'."""

EPILOG = """\
'roomcast COMMAND --help' lists a command's flags and environment variables;
docs/cli.md has them all, with the exit codes: 0 done, 1 failed (a server, database or
Redis unreachable or failing), 2 wrong command line or configuration."""


def _version_line() -> str:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return (
        f"roomcast {version('roomcast')} with Django {version('django')}, Channels "
        f"{version('channels')}, {platform.python_implementation()} "
        f"{platform.python_version()} on {platform.system()}"
    )


class _VersionAction(argparse.Action):
    """--version: the versions that matter in a bug report, computed only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the versions and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(_version_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``roomcast`` command."""
    parser = Parser(
        prog="roomcast",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    serve.add_parser(commands)
    push.add_parsers(commands)
    user.add_parser(commands)
    room.add_parser(commands)
    token.add_parser(commands)
    listen.add_parser(commands)
    history.add_parser(commands)
    rooms.add_parser(commands)
    manage.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``roomcast`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error(
            "give a COMMAND: serve, push, disconnect, user, room, token, listen, history, "
            "rooms or manage"
        )
    try:
        return int(args.run(args, parser))
    except CommandError as exc:
        print(exc.line(args.prog), file=sys.stderr)
        return exc.code
    except ModuleNotFoundError as exc:  # an extra's module imported deeper than checked
        missing = (exc.name or "").partition(".")[0]
        if missing not in SERVER_EXTRA_MODULES:
            raise
        print(missing_extra(args.prog, missing), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C while waiting (a push reading standard input)
        return 130


if __name__ == "__main__":
    sys.exit(main())
