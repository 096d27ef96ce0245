"""``roomcast room``: create rooms, set who may use them, list their members.

Two ways, like ``roomcast push``: on the site's database (the default, with the same
``--database`` / ``ROOMCAST_*`` configuration as ``roomcast serve``), through
:mod:`roomcast.rooms`; or, with ``--server URL``, through a running server's HTTP API
(:mod:`roomcast.api`), which needs nothing beyond the standard library.

A change that takes rights away (a room made private or read-only, a member removed, an
admin made a member) closes the affected sockets within a second, on every process: the
change sends ``access_changed`` from the process that makes it. On the database that is
this command's process, which reaches the servers only through their Redis (``--redis``
or ``ROOMCAST_REDIS_URL``, as the servers use); without Redis it says so, and
``--server`` makes the change inside the server instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable
from typing import Any

from roomcast.protocol import ProtocolError, codec

from ._api import DEFAULT_SERVER, quote, request
from ._common import (
    CommandError,
    Parser,
    add_service_flags,
    apply_service_flags,
    describe,
)
from ._database import database_error, ready_database

#: What each visibility means, as ``room show`` prints it (Room.Visibility's labels;
#: tests/test_cli_room.py keeps them in step).
VISIBILITIES = {
    "public": "anyone may join, read and post",
    "private": "members and staff only",
    "read_only": "anyone may read; staff and room admins post",
}

#: Room names are checked here for everything but their length, which is the server's
#: ROOM_NAME_MAX_CHARS setting (it answers with its own detail).
_ANY_LENGTH = sys.maxsize

Room = dict[str, Any]  # a room as the HTTP API answers it (roomcast.api.room_json)


def add_parser(commands: argparse._SubParsersAction[Parser]) -> None:
    """Add ``room`` (create, set, members, show) to the ``roomcast`` command."""
    room = commands.add_parser(
        "room",
        help="create rooms, make them public, private or read-only, manage members",
        description=describe(
            "Manage the rooms of the bundled site: on its database (the one roomcast serve "
            "uses, from --database or ROOMCAST_DATABASE_URL), or with --server URL through "
            "a running server's HTTP API. Rooms are public unless made private (members "
            "and staff only) or read-only (everyone reads; staff and room admins post).",
            "A change that takes rights away closes the sockets that lost them within a "
            "second. Made on the database, it reaches the servers through their Redis "
            "(--redis or ROOMCAST_REDIS_URL); a server without Redis is reached with "
            "--server.",
        ),
        epilog="examples:\n"
        "  roomcast room create board --private\n"
        "  roomcast room members board add alice bob\n"
        "  roomcast room members board add carol --admin\n"
        "  roomcast room members board remove bob\n"
        "  roomcast room set news --read-only\n"
        "  roomcast room show board",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = room.add_subparsers(
        title="actions", dest="action", metavar="ACTION", help="what to do"
    )
    room.set_defaults(run=_no_action(room), prog=room.prog)

    create = actions.add_parser(
        "create",
        help="create a room (public unless told otherwise)",
        description=describe("Create the room NAME; public unless told otherwise."),
    )
    _name_argument(create)
    _visibility_flags(create, required=False)
    _flags(create)
    create.set_defaults(run=run_create, prog=create.prog)

    set_ = actions.add_parser(
        "set",
        help="make a room public, private or read-only",
        description=describe(
            "Make the room NAME public, private or read-only. Sockets that lose access by "
            "it are closed (4403) within a second."
        ),
    )
    _name_argument(set_)
    _visibility_flags(set_, required=True)
    _flags(set_)
    set_.set_defaults(run=run_set, prog=set_.prog)

    members = actions.add_parser(
        "members",
        help="add or remove members of a room",
        description=describe(
            "Add USERs to the room NAME as members (or admins: --admin; an existing "
            "member's role is changed), or remove them. Removed members' sockets in a "
            "private room are closed (4403) within a second."
        ),
    )
    _name_argument(members)
    members.add_argument("change", choices=("add", "remove"), help="add or remove")
    members.add_argument("users", nargs="+", metavar="USER", help="usernames")
    members.add_argument(
        "--admin",
        action="store_true",
        help="with add: make them room admins (they moderate, and post in read-only rooms)",
    )
    _flags(members)
    members.set_defaults(run=run_members, prog=members.prog)

    show = actions.add_parser(
        "show",
        help="a room's visibility, members and message count",
        description=describe("Print the room NAME's visibility, members and message count."),
    )
    _name_argument(show)
    show.add_argument(
        "--json",
        action="store_true",
        help="print the room as JSON, as the HTTP API's GET /api/rooms/NAME answers it",
    )
    _flags(show)
    show.set_defaults(run=run_show, prog=show.prog)


def _no_action(parser: argparse.ArgumentParser) -> Callable[..., int]:
    def run(args: argparse.Namespace, _: argparse.ArgumentParser) -> int:
        parser.error("give an ACTION: create, set, members or show")

    return run


def _name_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="the room's name (any text without '/')")


def _visibility_flags(parser: argparse.ArgumentParser, *, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    default = " (the default)" if not required else ""
    for flag, value in (("--public", "public"), ("--private", "private")):
        group.add_argument(
            flag,
            dest="visibility",
            action="store_const",
            const=value,
            help=f"{value}: {VISIBILITIES[value]}{default if value == 'public' else ''}",
        )
    group.add_argument(
        "--read-only",
        dest="visibility",
        action="store_const",
        const="read_only",
        help=f"read-only: {VISIBILITIES['read_only']}",
    )
    parser.set_defaults(visibility=None if required else "public")


def _flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        metavar="URL",
        help="make the change through this server's HTTP API instead of on the database "
        f"(e.g. {DEFAULT_SERVER}); needed to close sockets on a server without Redis",
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help="with --server: the HTTP API key (env ROOMCAST_API_KEY; default: the api_key "
        "file in ROOMCAST_DATA_DIR, ./.roomcast)",
    )
    add_service_flags(parser)


# -- the two ways -------------------------------------------------------------------------


def _room_name(args: argparse.Namespace) -> str:
    try:
        return codec.validate_room_name(args.name, max_chars=_ANY_LENGTH)
    except ProtocolError as exc:
        raise CommandError(f"NAME {args.name[:40]!r}: {exc.detail}") from None


def _local(args: argparse.Namespace, change: Callable[[], Any]) -> Any:
    """Run ``change`` (which uses roomcast.rooms) on the site's database; its errors as
    one line each."""
    ready_database(args.prog)
    from django.db import DatabaseError

    from roomcast import rooms

    try:
        return change()
    except rooms.RoomNotFoundError:
        raise CommandError(
            f"no room {args.name!r}: create it with `roomcast room create {shlex.quote(args.name)}`"
        ) from None
    except rooms.UserNotFoundError as exc:
        text = str(exc).rstrip(".")
        adding = getattr(args, "change", None) == "add"
        hint = ": create it with `roomcast user create NAME`" if adding else ""
        raise CommandError(f"{text[:1].lower()}{text[1:]}{hint}") from None
    except rooms.RoomExistsError:
        raise CommandError(
            f"room {args.name!r} exists already: `roomcast room set {shlex.quote(args.name)} "
            "--private` (or --public, --read-only) changes it"
        ) from None
    except ProtocolError as exc:  # the room name's length (the site's setting)
        raise CommandError(f"NAME {args.name[:40]!r}: {exc.detail}") from None
    except DatabaseError as exc:
        raise database_error(exc) from None


def _room_json(name: str) -> Room:
    from roomcast import api, rooms

    return api.room_json(rooms.room_info(name))


def _unreached(args: argparse.Namespace, what: str) -> None:
    """Say that a change made on the database cannot reach a server without Redis."""
    if not os.environ.get("ROOMCAST_REDIS_URL"):
        print(
            f"{args.prog}: note: without Redis (--redis or ROOMCAST_REDIS_URL) this change "
            f"reaches no server process: sockets {what} keep their access until they "
            "reconnect; pass --server URL to make such changes through a running server",
            file=sys.stderr,
        )


# -- actions ------------------------------------------------------------------------------


def run_create(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Create the room ``args.name``."""
    name = _room_name(args)
    apply_service_flags(args)
    if args.server:
        room = request(args, "POST", "/api/rooms", {"name": name, "visibility": args.visibility})
    else:

        def create() -> Room:
            from roomcast import rooms

            made = rooms.create_room(name, visibility=args.visibility)
            return _room_json(made.name)

        room = _local(args, create)
    print(f"created room {room['name']!r} ({room['visibility'].replace('_', '-')})")
    return 0


