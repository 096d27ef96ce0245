"""``roomcast user``, ``room``, ``token`` and ``manage``, run for real in a subprocess on
the bundled site's database (SQLite in the test's data dir; PostgreSQL once).

What they wrote is read back from the database file itself (``sqlite3``), and tokens are
checked by the site's own ``verify_token`` through ``roomcast manage shell``. The
``--server`` way and live sockets are in tests/e2e/test_cli_access_e2e.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest

from roomcast.cli.room import VISIBILITIES
from roomcast.models import Room
from tests.test_cli import one_line, run


def db(tmp_path: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    """Rows of ``sql`` on the site's SQLite database."""
    with sqlite3.connect(tmp_path / "data" / "db.sqlite3") as conn:
        return list(conn.execute(sql, params))


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a run that succeeded with nothing on stderr."""
    assert result.returncode == 0 and result.stderr == "", (result.returncode, result.stderr)
    return result.stdout


def shell(tmp_path: Path, code: str, **env: str) -> str:
    """``roomcast manage shell -c CODE``'s output (quiet: no "objects imported" line)."""
    return ok(run(tmp_path, "manage", "shell", "-v", "0", "-c", code, env=env))


# -- roomcast user create -----------------------------------------------------------------


def test_user_create_makes_token_only_and_password_users(tmp_path: Path) -> None:
    out = ok(run(tmp_path, "user", "create", "alice"))
    assert out == "created user 'alice' (without a password: tokens only)\n"
    out = ok(
        run(tmp_path, "user", "create", "bob", "--staff", "--password-stdin", stdin=b"s3cret pw\n")
    )
    assert out == "created staff user 'bob' (with a password)\n"
    rows = dict(
        (name, (password.startswith("!"), staff, active))
        for name, password, staff, active in db(
            tmp_path, "SELECT username, password, is_staff, is_active FROM auth_user"
        )
    )
    # "!": Django's unusable password, which no password matches.
    assert rows == {"alice": (True, 0, 1), "bob": (False, 1, 1)}
    checked = shell(
        tmp_path,
        "from django.contrib.auth import authenticate as a; "
        "print(bool(a(username='bob', password='s3cret pw')), "
        "bool(a(username='bob', password='s3cret pw\\n')), bool(a(username='alice', password='')))",
    )
    assert checked == "True False False\n"


@pytest.mark.parametrize(
    ("args", "stdin", "expected"),
    [
        (("user", "create", "a b"), b"", "NAME 'a b': Enter a valid username."),
        (("user", "create", "x" * 151), b"", "Ensure this value has at most 150 characters"),
        (("user", "create", ""), b"", "NAME '': This field cannot be blank."),
        (
            ("user", "create", "carl", "--password-stdin"),
            b"\n",
            "the password on standard input is empty",
        ),
        (("user", "create", "carl", "--password-stdin"), b"caf\xe9", "not UTF-8 text (byte 3)"),
        (("user", "create", "carl", "--password-stdin"), b"a\nb\n", "must be one line"),
        (("user", "create", "carl", "--password-stdin"), b"p" * 4097, "over 4096 bytes"),
        (("user",), b"", "roomcast user: give an ACTION: create"),
    ],
)
def test_user_create_refuses_bad_input_in_one_line(
    tmp_path: Path, args: tuple[str, ...], stdin: bytes, expected: str
) -> None:
    line = one_line(run(tmp_path, *args, stdin=stdin), 2)
    assert expected in line, line
    if (tmp_path / "data" / "db.sqlite3").exists() and args[1:]:
        assert db(tmp_path, "SELECT count(*) FROM auth_user") == [(0,)]


def test_user_create_twice_is_refused(tmp_path: Path) -> None:
    ok(run(tmp_path, "user", "create", "alice"))
    line = one_line(run(tmp_path, "user", "create", "alice", "--staff"), 2)
    assert line == "roomcast user create: user 'alice' exists already"
    assert db(tmp_path, "SELECT username, is_staff FROM auth_user") == [("alice", 0)]


