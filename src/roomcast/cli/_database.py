"""The database and Redis a command uses: reach them or say in one line why not.

Each way a database connection can fail at start-up (no such database, no such role, a
wrong password, PostgreSQL not running, an SQLite path that cannot be written) becomes
one :class:`CommandError` naming what to do, instead of Django's 80-line traceback.

``roomcast serve`` also writes the database it uses to ``<prefix>:database`` on its
Redis; ``roomcast push`` through Redis refuses to store into any other one (the message
would be published, seen by nobody, and missing from history).

Layer: command line; imports Django and redis only inside the functions (they run
after ``setup_django``).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from ._common import (
    EXIT_FAILED,
    EXIT_USAGE,
    CommandError,
    require_server_extra,
    service_modules,
    setup_django,
)

#: Where the database URL comes from, for messages.
_DATABASE_FLAG = "--database (or ROOMCAST_DATABASE_URL)"


def database_in_use() -> str:
    """The default database as a URL without credentials: what a push would store into."""
    from django.db import connection

    params = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(str(params['NAME'])).resolve()}"
    host, port = params.get("HOST") or "localhost", params.get("PORT") or 5432
    return f"{connection.vendor}://{host}:{port}/{params['NAME']}"


def check_database() -> None:
    """Open the default database once, or raise a CommandError saying what is wrong."""
    from django.db import DatabaseError, connection

    try:
        connection.ensure_connection()
    except DatabaseError as exc:
        raise database_error(exc) from None


def database_error(exc: BaseException) -> CommandError:
    """One line for a database error, naming the fix when the error shows one."""
    from django.db import connection

    # The first line: libpq adds hints on the next ones ("Is the server running...").
    text = " ".join(str(exc).strip().split("\n")[0].split()) or type(exc).__name__
    params = connection.settings_dict
    if re.search(r'no such table|relation ".+?" does not exist', text):
        # A site whose tables were never created: roomcast serve, and the commands
        # that need them (user, room, token), migrate first; manage does not.
        return CommandError(
            f"the database {database_in_use()} has no tables yet ({text}): create them "
            "with `roomcast manage migrate` (roomcast serve does too), with the same "
            f"{_DATABASE_FLAG}",
            EXIT_USAGE,
        )
    if connection.vendor == "sqlite":
        return _sqlite_error(Path(str(params["NAME"])), text)
    return _postgres_error(params, text)


def _sqlite_error(path: Path, text: str) -> CommandError:
    where = f"the SQLite database {path}"
    elsewhere = f"or pass {_DATABASE_FLAG} sqlite:////another/path/db.sqlite3"
    if "unable to open" in text:
        parent = path.parent
        if not parent.exists():
            reason = f"the directory {parent} does not exist; create it"
        elif not parent.is_dir():
            reason = f"{parent} is not a directory; use another path"
        elif path.is_dir():
            reason = f"{path} is a directory; name a file"
        elif not os.access(parent, os.W_OK):
            reason = f"the directory {parent} is not writable; make it writable"
        else:
            reason = f"{text}; check the path and its permissions"
        return CommandError(f"cannot open {where}: {reason}, {elsewhere}", EXIT_USAGE)
    if "readonly" in text or "read-only" in text:
        return CommandError(
            f"{where} is read-only: make it and its directory writable, {elsewhere}", EXIT_USAGE
        )
    if "not a database" in text:
        return CommandError(
            f"{path} is not an SQLite database: pass {_DATABASE_FLAG} with another path",
            EXIT_USAGE,
        )
    if "locked" in text:
        return CommandError(
            f"{where} stayed locked by another process ({text}); stop it, or wait and retry",
            EXIT_FAILED,
        )
    return CommandError(f"{where}: {text}", EXIT_FAILED)


def _postgres_error(params: dict[str, Any], text: str) -> CommandError:
    host, port = str(params.get("HOST") or ""), str(params.get("PORT") or "")
    user, name = str(params.get("USER") or ""), str(params.get("NAME") or "")
    where = f"PostgreSQL at {host}:{port or 5432}" if host else "PostgreSQL on the local socket"
    # libpq's client options, for the commands to paste: the URL's host, port and user.
    server = [*(["-h", host] if host else []), *(["-p", port] if port and port != "5432" else [])]
    options = [*server, *(["-U", user] if user else [])]
    # psycopg's text: 'connection failed: connection to server at "H", port P failed:
    # FATAL:  database "chat" does not exist'; the server's part is what matters.
    reason = re.sub(r"^.* failed: (FATAL: +)?", "", text)
    if match := re.search(r'database "(.+?)" does not exist', text):
        command = shlex.join(["createdb", *options, match[1]])
        return CommandError(
            f"{where} has no database {match[1]!r}: create it with `{command}` and run "
            f"this again, or pass another {_DATABASE_FLAG}",
            EXIT_USAGE,
        )
    if match := re.search(r'role "(.+?)" does not exist', text):
        command = shlex.join(["createuser", *server, match[1]])
        return CommandError(
            f"{where} has no role {match[1]!r}: create it with `{command}` (as a superuser), "
            f"or put another user in {_DATABASE_FLAG}",
            EXIT_USAGE,
        )
    if match := re.search(r'password authentication failed for user "(.+?)"', text):
        return CommandError(
            f"{where} refused the password of user {match[1]!r}: fix it in {_DATABASE_FLAG} "
            "(postgresql://USER:PASSWORD@HOST/DB) or in ~/.pgpass",
            EXIT_USAGE,
        )
    if "no password supplied" in text:
        return CommandError(
            f"{where} wants a password for user {user!r}: put it in {_DATABASE_FLAG} "
            "(postgresql://USER:PASSWORD@HOST/DB) or in ~/.pgpass",
            EXIT_USAGE,
        )
    if "no pg_hba.conf entry" in text or "permission denied for database" in text:
        return CommandError(
            f"{where} does not let user {user!r} into database {name!r} ({reason}): allow it "
            "on the server (pg_hba.conf, GRANT CONNECT), or use another user",
            EXIT_USAGE,
        )
    return CommandError(
        f"cannot reach {where} ({reason}): start it, or fix the host and port in {_DATABASE_FLAG}",
        EXIT_FAILED,
    )


# -- Redis: the <prefix>:database key ----------------------------------------------------


def _database_key() -> str:
    return f"{os.environ.get('ROOMCAST_REDIS_PREFIX', 'roomcast')}:database"


def _redis_hosts() -> list[dict[str, Any]]:
    """The servers' Redis shards (``ROOMCAST_REDIS_URL``, checked by apply_service_flags)."""
    from roomcast.server import redis_urls

    return redis_urls.parse(os.environ["ROOMCAST_REDIS_URL"])


