"""``roomcast serve``'s data dir is its user's alone, whatever the umask: the directory
0700, the SQLite database (every message, and the django_session table: a session key is
a login) with its -wal and -shm files, the secret key and the API key 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

#: What a data dir holds once ``roomcast serve`` has stored messages (WAL mode: the -wal
#: and -shm files exist while the server runs).
KEPT = {"db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm", "secret_key", "api_key"}

#: What roomcast serve says when it makes an earlier version's open data dir private.
TIGHTENED = "readable by other users"


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common umask, under which files are created 0644 and directories 0755; the
    server processes inherit it."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def modes(data_dir: Path) -> dict[str, int]:
    """The permission bits of the data dir's files roomcast keeps, by name."""
    return {p.name: mode(p) for p in data_dir.iterdir() if p.name in KEPT}


async def store_messages(server, clients, room: str, count: int) -> None:
    client = await clients(server.ws_url(room))
    await client.recv_type("joined")
    for n in range(count):
        await client.send({"type": "message", "message": f"m{n}", "client_id": f"c{n}"})
    await client.messages(count)


async def test_a_new_data_dir_is_private_under_umask_022(serve, clients, tmp_path, umask_022):
    """A first run creates the directory 0700 and every file 0600, -wal and -shm too."""
    data_dir = tmp_path / "home" / ".roomcast"
    server = serve(ROOMCAST_DATA_DIR=str(data_dir))
    await store_messages(server, clients, "private", 3)
    assert (data_dir / "db.sqlite3-wal").stat().st_size > 0  # the messages are in there
    assert mode(data_dir) == 0o700
    assert modes(data_dir) == dict.fromkeys(KEPT, 0o600)
    assert TIGHTENED not in server.log()  # nothing was open to tighten


async def test_an_open_data_dir_of_an_earlier_version_is_tightened_once(
    serve, clients, tmp_path, umask_022
):
    """A data dir left 0755 with 0644 files is made 0700/0600 at start-up, said once."""
    data_dir = tmp_path / "old"
    server = serve(ROOMCAST_DATA_DIR=str(data_dir))
    await store_messages(server, clients, "kept", 2)
    server.stop()
    # As an earlier version left it under umask 022. A stopped server checkpoints and
    # removes the WAL and SHM files; one that was killed leaves them: as if it had been.
    for name in ("db.sqlite3-wal", "db.sqlite3-shm"):
        (data_dir / name).touch()
    os.chmod(data_dir, 0o755)
    for path in data_dir.iterdir():
        os.chmod(path, 0o644)
    assert "db.sqlite3-shm" in modes(data_dir)

    server.start()
    client = await clients(server.ws_url("kept"))
    assert (await client.recv_type("joined"))["seq"] == 2  # the messages are still there
    assert mode(data_dir) == 0o700
    assert modes(data_dir) == dict.fromkeys(KEPT, 0o600)
    said = [line for line in server.log().splitlines() if TIGHTENED in line]
    assert len(said) == 1 and str(data_dir) in said[0] and "0700" in said[0], said
    server.stop()
    server.start()
    assert len([line for line in server.log().splitlines() if TIGHTENED in line]) == 1


def test_a_shared_directory_is_refused_not_chmodded(serve, tmp_path, umask_022):
    """A data dir other users may write to (like /tmp) is not roomcast's to close: the
    server refuses to start, saying what to do, and leaves its mode alone."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    with pytest.raises(RuntimeError, match="did not start") as info:
        serve(ROOMCAST_DATA_DIR=str(shared))
    assert "ROOMCAST_DATA_DIR" in str(info.value) and "directory of its own" in str(info.value)
    assert mode(shared) == 0o1777
