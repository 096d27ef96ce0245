"""The environment variables and flags of ``roomcast serve``: one table, three readers.

``roomcast serve --help`` builds its flags' help and its epilog from :data:`OPTIONS`, and
docs/settings.md holds :func:`markdown_table` verbatim (a test compares them), so the
help, the docs and this table cannot drift apart. The variables themselves are read by
``roomcast.server.settings`` (and the flags set them). Regenerate the docs table with::

    python -m roomcast.cli._environ

Layer: command line; imports the standard library and ``roomcast.conf`` (for the
``ROOMCAST_<KEY>`` names), nothing that needs an extra.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from roomcast.conf import DEFAULTS


@dataclass(frozen=True, kw_only=True)
class Option:
    """One row: a variable, its flag, or both. Text fields are Markdown (backticks)."""

    variable: str = ""
    flag: str = ""
    #: The command whose flag it is, when not ``serve``.
    flag_of: str = "serve"
    default: str
    meaning: str


OPTIONS: tuple[Option, ...] = (
    Option(
        variable="ROOMCAST_DATA_DIR",
        default="`./.roomcast`",
        meaning="the SQLite database, and the generated `secret_key` and `api_key` files; "
        "private to the user that runs the server (0700, files 0600)",
    ),
    Option(
        variable="ROOMCAST_DATABASE_URL",
        flag="--database",
        default="`sqlite:///$ROOMCAST_DATA_DIR/db.sqlite3`",
        meaning="`sqlite:///PATH` or `postgresql://USER@HOST:PORT/NAME`",
    ),
    Option(
        variable="ROOMCAST_REDIS_URL",
        flag="--redis",
        default="none, the in-memory layer (one process)",
        meaning="Redis for the channel layer; needed for `--workers` above 1. Several "
        "URLs, comma-separated, are shards (same list, same order, on every process); "
        "`redis+sentinel://HOST:26379[,HOST:26379...]/MASTER_NAME[/DB]` asks Redis "
        "Sentinel for the master (docs/deploy.md)",
    ),
    Option(
        variable="ROOMCAST_LAYER",
        flag="--layer",
        default="`pubsub`",
        meaning="`pubsub` (channels_redis `RedisPubSubChannelLayer`) or `core` "
        "(`RedisChannelLayer`)",
    ),
    Option(
        variable="ROOMCAST_REDIS_PREFIX",
        default="`roomcast`",
        meaning="key and channel prefix, so deployments can share a Redis",
    ),
    Option(
        variable="ROOMCAST_SECRET_KEY",
        default="generated, kept in the data dir",
        meaning="Django `SECRET_KEY`",
    ),
    Option(
        variable="ROOMCAST_API_KEY",
        flag="--api-key",
        flag_of="push",
        default="generated, kept in the data dir",
        meaning="the HTTP push API key",
    ),
    Option(
        variable="ROOMCAST_ALLOWED_HOSTS",
        default="`localhost,127.0.0.1,[::1]` and the `--host` address",
        meaning="comma-separated host names the server answers to (Django `ALLOWED_HOSTS`); "
        "a browser's socket must come from the page's own origin on one of them (see "
        "[Origins](#origins-which-pages-may-open-a-socket)). Set it when serving on `0.0.0.0` "
        "or `::`",
    ),
    Option(
        variable="ROOMCAST_DEBUG",
        default="off",
        meaning="`1` turns on Django's `DEBUG`",
    ),
    Option(
        variable="ROOMCAST_LOG_LEVEL",
        flag="--log-level",
        default="`info`",
        meaning="`debug`, `info`, `warning`, `error`; `debug` adds a line per connection "
        "and per refused request",
    ),
    Option(
        variable="ROOMCAST_LOG_FORMAT",
        flag="--log-format",
        default="`text`",
        meaning="`text` or `json`: one JSON object per line (`time`, `level`, `logger`, "
        "`message`, and `room`, `user`, `client`, `code`... when known; a traceback in "
        "`exc`)",
    ),
    Option(
        variable="ROOMCAST_ACCESS_LOG",
        flag="--access-log",
        default="off, on with `--log-level debug`",
        meaning="a line per HTTP request, per WebSocket session when it ends (room, user, "
        "close code, duration, frames in) and per refused handshake; `--no-access-log` or "
        "`0` for none",
    ),
    Option(flag="--host", default="`127.0.0.1`", meaning="the address to listen on"),
    Option(flag="--port", default="`8000`", meaning="the port to listen on"),
    Option(flag="--workers", default="1", meaning="uvicorn worker processes"),
)


def plain(markdown: str) -> str:
    """``markdown`` as terminal text (without backticks)."""
    return markdown.replace("`", "")


def flag_help(flag: str) -> str:
    """argparse help of a ``roomcast serve`` flag: its row's meaning, variable, default."""
    (option,) = (o for o in OPTIONS if o.flag == flag and o.flag_of == "serve")
    env = f" Env {option.variable}." if option.variable else ""
    # argparse %-formats help strings (for %(default)s and the like).
    return plain(f"{option.meaning}.{env} Default: {option.default}.").replace("%", "%%")


def serve_epilog(width: int = 88) -> str:
    """The environment section of ``roomcast serve --help``."""
    lines = ["environment (flags win over variables, variables over defaults):"]
    name_width = max(len(o.variable) for o in OPTIONS) + 2
    indent = " " * (2 + name_width)
    for option in OPTIONS:
        if not option.variable:
            continue
        flag = f"{option.flag} of roomcast {option.flag_of}: " if option.flag_of != "serve" else ""
        flag = flag or (f"{option.flag}: " if option.flag else "")
        text = plain(f"{flag}{option.meaning}. Default: {option.default}.")
        lines += textwrap.wrap(
            text,
            width,
            initial_indent=f"  {option.variable:<{name_width}}",
            subsequent_indent=indent,
        )
    keys = ", ".join(key for key in DEFAULTS if key != "API_KEYS")
    lines += textwrap.wrap(
        f"every ROOMCAST setting but API_KEYS, e.g. ROOMCAST_HISTORY_COUNT=100: {keys} "
        "(docs/settings.md)",
        width,
        initial_indent=f"  {'ROOMCAST_<KEY>':<{name_width}}",
        subsequent_indent=indent,
    )
    return "\n".join(lines)


def markdown_table() -> str:
    """The table of docs/settings.md's ``roomcast serve (environment)`` section."""
    rows = ["| variable | flag | default | meaning |", "| --- | --- | --- | --- |"]
    for o in OPTIONS:
        variable = f"`{o.variable}`" if o.variable else ""
        flag = f"`{o.flag}`" + (f" ({o.flag_of})" if o.flag_of != "serve" else "") if o.flag else ""
        rows.append(f"| {variable} | {flag} | {o.default} | {o.meaning} |".replace("|  |", "| |"))
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