# -- roomcast room ------------------------------------------------------------------------


def rooms_in(tmp_path: Path) -> dict[str, str]:
    return dict(db(tmp_path, "SELECT name, visibility FROM roomcast_room"))  # type: ignore[arg-type]


def members_of(tmp_path: Path, room: str) -> dict[str, str]:
    return dict(
        db(  # type: ignore[arg-type]
            tmp_path,
            "SELECT u.username, m.role FROM roomcast_roommember m JOIN auth_user u ON "
            "u.id = m.user_id JOIN roomcast_room r ON r.id = m.room_id WHERE r.name = ?",
            room,
        )
    )


def test_rooms_are_created_changed_and_shown(tmp_path: Path) -> None:
    assert ok(run(tmp_path, "room", "create", "lobby")) == "created room 'lobby' (public)\n"
    assert ok(run(tmp_path, "room", "create", "board", "--private")) == (
        "created room 'board' (private)\n"
    )
    assert ok(run(tmp_path, "room", "create", "技术 news", "--read-only")) == (
        "created room '技术 news' (read-only)\n"
    )
    assert rooms_in(tmp_path) == {"lobby": "public", "board": "private", "技术 news": "read_only"}

    line = one_line(run(tmp_path, "room", "create", "board"), 2)
    assert line.startswith("roomcast room create: room 'board' exists already: "), line
    assert rooms_in(tmp_path)["board"] == "private"

    # Making a room public takes no rights away: no note about Redis.
    assert ok(run(tmp_path, "room", "set", "board", "--public")) == "room 'board' is public now\n"
    result = run(tmp_path, "room", "set", "lobby", "--private")
    assert result.returncode == 0 and result.stdout == "room 'lobby' is private now\n"
    # Taking rights away, without Redis, says what it cannot reach: one line.
    (note,) = result.stderr.splitlines()
    assert note.startswith("roomcast room set: note: without Redis") and "--server URL" in note
    assert ok(run(tmp_path, "room", "set", "lobby", "--private")) == (
        "room 'lobby' was private already\n"
    )
    assert rooms_in(tmp_path) == {"lobby": "private", "board": "public", "技术 news": "read_only"}

    line = one_line(run(tmp_path, "room", "set", "nowhere", "--private"), 2)
    assert line == (
        "roomcast room set: no room 'nowhere': create it with `roomcast room create nowhere`"
    )
    assert "nowhere" not in rooms_in(tmp_path)


def test_members_are_added_removed_and_listed(tmp_path: Path) -> None:
    for name in ("alice", "bob", "carol"):
        ok(run(tmp_path, "user", "create", name))
    ok(run(tmp_path, "room", "create", "board", "--private"))
    out = ok(run(tmp_path, "room", "members", "board", "add", "alice", "bob", "alice"))
    assert out == "added alice, bob to 'board' as members\n"
    assert ok(run(tmp_path, "room", "members", "board", "add", "carol", "--admin")) == (
        "added carol to 'board' as admin\n"
    )
    assert members_of(tmp_path, "board") == {"alice": "member", "bob": "member", "carol": "admin"}

    # An unknown user: nothing changes.
    line = one_line(run(tmp_path, "room", "members", "board", "add", "dave", "alice"), 2)
    assert line == (
        "roomcast room members: no user 'dave': create it with `roomcast user create NAME`"
    )
    result = run(tmp_path, "room", "members", "board", "remove", "bob", "alice")
    assert result.stdout == "removed bob, alice from 'board'\n"
    assert "note: without Redis" in result.stderr
    result = run(tmp_path, "room", "members", "board", "remove", "bob")
    assert (result.returncode, result.stdout) == (0, "bob was not a member of 'board'\n")
    assert result.stderr == ""  # nothing was taken away
    assert members_of(tmp_path, "board") == {"carol": "admin"}
    line = one_line(run(tmp_path, "room", "members", "board", "remove", "bob", "--admin"), 2)
    assert "--admin goes with add" in line
    line = one_line(run(tmp_path, "room", "members", "nowhere", "add", "bob"), 2)
    assert "no room 'nowhere'" in line

    text = ok(run(tmp_path, "room", "show", "board"))
    assert text == (
        "room:       board\n"
        "visibility: private (members and staff only)\n"
        "messages:   0 (last seq 0)\n"
        "members:    1\n"
        "  carol (admin)\n"
    )
    shown = json.loads(ok(run(tmp_path, "room", "show", "board", "--json")))
    assert shown == {
        "name": "board",
        "visibility": "private",
        "members": [{"user": "carol", "role": "admin"}],
        "message_count": 0,
        "last_seq": 0,
    }


