"""``roomcast serve`` / ``push`` / ``manage`` against a PostgreSQL that cannot serve them:
one line each, with what to run, and nothing created on the way."""

from __future__ import annotations

import shlex
import urllib.parse
import uuid
from pathlib import Path

import psycopg
import pytest

from tests.conftest import POSTGRES_URL, free_port
from tests.test_cli import one_line, run

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

_server = urllib.parse.urlsplit(POSTGRES_URL)
HOST, PORT, USER = _server.hostname or "", _server.port, _server.username or ""


def url(name: str, *, user: str = USER, port: int | None = PORT) -> str:
    return f"postgresql://{user}@{HOST}{f':{port}' if port else ''}/{name}"


def exists(name: str) -> bool:
    with psycopg.connect(POSTGRES_URL) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        return row is not None


def test_a_missing_database_gets_the_createdb_to_run(tmp_path: Path) -> None:
    name = f"roomcast_missing_{uuid.uuid4().hex[:8]}"
    createdb = shlex.join(
        ["createdb", "-h", HOST]
        + (["-p", str(PORT)] if PORT and PORT != 5432 else [])
        + ["-U", USER, name]
    )
    for args in (
        ("serve", "--port", str(free_port())),
        ("manage", "migrate"),
        ("push", "lobby", "hi", "--redis", f"redis://127.0.0.1:{free_port()}/0"),
    ):
        line = one_line(run(tmp_path, *args, env={"ROOMCAST_DATABASE_URL": url(name)}), 2)
        assert f"has no database {name!r}: create it with `{createdb}`" in line, line
    assert not exists(name)  # said, not created


def test_a_missing_role_is_one_line(tmp_path: Path) -> None:
    role = f"nobody_{uuid.uuid4().hex[:6]}"
    line = one_line(run(tmp_path, "serve", "--database", url("postgres", user=role)), 2)
    assert f"has no role {role!r}: create it with `createuser -h {HOST}" in line, line


def test_postgresql_not_listening_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    line = one_line(run(tmp_path, "serve", "--database", url("chat", port=port)), 1)
    assert line.startswith(f"roomcast serve: cannot reach PostgreSQL at {HOST}:{port} ("), line
    assert "Connection refused" in line, line
