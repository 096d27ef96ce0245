"""The ``roomcast`` console script, run for real in a subprocess, with no service running.

Help and version, one-line errors and their exit codes, extras that are not installed
(a ``sitecustomize`` that refuses to import them), input checked before any request.
Tests that need a server, PostgreSQL or Redis are in ``tests/e2e/test_cli_*.py``.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import roomcast
from roomcast.cli import build_parser
from roomcast.cli._environ import OPTIONS, markdown_table
from roomcast.conf import DEFAULTS, SERVER_VARIABLES
from tests.conftest import free_port

ROOMCAST = str(Path(sys.executable).with_name("roomcast"))
DOCS = Path(__file__).resolve().parent.parent / "docs"
#: The commands of ``roomcast``.
COMMANDS = (
    "serve", "push", "disconnect", "user", "room", "token", "listen", "history", "rooms", "manage"
)  # fmt: skip

#: Imports refused in the child process: ``BLOCK_IMPORTS=uvicorn,psycopg`` behaves like a
#: ``pip install roomcast`` without those packages.
SITECUSTOMIZE = """
import os, sys
from importlib.abc import MetaPathFinder

BLOCKED = set(filter(None, os.environ.get("BLOCK_IMPORTS", "").split(",")))

class Refuse(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Refuse())
"""


def run(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    stdin: bytes = b"",
    block: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """``roomcast ARGS`` in ``tmp_path`` with no ROOMCAST_* variable but ``env``'s."""
    child = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
    child.pop("DJANGO_SETTINGS_MODULE", None)
    child["ROOMCAST_DATA_DIR"] = str(tmp_path / "data")
    if block:
        blocker = tmp_path / "blocker"
        blocker.mkdir(exist_ok=True)
        (blocker / "sitecustomize.py").write_text(SITECUSTOMIZE)
        child["PYTHONPATH"] = str(blocker)
        child["BLOCK_IMPORTS"] = ",".join(block)
    child.update(env or {})
    result = subprocess.run(
        [ROOMCAST, *args], env=child, cwd=tmp_path, input=stdin, capture_output=True, timeout=60
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def one_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The single line the command printed on stderr, having exited with ``code``."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, (result.returncode, result.stderr)
    return lines[0]


# -- help and version ---------------------------------------------------------------------


def test_version(tmp_path: Path) -> None:
    result = run(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"roomcast {roomcast.__version__} with Django "), result.stdout


def test_top_level_help_is_plain_text_listing_the_commands(tmp_path: Path) -> None:
    result = run(tmp_path, "--help")
    assert result.returncode == 0
    assert "`" not in result.stdout, result.stdout  # no reST/Markdown markup
    for command in COMMANDS:
        assert command in result.stdout
    for text in ("--version", "docs/cli.md"):
        assert text in result.stdout


def subcommands(
    parser: argparse.ArgumentParser, prefix: str = "roomcast"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every command and action (``roomcast room members``...) with its parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from subcommands(sub, f"{prefix} {name}")


def test_every_flag_of_every_command_has_help() -> None:
    commands = dict(subcommands(build_parser()))
    assert {name for name in commands if name.count(" ") == 1} == {
        f"roomcast {name}" for name in COMMANDS
    }
    assert {"roomcast room members", "roomcast user create"} <= set(commands)
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest}"


def test_serve_help_lists_every_variable(tmp_path: Path) -> None:
    """serve --help lists roomcast serve's variables and every ROOMCAST_<KEY>."""
    result = run(tmp_path, "serve", "--help")
    assert result.returncode == 0
    for variable in SERVER_VARIABLES - {"ROOMCAST_TEST_POSTGRES", "ROOMCAST_TEST_SQLITE"}:
        assert variable in result.stdout, variable
    for key in set(DEFAULTS) - {"API_KEYS"}:
        assert re.search(rf"\b{key}\b", result.stdout), key
    for text in ("the address to listen on", "the port to listen on", "worker processes"):
        assert text in result.stdout, text


def test_the_variables_table_is_the_one_in_the_docs() -> None:
    """docs/settings.md holds the table serve --help is built from, word for word, and it
    names every variable the settings read (conf.SERVER_VARIABLES)."""
    assert markdown_table() in (DOCS / "settings.md").read_text(), (
        "docs/settings.md is out of date: paste in the output of python -m roomcast.cli._environ"
    )
    documented = {o.variable for o in OPTIONS if o.variable}
    assert documented == SERVER_VARIABLES - {"ROOMCAST_TEST_POSTGRES", "ROOMCAST_TEST_SQLITE"}


def test_docs_cli_names_every_flag() -> None:
    text = (DOCS / "cli.md").read_text()
    for name, sub in subcommands(build_parser()):
        assert f"`{name}" in text, f"docs/cli.md does not document {name}"
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in text, f"docs/cli.md does not document {name} {flag}"


# -- one-line errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "roomcast: give a COMMAND"),
        (("serve", "--port", "http"), "roomcast serve: argument --port: 'http' is not a port"),
        (("serve", "--workers", "0"), "roomcast serve: argument --workers"),
        (("serve", "--log-format", "xml"), "argument --log-format: invalid choice: 'xml'"),
        (("serve", "--workers", "2"), "--workers 2 needs --redis URL"),
        (("serve", "--redis", "localhost:6379"), "is not a Redis URL: use redis://"),
        (("push", "lobby"), "roomcast push: the following arguments are required: TEXT"),
        (("disconnect", "lobby", "--user-id", "0"), "'0' is not a user id"),
    ],
)
def test_usage_errors_are_one_line(tmp_path: Path, args: tuple[str, ...], expected: str) -> None:
    line = one_line(run(tmp_path, *args), 2)
    assert expected in line, line


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("ROOMCAST_ALLOWED_HOSTS", "http://chat.example.com", "without scheme, port or path"),
        ("ROOMCAST_ALLOWED_HOSTS", "chat.example.com:8000", "without scheme, port or path"),
        ("ROOMCAST_LOG_LEVEL", "verbose", "use debug, info, warning"),
        ("ROOMCAST_LOG_FORMAT", "xml", "is not a log format: use text or json"),
        ("ROOMCAST_ACCESS_LOG", "maybe", "is not on or off: use 1 (on) or 0 (off)"),
        ("ROOMCAST_DRAIN_SECS", "soon", "ROOMCAST_DRAIN_SECS must be a number, not 'soon'"),
        ("ROOMCAST_HISTORY_COUNT", "many", "ROOMCAST_HISTORY_COUNT must be a whole number"),
    ],
)
def test_bad_variables_stop_serve_in_one_line(
    tmp_path: Path, variable: str, value: str, expected: str
) -> None:
    line = one_line(run(tmp_path, "serve", env={variable: value}), 2)
    assert line.startswith("roomcast serve: ") and expected in line, line