def test_show_counts_the_messages_a_push_stored(tmp_path: Path) -> None:
    ok(run(tmp_path, "room", "create", "ops"))
    for text in ("one", "two"):
        ok(run(tmp_path, "manage", "roomcast_push", "ops", text))
    shown = json.loads(ok(run(tmp_path, "room", "show", "ops", "--json")))
    assert (shown["visibility"], shown["message_count"], shown["last_seq"]) == ("public", 2, 2)
    line = one_line(run(tmp_path, "room", "show", "nowhere"), 2)
    assert (
        line
        == "roomcast room show: no room 'nowhere': create it with `roomcast room create nowhere`"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("room",), "roomcast room: give an ACTION: create, set, members or show"),
        (
            ("room", "set", "lobby"),
            "one of the arguments --public --private --read-only is required",
        ),
        (("room", "create", "x", "--public", "--private"), "not allowed with argument"),
        (("room", "create", "a/b"), "NAME 'a/b': Room names cannot contain '/'."),
        (("room", "create", "x" * 201), "Room names are limited to 200 characters"),
        (("room", "members", "lobby", "kick", "bob"), "invalid choice: 'kick'"),
        (("room", "members", "lobby", "add"), "the following arguments are required: USER"),
        (
            ("room", "show", "lobby", "--server", "127.0.0.1:8000"),
            "is not an http:// or https:// URL",
        ),
    ],
)
def test_room_usage_errors_are_one_line(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    line = one_line(run(tmp_path, *args), 2)
    assert expected in line, line


def test_visibility_texts_are_the_models_labels() -> None:
    """room show's words for each visibility are Room.Visibility's labels."""
    assert {v: label.partition(": ")[2] for v, label in Room.Visibility.choices} == VISIBILITIES


# -- roomcast token -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site with the users alice (active), carol (inactive) and mallory (banned from
    the site), for tests that only read."""
    path = tmp_path_factory.mktemp("site")
    ok(run(path, "user", "create", "alice"))
    ok(run(path, "user", "create", "carol"))
    ok(run(path, "user", "create", "mallory"))
    shell(
        path,
        "from django.contrib.auth.models import User; from roomcast import moderation; "
        "User.objects.filter(username='carol').update(is_active=False); "
        "moderation.ban(User.objects.get(username='mallory'))",
    )
    return path


def test_token_prints_only_a_token_the_site_accepts(tmp_path: Path) -> None:
    ok(run(tmp_path, "user", "create", "alice"))
    token = ok(run(tmp_path, "token", "alice", "--ttl", "120"))
    assert token.count("\n") == 1 and token.endswith("\n") and " " not in token
    token = token.strip()
    verified = shell(
        tmp_path,
        "import time; from roomcast.auth import verify_token as v; "
        f"u, e = v({token!r}); print(u.username, round(e - time.time()))",
    )
    name, left = verified.split()
    assert name == "alice" and 110 <= int(left) <= 120
    # Without --ttl: TOKEN_TTL_SECS, which the site's configuration sets.
    token = ok(run(tmp_path, "token", "alice", env={"ROOMCAST_TOKEN_TTL_SECS": "600"})).strip()
    left = shell(
        tmp_path,
        "import time; from roomcast.auth import verify_token as v; "
        f"print(round(v({token!r})[1] - time.time()))",
    )
    assert 590 <= int(left) <= 600


def test_a_token_from_another_secret_key_is_refused(tmp_path: Path) -> None:
    """Signed with the site's SECRET_KEY: a site with another key refuses it."""
    ok(run(tmp_path, "user", "create", "alice"))
    token = ok(run(tmp_path, "token", "alice", env={"ROOMCAST_SECRET_KEY": "k" * 50})).strip()
    refused = shell(
        tmp_path,
        "from roomcast.auth import verify_token as v, InvalidTokenError as E\n"
        f"try:\n    v({token!r})\nexcept E as e:\n    print(e.code)",
    )
    assert refused == "invalid_token\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("token", "nobody"), "no user 'nobody': create it with `roomcast user create NAME`"),
        (("token", "carol"), "user 'carol' is inactive: no token is issued"),
        (("token", "mallory"), "user 'mallory' is banned from this site: no token is issued"),
        (("token", "alice", "--ttl", "0"), "--ttl must be a number of seconds from 1 to 2592000"),
        (("token", "alice", "--ttl", "2592001"), "--ttl must be a number of seconds from 1"),
        (("token", "alice", "--ttl", "1.5"), "'1.5' is not a number of seconds"),
        (("token", "alice", "--ttl", "-5"), "'-5' is not a number of seconds"),
        (("token", os.fsdecode(b"caf\xe9")), "contains a lone surrogate"),
    ],
)
def test_token_errors_are_one_line(site: Path, args: tuple[str, ...], expected: str) -> None:
    result = run(site, *args)
    assert result.stdout == ""
    line = one_line(result, 2)
    assert expected in line, line


