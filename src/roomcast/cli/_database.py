"""Which database a command stores into, and the Redis key that lets servers say theirs.

``roomcast serve`` writes the database it uses to ``<prefix>:database`` on its Redis;
``roomcast push`` through Redis refuses to store into any other one (the message would
be published, seen by nobody, and missing from history).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def database_in_use() -> str:
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


def announce_database() -> None:
    """Tell ``roomcast push`` run elsewhere which database this server's rooms live in
    (a Redis key beside the channel layer's), so it refuses to store into another one."""
    import redis

    try:
        with _redis_client() as client:
            client.set(_database_key(), database_in_use())
    except redis.RedisError as exc:
        print(f"roomcast serve: could not write {_database_key()} to Redis: {exc}", file=sys.stderr)


def check_same_database() -> None:
    """Refuse a push through Redis that would store into a database the servers do not
    use (the message would be published, seen by nobody, and missing from history)."""
    import redis

    try:
        with _redis_client() as client:
            value = client.get(_database_key())
    except redis.RedisError:
        return  # the push itself will report Redis being unreachable
    theirs = value.decode() if isinstance(value, bytes) else value
    ours = database_in_use()
    if theirs is not None and theirs != ours:
        raise SystemExit(
            f"roomcast: the servers on this Redis store their rooms in {theirs}, "
            f"but this command would store the message in {ours}. Pass --database (or "
            "ROOMCAST_DATABASE_URL) with the servers' database, or --server URL to push "
            "through a server's HTTP API."
        )