# -- extras ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "block", "expected"),
    [
        (
            ("serve",),
            ("dj_database_url", "uvicorn", "channels_redis"),
            "roomcast serve needs the server extra: pip install 'roomcast[server]' "
            "(uvicorn is not installed)",
        ),
        (
            ("serve", "--database", "postgresql://postgres@127.0.0.1/chat"),
            ("psycopg",),
            "roomcast serve needs the server extra: pip install 'roomcast[server]' "
            "(psycopg is not installed)",
        ),
        (
            ("push", "lobby", "hi", "--redis", "redis://127.0.0.1:6379/0"),
            ("channels_redis",),
            "roomcast push through Redis needs the server extra: pip install "
            "'roomcast[server]' (channels_redis is not installed)",
        ),
        (
            ("disconnect", "lobby", "--redis", "redis://127.0.0.1:6379/0"),
            ("dj_database_url",),
            "roomcast disconnect through Redis needs the server extra: pip install "
            "'roomcast[server]' (dj_database_url is not installed)",
        ),
        (
            ("manage", "check"),
            ("dj_database_url",),
            "roomcast manage needs the server extra: pip install 'roomcast[server]' "
            "(dj_database_url is not installed)",
        ),
    ],
)
def test_a_missing_extra_is_named_in_one_line(
    tmp_path: Path, args: tuple[str, ...], block: tuple[str, ...], expected: str
) -> None:
    assert one_line(run(tmp_path, *args, block=block), 2) == expected