# -- roomcast manage ------------------------------------------------------------------------


def test_manage_createsuperuser_and_shell(tmp_path: Path) -> None:
    """The site's own manage.py: a superuser, and a shell that sees what the commands made.
    On a site whose tables do not exist yet, it says how to create them."""
    createsuperuser = ("manage", "createsuperuser", "--noinput", "--username", "root")
    env = {"DJANGO_SUPERUSER_PASSWORD": "pw-for-root"}
    line = one_line(run(tmp_path, *createsuperuser, env=env), 2)
    assert line.startswith(f"roomcast manage: the database sqlite:///{tmp_path}/data/db.sqlite3 ")
    assert "has no tables yet (no such table: auth_user)" in line
    assert "`roomcast manage migrate`" in line
    ok(run(tmp_path, "manage", "migrate", "-v", "0"))
    result = run(tmp_path, *createsuperuser, "--email", "r@x.org", env=env)
    assert result.returncode == 0, result.stderr
    ok(run(tmp_path, "room", "create", "board", "--private"))
    out = shell(
        tmp_path,
        "from django.contrib.auth.models import User; from roomcast.models import Room; "
        "u = User.objects.get(username='root'); "
        "print(u.is_superuser, u.check_password('pw-for-root'), Room.objects.get().visibility)",
    )
    assert out == "True True private\n"


# -- the same on PostgreSQL ------------------------------------------------------------------


@pytest.mark.postgres
def test_the_commands_work_on_postgresql(tmp_path: Path, postgres_database: str) -> None:
    """--database (and ROOMCAST_DATABASE_URL) point the commands at the servers' database."""
    user, room = f"u{uuid.uuid4().hex[:8]}", f"r-{uuid.uuid4().hex[:8]}"
    ok(run(tmp_path, "user", "create", user, "--database", postgres_database))
    env = {"ROOMCAST_DATABASE_URL": postgres_database}
    ok(run(tmp_path, "room", "create", room, "--private", env=env))
    ok(run(tmp_path, "room", "members", room, "add", user, "--admin", env=env))
    shown = json.loads(ok(run(tmp_path, "room", "show", room, "--json", env=env)))
    assert shown["members"] == [{"user": user, "role": "admin"}]
    assert ok(run(tmp_path, "token", user, env=env)).strip()
    assert (
        not (tmp_path / "data" / "db.sqlite3").exists()
        or os.path.getsize(tmp_path / "data" / "db.sqlite3") == 0
    )  # nothing went to the default SQLite database
