"""``roomcast serve``'s data dir: its user's alone, whatever the umask.

It holds the SQLite database (every message, and the ``django_session`` table, whose
keys are logins), the generated ``SECRET_KEY`` (which signs sessions) and the push API
key. The directory is kept 0700 and these files 0600. New files are created so (the
database is created empty before SQLite opens it: SQLite gives its ``-wal``, ``-shm``
and ``-journal`` files the database's own mode); an earlier version's data dir, made
under umask 022 (0755, files 0644), is tightened at start-up (group and other bits
cleared), and the first process to see it says so on stderr. A directory anyone may
write to (``/tmp``), or an open one that belongs to someone else, is not roomcast's to
close: start-up fails, saying what to do.

Layer: the standalone site's settings; stdlib, and Django's ImproperlyConfigured.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

DIR_MODE = 0o700
FILE_MODE = 0o600

#: Files roomcast serve keeps in its data dir; only these are tightened, so a data dir
#: pointed at a directory with other content leaves that content alone.
KEPT_FILES = (
    "db.sqlite3",
    "db.sqlite3-wal",
    "db.sqlite3-shm",
    "db.sqlite3-journal",
    "secret_key",
    "api_key",
)

#: Permission bits that let users other than the owner in.
_OPEN_BITS = stat.S_IRWXG | stat.S_IRWXO


def private_data_dir(path: Path) -> str | None:
    """Create ``path`` 0700, or make an existing one and its :data:`KEPT_FILES` private.

    Returns:
        What was tightened, one line for the operator, or None if nothing was open.

    Raises:
        ImproperlyConfigured: ``path`` is not a directory, others may write to it, it
            belongs to another user, or a mode could not be changed.
    """
    try:
        path.mkdir(mode=DIR_MODE, parents=True)
    except FileExistsError:
        pass
    else:
        _chmod(path, DIR_MODE)  # mkdir's mode is less the umask: 0700 whatever it is
        return None
    info = path.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise ImproperlyConfigured(f"ROOMCAST_DATA_DIR={str(path)!r} is not a directory.")
    shared = info.st_mode & (stat.S_IWOTH | stat.S_ISVTX)
    if shared or (info.st_mode & _OPEN_BITS and info.st_uid != os.geteuid()):
        raise ImproperlyConfigured(
            f"ROOMCAST_DATA_DIR={str(path)!r} is shared (mode {_octal(info.st_mode)}, owner "
            f"uid {info.st_uid}): it holds the messages, sessions and keys, which roomcast "
            "keeps from other users, and it will not close a directory others use. Point "
            "ROOMCAST_DATA_DIR at a directory of its own."
        )
    tightened = []
    if info.st_mode & _OPEN_BITS:
        tightened.append(_tighten(path, info.st_mode, "the directory"))
    for name in KEPT_FILES:
        file = path / name
        try:
            file_info = file.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISREG(file_info.st_mode) and file_info.st_mode & _OPEN_BITS:
            tightened.append(_tighten(file, file_info.st_mode, name))
    if not tightened:
        return None
    return (
        f"the data dir {path} was readable by other users, and holds the messages, sessions "
        f"and keys; made it private: {', '.join(tightened)}."
    )


def create_private_file(path: Path) -> None:
    """Create ``path`` empty and 0600 if it does not exist (for SQLite to fill)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    except OSError:
        return  # a directory that does not exist: SQLite's own error says so, as before
    os.close(fd)


def _tighten(path: Path, mode: int, name: str) -> str:
    """Clear the group and other bits of ``path``; say what changed."""
    private = stat.S_IMODE(mode) & ~_OPEN_BITS
    _chmod(path, private)
    return f"{name} {_octal(mode)} -> {private:04o}"


def _chmod(path: Path, mode: int) -> None:
    try:
        os.chmod(path, mode)
    except OSError as exc:
        raise ImproperlyConfigured(
            f"{path} is open to other users and roomcast could not make it private ({exc}): "
            f"run chmod {mode:o} {path}"
        ) from None


def _octal(mode: int) -> str:
    return f"{stat.S_IMODE(mode):04o}"
