"""roomcast serve's data dir (``roomcast.server.data_dir``): private whatever the umask.

tests/e2e/test_data_dir.py checks the same on real ``roomcast serve`` runs.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from roomcast.server.data_dir import KEPT_FILES, create_private_file, private_data_dir


@pytest.fixture(params=[0o022, 0o002, 0o000])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Common umasks: 022, 002 (Debian's user private groups), and none at all."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_new_data_dir_is_0700(tmp_path, umask):
    """Created with its parents; only the data dir itself is made private."""
    data_dir = tmp_path / "a" / ".roomcast"
    assert private_data_dir(data_dir) is None
    assert mode(data_dir) == 0o700
    assert mode(tmp_path / "a") == 0o777 & ~umask


def test_the_database_sqlite_creates_gets_its_files_mode(tmp_path, umask):
    """Created 0600 before SQLite opens it, the database's -wal and -shm are 0600 too."""
    db = tmp_path / "db.sqlite3"
    create_private_file(db)
    connection = sqlite3.connect(db)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("CREATE TABLE message (text TEXT)")
    connection.execute("INSERT INTO message VALUES ('private')")
    connection.commit()
    try:
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == ["db.sqlite3", "db.sqlite3-shm", "db.sqlite3-wal"]
        assert {mode(tmp_path / n) for n in names} == {0o600}
    finally:
        connection.close()


def test_create_private_file_leaves_what_exists(tmp_path):
    """An existing database keeps its content and mode; a missing directory is SQLite's
    to report, as before."""
    db = tmp_path / "db.sqlite3"
    db.write_text("data")
    db.chmod(0o640)
    create_private_file(db)
    assert (db.read_text(), mode(db)) == ("data", 0o640)
    create_private_file(tmp_path / "missing" / "db.sqlite3")
    assert not (tmp_path / "missing").exists()


def test_an_open_data_dir_is_tightened_and_said_once(tmp_path):
    """An earlier version's 0755/0644 data dir: group and other bits cleared, the kept
    files only, one line that names the directory and each change."""
    data_dir = tmp_path / ".roomcast"
    data_dir.mkdir()
    data_dir.chmod(0o775)  # group-writable: umask 002, the user's own group
    for name in KEPT_FILES:
        (data_dir / name).write_text(name)
        (data_dir / name).chmod(0o644)
    (data_dir / "secret_key").chmod(0o400)  # already private: left as it is
    (data_dir / "notes.txt").write_text("not roomcast's")
    (data_dir / "notes.txt").chmod(0o644)
    outside = tmp_path / "elsewhere"
    outside.write_text("x")
    outside.chmod(0o644)
    (data_dir / "api_key").unlink()
    (data_dir / "api_key").symlink_to(outside)

    said = private_data_dir(data_dir)
    assert said is not None and str(data_dir) in said
    assert "the directory 0775 -> 0700" in said and "db.sqlite3-wal 0644 -> 0600" in said
    assert "secret_key" not in said and "api_key" not in said and "notes" not in said
    assert mode(data_dir) == 0o700
    for name in set(KEPT_FILES) - {"api_key"}:
        assert mode(data_dir / name) == (0o400 if name == "secret_key" else 0o600), name
    assert mode(data_dir / "notes.txt") == 0o644
    assert mode(outside) == 0o644  # a symlink is not followed
    assert private_data_dir(data_dir) is None  # nothing left to say


@pytest.mark.parametrize("shared_mode", [0o1777, 0o777, 0o757])
def test_a_directory_others_may_write_to_is_refused_not_closed(tmp_path, shared_mode):
    """/tmp-like directories are not roomcast's to close: an error saying what to do."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(shared_mode)
    with pytest.raises(ImproperlyConfigured, match="a directory of its own"):
        private_data_dir(shared)
    assert mode(shared) == shared_mode


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a directory to another user")
def test_an_open_directory_of_another_user_is_refused(tmp_path):
    """root could chmod it, but it is someone else's: an error, mode unchanged."""
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    theirs.chmod(0o755)
    os.chown(theirs, 12345, 12345)
    with pytest.raises(ImproperlyConfigured, match="owner uid 12345"):
        private_data_dir(theirs)
    assert mode(theirs) == 0o755
    theirs.chmod(0o700)  # closed already: nothing to change, so it is used as it is
    assert private_data_dir(theirs) is None


def test_a_file_in_place_of_the_directory_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(ImproperlyConfigured, match="is not a directory"):
        private_data_dir(path)
