"""``ROOMCAST_REDIS_URL`` (``roomcast serve --redis``): one or more Redis URLs, as
channels_redis host specs.

Layer: the standalone site's configuration, read by ``roomcast.server.settings`` and the
``roomcast`` commands. Imports the standard library only (the commands import it before
they know whether the ``server`` extra is installed); redis-py only inside
:func:`sync_client`.

The value is a comma-separated list of URLs, each starting with its scheme; each is one
shard of the channel layer (channels_redis ``hosts``), in the order given:

* ``redis://[[user]:password@]host[:6379][/db]``, ``rediss://...`` (TLS),
  ``unix://[[user]:password@]/path/to/redis.sock[?db=0]``: one Redis server.
* ``redis+sentinel://[[user]:password@]host[:26379][,host[:26379]...]/master_name[/db]``:
  the master that Redis Sentinel names ``master_name``, asked of the sentinels listed
  (commas between them: a comma followed by ``scheme://`` starts the next shard, any other
  comma separates sentinels). The password is the master's; the sentinels are asked
  without one.

A comma inside a password must be written ``%2C`` (as any reserved character of a URL).
Every shard must be given in the same order to every process: channels_redis picks a
group's shard by its position in the list (CRC32 of the name, on a ring of 4096 split in
equal parts), so two processes with different lists would publish and subscribe rooms on
different servers.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

#: URL schemes of one Redis server that redis-py (and so channels_redis) accepts.
SERVER_SCHEMES = ("redis", "rediss", "unix")
#: The scheme of a Sentinel-managed master (the form redis-py's own URLs do not have;
#: the ``redis+sentinel`` spelling is the one Celery/kombu and several clients read).
SENTINEL_SCHEME = "redis+sentinel"
#: Default ports (Redis's own).
REDIS_PORT = 6379
SENTINEL_PORT = 26379
#: More shards than this is a typo or a pasted list, not a deployment: channels_redis
#: hashes onto a 4096-slot ring, and each shard costs every process a connection pool.
MAX_SHARDS = 64

# A comma followed by a scheme starts the next URL; other commas belong to the URL
# (a sentinel URL's host list).
_NEXT_URL = re.compile(r",\s*(?=[A-Za-z][A-Za-z0-9+.-]*://)")
_USAGE = (
    "use redis://HOST:6379/0, rediss:// (TLS), unix:///path/to/redis.sock or "
    "redis+sentinel://SENTINEL:26379[,SENTINEL:26379...]/MASTER_NAME; several shards "
    "comma-separated"
)


class RedisURLError(ValueError):
    """``ROOMCAST_REDIS_URL`` cannot be used; the message says what to write instead."""


def split_urls(value: str) -> list[str]:
    """The URLs of ``value`` (see the module docstring), stripped; empty ones dropped."""
    urls = (url.strip().strip(",").strip() for url in _NEXT_URL.split(value.strip()))
    return [url for url in urls if url]


def parse(value: str, **options: Any) -> list[dict[str, Any]]:
    """channels_redis host specs for ``value``, one per shard, each with ``options``
    (redis-py connection keywords: timeouts, pool size, protocol) added.

    Raises:
        RedisURLError: a URL that is not one of the forms above, or too many of them.
    """
    urls = split_urls(value)
    if not urls:
        raise RedisURLError(f"no Redis URL given: {_USAGE}")
    if len(urls) > MAX_SHARDS:
        raise RedisURLError(f"{len(urls)} Redis URLs: at most {MAX_SHARDS} shards are supported")
    hosts = [_parse_one(url, options) for url in urls]
    seen: set[str] = set()
    for host in hosts:
        name = where(host)
        if name in seen:
            raise RedisURLError(
                f"{name} is given twice: each shard must be a different Redis (or database)"
            )
        seen.add(name)
    return hosts


def _parse_one(url: str, options: dict[str, Any]) -> dict[str, Any]:
    shown = hide_password(url)[:120]
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:  # an unclosed [IPv6 bracket
        raise RedisURLError(f"{shown!r} is not a Redis URL ({exc}): {_USAGE}") from None
    scheme = parts.scheme.lower()
    if scheme == SENTINEL_SCHEME:
        return _parse_sentinel(url, parts, options)
    if scheme not in SERVER_SCHEMES:
        raise RedisURLError(f"{shown!r} is not a Redis URL: {_USAGE}")
    if "," in url:
        raise RedisURLError(
            f"{shown!r} names several hosts: only a redis+sentinel:// URL lists several "
            "(its sentinels); give each shard its own URL with its scheme, comma-separated "
            "(a comma in a password is written %2C)"
        )
    if scheme != "unix":
        try:
            parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
        except ValueError:
            raise RedisURLError(f"{shown!r}: the port is not a number (1-65535)") from None
        if not parts.hostname:
            raise RedisURLError(f"{shown!r} has no host: {_USAGE}")
        _db(parts.path.strip("/") or "0", shown)
    return {"address": url, **options}


def _parse_sentinel(
    url: str, parts: urllib.parse.SplitResult, options: dict[str, Any]
) -> dict[str, Any]:
    shown = hide_password(url)[:120]
    netloc = parts.netloc
    userinfo, _, hostlist = netloc.rpartition("@")
    sentinels: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            entry = urllib.parse.urlsplit(f"//{item}")
            port = entry.port or SENTINEL_PORT
        except ValueError:
            raise RedisURLError(f"{shown!r}: sentinel {item!r} is not HOST[:PORT]") from None
        if not entry.hostname:
            raise RedisURLError(f"{shown!r}: sentinel {item!r} is not HOST[:PORT]")
        sentinels.append((entry.hostname, port))
    if not sentinels:
        raise RedisURLError(f"{shown!r} lists no sentinel: {_USAGE}")
    segments = [s for s in parts.path.split("/") if s]
    if not segments or len(segments) > 2:
        raise RedisURLError(
            f"{shown!r}: give the master's name, and optionally a database number, as "
            "the path: redis+sentinel://SENTINEL:26379/MASTER_NAME[/DB]"
        )
    host: dict[str, Any] = {
        "sentinels": sentinels,
        "master_name": urllib.parse.unquote(segments[0]),
        "db": _db(segments[1] if len(segments) == 2 else "0", shown),
        **options,
    }
    if userinfo:
        user, has_password, password = userinfo.partition(":")
        if user:
            host["username"] = urllib.parse.unquote(user)
        if has_password:
            host["password"] = urllib.parse.unquote(password)
    # channels_redis makes the Sentinel client from ``sentinel_kwargs`` alone, so without
    # these the sentinel connections would have no timeout at all (redis-py's default).
    host["sentinel_kwargs"] = {
        k: v for k, v in options.items() if k.startswith("socket_") or k == "protocol"
    }
    return host


def _db(text: str, shown: str) -> int:
    if not text.isdigit():
        raise RedisURLError(f"{shown!r}: the database {text!r} is not a number (0-15 by default)")
    return int(text)


def hide_password(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***``."""
    return re.sub(r"(//[^:@/]*):[^@/]*@", r"\1:***@", url)


def where(host: dict[str, Any]) -> str:
    """One host spec, for messages and logs: its URL without the password."""
    if "address" in host:
        return hide_password(str(host["address"]))
    sentinels = ",".join(f"{h}:{p}" for h, p in host["sentinels"])
    return f"{SENTINEL_SCHEME}://{sentinels}/{host['master_name']}/{host.get('db', 0)}"


def sync_client(host: dict[str, Any], **options: Any) -> Any:
    """A redis-py (synchronous) client of one host spec, for the commands' short talks
    with Redis; ``options`` override the spec's connection keywords."""
    import redis
    from redis.sentinel import Sentinel

    spec = {**host, **options}
    if "address" in spec:
        return redis.Redis.from_url(spec.pop("address"), **spec)
    sentinels = spec.pop("sentinels")
    master_name = spec.pop("master_name")
    sentinel_kwargs = {**spec.pop("sentinel_kwargs", {}), **options}
    spec.pop("max_connections", None)
    manager = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **spec)  # type: ignore[no-untyped-call]
    return manager.master_for(master_name)  # type: ignore[no-untyped-call]
