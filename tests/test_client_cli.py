"""``roomcast listen``, ``history`` and ``rooms`` without a server: their printing, their
one-line usage errors and exit codes. With a server: tests/e2e/test_cli_listen.py and
tests/e2e/test_client_cli.py.
"""

from __future__ import annotations

import pytest

from roomcast.cli import main
from roomcast.cli._reading import format_frame, safe
from tests.conftest import free_port

TS = "2026-11-29T09:30:00.123Z"


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Times print in local time: make it UTC, and no token or key from outside."""
    import time

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    for name in ("ROOMCAST_TOKEN", "ROOMCAST_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("frame", "line"),
    [
        (
            {"type": "message", "seq": 12, "message": "hello", "user": "alice", "ts": TS},
            "[12] 2026-11-29 09:30:00 alice: hello",
        ),
        (
            {"type": "message", "seq": 13, "message": "Deploy", "user": None, "kind": "system",
             "ts": TS},
            "[13] 2026-11-29 09:30:00 system: Deploy",
        ),
        (
            {"type": "message", "seq": 1, "message": "hi", "user": None, "kind": "chat"},
            "[1] ? anonymous: hi",
        ),
        (
            {"type": "message", "seq": 12, "message": "fixed", "user": "alice", "ts": TS,
             "edited": TS},
            "[12] 2026-11-29 09:30:00 alice: fixed (edited)",
        ),
        (
            {"type": "message", "seq": 12, "message": "", "user": "alice", "ts": TS,
             "deleted": True},
            "[12] 2026-11-29 09:30:00 alice: (deleted)",
        ),
        (
            {"type": "edit", "seq": 14, "target": 12, "message": "new", "user": "alice", "ts": TS},
            "[14] 2026-11-29 09:30:00 alice edited [12]: new",
        ),
        (
            {"type": "edit", "seq": 14, "target": 12, "message": "", "user": "alice", "ts": TS,
             "deleted": True},
            "[14] 2026-11-29 09:30:00 alice edited [12] (text deleted since)",
        ),
        (
            {"type": "delete", "seq": 15, "target": 12, "user": "mod", "ts": TS},
            "[15] 2026-11-29 09:30:00 mod deleted [12]",
        ),
        ({"type": "message", "message": "ephemeral", "ts": "not a time"}, "? anonymous: ephemeral"),
        ({"type": "typing", "room": "lobby", "user": "bob"}, None),
    ],
)  # fmt: skip
def test_format_frame_prints_messages_edits_and_deletes(frame: dict, line: str | None) -> None:
    """One line per message, edit or delete (seq, local time, who, what); None for
    other frames."""
    assert format_frame(frame) == line


def test_safe_escapes_what_could_drive_a_terminal() -> None:
    """Control characters and bidirectional overrides are escaped; lines after the
    first are indented; other text (tabs, emoji, any script) is kept."""
    assert safe("\x1b[2Jred\u202eevil\x9b") == "\\x1b[2Jred\\u202eevil\\x9b"
    assert safe("one\ntwo") == "one\n    two"
    assert safe("tab\there 👩🏽‍💻 技术") == "tab\there 👩🏽‍💻 技术"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("listen", "a/b"), "roomcast listen: ROOM 'a/b': Room names cannot contain '/'."),
        (("listen", "lobby", "--since", "-1"), "argument --since: '-1' is not a seq"),
        (("listen", "lobby", "--token", "t", "--user", "u"), "give --token or --user, not both"),
        (("listen", "lobby", "--token", "two words"), "--token is not a token"),
        (("listen", "lobby", "--server", "ftp://x"), "is not an http:// or https:// URL"),
        (("history", "lobby", "--limit", "0"), "argument --limit: '0' is not a number from 1"),
        (("history", "lobby", "--before", "x"), "argument --before: 'x' is not a seq"),
        (("rooms",), "whose rooms? Pass a user's --token"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], expected: str
) -> None:
    """Wrong input is one line on stderr and exit code 2, before any connection."""
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err and err.count("\n") == 1, err


def test_no_server_is_exit_code_1(capsys: pytest.CaptureFixture[str]) -> None:
    """listen, history and rooms with no server at --server: one line, exit code 1."""
    server = f"http://127.0.0.1:{free_port()}"
    assert main(["listen", "lobby", "--server", server]) == 1
    assert f"cannot connect to ws://{server[7:]}/ws/" in capsys.readouterr().err
    assert main(["history", "lobby", "--server", server, "--token", "t"]) == 1
    assert f"no roomcast server at {server}" in capsys.readouterr().err
    assert main(["rooms", "--server", server, "--token", "t", "--user", "alice"]) == 1
    assert f"no roomcast server at {server}" in capsys.readouterr().err