def test_push_over_http_needs_no_extra(tmp_path: Path) -> None:
    """With every server-extra module refused, push still gets as far as the network."""
    block = ("uvicorn", "uvloop", "httptools", "websockets", "dj_database_url", "psycopg")
    block += ("channels_redis", "redis")
    port = free_port()
    result = run(
        tmp_path, "push", "lobby", "hi", "--server", f"http://127.0.0.1:{port}",
        "--api-key", "k" * 20, block=block,
    )  # fmt: skip
    line = one_line(result, 1)
    assert line.startswith(f"roomcast push: no roomcast server at http://127.0.0.1:{port} ")


# -- input checked before any request ----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "stdin", "expected"),
    [
        (("push", "a/b", "hi"), b"", "ROOM 'a/b': Room names cannot contain '/'."),
        (("push", "  ", "hi"), b"", "The room name is empty."),
        (("push", "lobby", ""), b"", "the message is empty"),
        (("push", "lobby", "-"), b"\n\n", "the message is empty"),
        (("push", "lobby", "-"), b"caf\xe9", "standard input is not UTF-8 text (byte 3)"),
        (("push", "lobby", "-"), b"x" * (1024 * 1024 + 1), "standard input holds more than"),
        (("disconnect", "lobby", "--reason", "r" * 121), b"", "--reason is limited to 120"),
        (("disconnect", "a/b"), b"", "Room names cannot contain '/'."),
    ],
)
def test_bad_input_is_refused_before_any_request(
    tmp_path: Path, args: tuple[str, ...], stdin: bytes, expected: str
) -> None:
    """Nothing listens on --server: a request would fail with "no roomcast server"."""
    server = f"http://127.0.0.1:{free_port()}"
    line = one_line(run(tmp_path, *args, "--server", server, "--api-key", "k" * 20, stdin=stdin), 2)
    assert expected in line and "no roomcast server" not in line, line


def test_server_must_be_an_http_url(tmp_path: Path) -> None:
    line = one_line(run(tmp_path, "push", "lobby", "hi", "--server", "127.0.0.1:8000"), 2)
    assert "--server '127.0.0.1:8000' is not an http:// or https:// URL" in line, line


def test_no_api_key_says_where_it_looked(tmp_path: Path) -> None:
    line = one_line(run(tmp_path, "push", "lobby", "hi"), 2)
    assert "no API key" in line and str(tmp_path / "data" / "api_key") in line, line


def test_push_through_redis_that_is_down_is_one_line(tmp_path: Path) -> None:
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    line = one_line(run(tmp_path, "push", "lobby", "hi", "--redis", redis_url), 1)
    assert f"cannot reach Redis at {redis_url}" in line and "--server URL" in line, line


def test_a_port_in_use_or_a_foreign_address_is_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        line = one_line(run(tmp_path, "serve", "--port", str(port)), 1)
    assert line == (
        f"roomcast serve: cannot listen on 127.0.0.1:{port} (Address already in use): stop "
        "what uses it, or pass --port with another port"
    )
    line = one_line(run(tmp_path, "serve", "--host", "192.0.2.123"), 2)  # TEST-NET-1
    assert line.endswith("give --host an address of this machine, 0.0.0.0 or ::"), line


# -- SQLite paths ---------------------------------------------------------------------------


def test_sqlite_path_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    missing = tmp_path / "missing" / "db.sqlite3"
    line = one_line(run(tmp_path, "serve", "--database", f"sqlite:///{missing}"), 2)
    assert f"the directory {missing.parent} does not exist" in line, line
    under_file = tmp_path / "a-file" / "db.sqlite3"
    line = one_line(run(tmp_path, "serve", "--database", f"sqlite:///{under_file}"), 2)
    assert f"{tmp_path / 'a-file'} is not a directory" in line, line
    (tmp_path / "notes.txt").write_text("not a database, but text long enough to be read\n" * 20)
    line = one_line(run(tmp_path, "serve", "--database", f"sqlite:///{tmp_path / 'notes.txt'}"), 2)
    assert f"{tmp_path / 'notes.txt'} is not an SQLite database" in line, line
