"""``roomcast push`` and ``roomcast disconnect``: push to a room from the shell.

Through Redis (``--redis`` or ``ROOMCAST_REDIS_URL``, no ``--server``) the command
stores and publishes from its own process; otherwise it calls a running server's HTTP
push API.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ._common import add_service_flags, apply_service_flags, setup_django
from ._database import check_same_database

DEFAULT_SERVER = "http://127.0.0.1:8000"


def _push_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server", help=f"the server's URL, for the HTTP push API (default {DEFAULT_SERVER})"
    )
    parser.add_argument("--api-key", help="HTTP push API key (env ROOMCAST_API_KEY)")
    add_service_flags(parser)


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``push`` and ``disconnect`` to the ``roomcast`` command."""
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
    push.set_defaults(run=run_push)

    disconnect = commands.add_parser("disconnect", help="close every socket of a room")
    disconnect.add_argument("room")
    disconnect.add_argument("--reason", default="")
    _push_flags(disconnect)
    disconnect.set_defaults(run=run_disconnect)


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


def _direct(args: argparse.Namespace) -> bool:
    """Push in-process (through Redis) rather than over HTTP?"""
    apply_service_flags(args)
    args.server_given = args.server is not None
    args.server = args.server or DEFAULT_SERVER
    return bool(os.environ.get("ROOMCAST_REDIS_URL")) and not args.server_given


def run_push(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Post ``args.text`` to ``args.room``."""
    if _direct(args):
        setup_django()
        check_same_database()
        from roomcast.push import send_to_room

        stored = send_to_room(args.room, args.text)
        room, seq = stored.room, stored.seq
    else:
        reply = _http(args, _room_path(args.room, "messages"), {"message": args.text})
        room, seq = reply["room"], reply["seq"]
    print(f"pushed to {room!r} as seq {seq}")
    return 0


def run_disconnect(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Close the sockets of ``args.room``."""
    if _direct(args):
        setup_django()
        from roomcast.push import disconnect

        disconnect(args.room, reason=args.reason)
    else:
        _http(args, _room_path(args.room, "disconnect"), {"reason": args.reason})
    print(f"disconnected the members of {args.room!r}")
    return 0
