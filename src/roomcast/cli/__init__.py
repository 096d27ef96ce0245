"""The ``roomcast`` command: serve, push, disconnect, manage.

    roomcast serve [--host 127.0.0.1] [--port 8000] [--workers N] [--database URL] [--redis URL]
    roomcast push ROOM TEXT [--server URL] [--api-key KEY]
    roomcast disconnect ROOM [--reason TEXT] [--server URL] [--api-key KEY]
    roomcast manage ARGS...        (Django's manage.py for the bundled site)

One module per command group: ``serve``, ``push`` (push and disconnect), ``manage``.
Flags set the environment variables the bundled site's settings read
(``roomcast.server.settings``), so a flag and its variable mean the same thing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import manage, push, serve

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``roomcast`` command."""
    parser = argparse.ArgumentParser(prog="roomcast", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve.add_parser(commands)
    push.add_parsers(commands)
    manage.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``roomcast`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.run(args, parser))


if __name__ == "__main__":
    sys.exit(main())