def _reason(exc: Exception) -> str:
    """``exc`` in a few words (redis-py's sentinel error quotes a whole client's repr)."""
    from redis.sentinel import MasterNotFoundError

    if isinstance(exc, MasterNotFoundError):
        return "no sentinel answered with the master's address"
    return str(exc)


def announce_database() -> None:
    """Tell ``roomcast push`` run elsewhere which database this server's rooms live in
    (a Redis key beside the channel layer's, on every shard: a push may reach any), so it
    refuses to store into another one."""
    import redis

    from roomcast.server.redis_urls import sync_client, where

    for host in _redis_hosts():
        try:
            with sync_client(host, socket_timeout=5) as client:
                client.set(_database_key(), database_in_use())
        except redis.RedisError as exc:
            print(
                f"roomcast serve: warning: could not write {_database_key()} to Redis at "
                f"{where(host)} ({_reason(exc)}); roomcast push through Redis cannot check its "
                "database",
                file=sys.stderr,
            )


def check_redis(*, same_database: bool) -> None:
    """Reach every shard of the servers' Redis, or raise a CommandError. With
    ``same_database``, also refuse to store into a database the servers do not use (the
    message would be published, seen by nobody, and missing from history).

    Every shard, not only the room's: a shard that is down is worth one clear line
    before anything is stored, and the servers answer pushes over HTTP meanwhile."""
    import redis

    from roomcast.server.redis_urls import sync_client, where

    found = set()
    for host in _redis_hosts():
        try:
            with sync_client(host, socket_timeout=5) as client:
                value = client.get(_database_key())
        except (redis.RedisError, ValueError) as exc:  # ValueError: a bad port
            raise CommandError(
                f"cannot reach Redis at {where(host)} ({_reason(exc)}): start it, fix --redis (or "
                "ROOMCAST_REDIS_URL), or push over HTTP with --server URL",
                EXIT_FAILED,
            ) from None
        if value is not None:
            found.add(value.decode() if isinstance(value, bytes) else value)
    if not same_database:
        return
    ours = database_in_use()
    for theirs in sorted(found):
        if theirs != ours:
            raise CommandError(
                f"the servers on this Redis store their rooms in {theirs}, but this command "
                f"would store the message in {ours}: pass {_DATABASE_FLAG} with the servers' "
                "database, or --server URL to push through a server's HTTP API"
            )


# -- commands that read and write the site's tables --------------------------------------


def ready_database(command: str) -> None:
    """Set the bundled site up for ``command`` (``roomcast user`` ...), which works on its
    database: the extras it needs, the settings, the database reached, and its tables
    created or migrated as ``roomcast serve`` would (so ``roomcast user create`` works
    before the first ``serve``). Each failure is one CommandError.

    Call :func:`~._common.apply_service_flags` first.
    """
    require_server_extra(command, service_modules())
    setup_django()
    from django.core.management import call_command
    from django.db import DatabaseError

    check_database()
    try:
        call_command("migrate", interactive=False, verbosity=0)
    except DatabaseError as exc:  # e.g. a read-only SQLite file, no CREATE permission
        raise database_error(exc) from None