def run_set(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Make ``args.name`` public, private or read-only."""
    name = _room_name(args)
    apply_service_flags(args)
    visibility = args.visibility
    if args.server:
        room = request(args, "PATCH", f"/api/rooms/{quote(name)}", {"visibility": visibility})
        was = None
    else:

        def change() -> tuple[str, Room]:
            from roomcast import rooms

            before = rooms.get_room(name).visibility
            rooms.set_visibility(name, visibility)
            return before, _room_json(name)

        was, room = _local(args, change)
    shown = room["visibility"].replace("_", "-")
    if was == visibility:
        print(f"room {room['name']!r} was {shown} already")
    else:
        print(f"room {room['name']!r} is {shown} now")
        if was is not None and visibility != "public":
            _unreached(args, f"in {room['name']!r} that may no longer join or post")
    return 0


def run_members(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Add or remove ``args.users`` in ``args.name``."""
    name = _room_name(args)
    if args.admin and args.change == "remove":
        raise CommandError("--admin goes with add (an admin is removed like any member)")
    apply_service_flags(args)
    users = list(dict.fromkeys(args.users))  # each once, in the order given
    for user in users:
        try:
            codec.check_text(user, "USER")
        except ProtocolError as exc:  # argv bytes that are not UTF-8
            raise CommandError(f"{exc.detail} Pass UTF-8 text.") from None
    role = "admin" if args.admin else "member"
    if args.change == "add":
        if args.server:
            body = {"users": users, "role": role}
            room = request(args, "POST", f"/api/rooms/{quote(name)}/members", body)
            done, demoted = room.get("added", users), False
        else:

            def add() -> tuple[list[str], bool, Room]:
                from roomcast import rooms

                before = dict(rooms.room_info(name).members)
                added = rooms.add_members(name, users, role=role)
                lost = role == "member" and any(before.get(u) == "admin" for u in added)
                return added, lost, _room_json(name)

            done, demoted, room = _local(args, add)
        print(
            f"added {', '.join(done)} to {room['name']!r} as {role}{'s' if len(done) > 1 else ''}"
        )
        if demoted:
            _unreached(args, f"of former admins of {room['name']!r}")
        return 0
    if args.server:
        done = []
        for user in users:
            path = f"/api/rooms/{quote(name)}/members/{quote(user)}"
            room = request(args, "DELETE", path)
            done += room.get("removed", [])
    else:

        def remove() -> tuple[list[str], Room]:
            from roomcast import rooms

            return rooms.remove_members(name, users), _room_json(name)

        done, room = _local(args, remove)
        if done:
            _unreached(args, f"of removed members in {room['name']!r}")
    if done:
        print(f"removed {', '.join(done)} from {room['name']!r}")
    for user in users:
        if user not in done:
            print(f"{user} was not a member of {room['name']!r}")
    return 0


def run_show(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Print ``args.name``'s visibility, members and message count."""
    name = _room_name(args)
    apply_service_flags(args)
    if args.server:
        room = request(args, "GET", f"/api/rooms/{quote(name)}")
    else:
        room = _local(args, lambda: _room_json(name))
    if args.json:
        print(json.dumps(room, ensure_ascii=False))
        return 0
    visibility = room["visibility"]
    print(f"room:       {room['name']}")
    print(f"visibility: {visibility.replace('_', '-')} ({VISIBILITIES.get(visibility, '?')})")
    print(f"messages:   {room['message_count']} (last seq {room['last_seq']})")
    print(f"members:    {len(room['members'])}")
    for member in room["members"]:
        print(f"  {member['user']} ({member['role']})")
    return 0
