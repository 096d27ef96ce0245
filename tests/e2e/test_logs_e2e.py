"""``roomcast serve --log-format json`` and the access log, on a real server process.

Every line it writes, on either stream, is one JSON object; the access log has a line per
HTTP request and per WebSocket session (room, user, close code, duration, frames in);
tokens and session cookies stay blanked in JSON as in text. The text format's lines are
tested in ``test_cli_serve.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.e2e import test_cli_serve
from tests.e2e.test_cli_serve import Serve

pytestmark = pytest.mark.e2e

#: test_cli_serve's fixture: ``serve(*args, env=...)`` starts a ``Serve``.
serve = test_cli_serve.serve

#: What a test puts where only a secret belongs: it must never reach the log.
SECRET = "s3cr3t-never-logged"


def objects(log: str) -> list[dict[str, Any]]:
    """Each line of ``log`` as a JSON object (failing on a line that is not one)."""
    out = []
    for line in log.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert isinstance(obj, dict) and {"time", "level", "logger", "message"} <= obj.keys()
        out.append(obj)
    return out


def wait_for_object(server: Serve, **match: Any) -> dict[str, Any]:
    """The first logged object whose fields include ``match`` (waiting for it: lines
    reach the file as the server writes them)."""
    deadline = time.monotonic() + 10
    while True:
        for obj in objects(server.log()):
            if all(obj.get(k) == v for k, v in match.items()):
                return obj
        assert time.monotonic() < deadline, f"no line with {match}:\n{server.log()}"
        time.sleep(0.05)


async def _session(server: Serve, room: str, *, headers: dict[str, str] | None = None) -> None:
    """A room socket that joins, posts one message, reads its ack and closes with 1000."""
    url = f"ws://127.0.0.1:{server.port}/ws/chat/{room}/"
    async with websockets.connect(
        url, subprotocols=["roomcast.v1"], additional_headers=headers, open_timeout=10
    ) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "joined"
        await ws.send(json.dumps({"type": "message", "message": "hi", "client_id": "c1"}))
        while json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] != "ack":
            pass


async def test_json_at_debug_is_one_object_per_line_and_keeps_secrets_out(
    serve, tmp_path: Path
) -> None:
    """Everything a debug run writes, start-up to shutdown, parses as JSON objects; the
    access lines carry their fields; the token and cookie sent are not anywhere."""
    (tmp_path / "data").mkdir(mode=0o755)  # made private at start-up: that line too
    os.chmod(tmp_path / "data", 0o755)
    server = serve("--log-format", "json", "--log-level", "debug")
    assert (await asyncio.to_thread(server.get, "/chat/"))[0] == 200
    assert (await asyncio.to_thread(server.get, f"/nope?token={SECRET}"))[0] == 404
    await _session(server, "lobby", headers={"Cookie": f"sessionid={SECRET}"})
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(
            f"ws://127.0.0.1:{server.port}/ws/chat/lobby/?token={SECRET}",
            additional_headers={"Origin": "https://evil.example"},
            open_timeout=10,
        )
    session = wait_for_object(server, logger="roomcast.access", path="/ws/chat/lobby/")
    assert session["level"] == "INFO" and session["room"] == "lobby"
    assert session["user"].startswith("guest-") and session["path"] == "/ws/chat/lobby/"
    assert (session["code"], session["frames_in"]) == (1000, 1)
    assert session["client"].startswith("127.0.0.1:") and session["duration_ms"] >= 0
    request = wait_for_object(server, logger="roomcast.access", path="/chat/")
    assert (request["method"], request["status"], request["level"]) == ("GET", 200, "INFO")
    assert request["client"] == "127.0.0.1" and request["duration_ms"] >= 0
    missing = wait_for_object(server, logger="roomcast.access", status=404)
    assert missing["path"] == "/nope?token=[redacted]"
    # uvicorn's own request lines: DEBUG, beside roomcast's.
    assert wait_for_object(server, logger="uvicorn.access", path="/chat/")["level"] == "DEBUG"
    refused = next(
        o
        for o in objects(server.log())
        if o["message"].endswith('"WebSocket /ws/chat/lobby/?token=[redacted]" 403')
    )
    assert refused["level"] == "INFO"
    log = server.stop()
    assert SECRET not in log
    lines = objects(log)
    messages = [o["message"] for o in lines]
    assert any(m.startswith("roomcast serving on http://") for m in messages)
    assert any(m.startswith("roomcast: the data dir") for m in messages)
    assert "Finished server process" in messages[-1]
    assert any(o["level"] == "DEBUG" and o["message"] == "connection open" for o in lines)


async def test_the_access_log_from_the_environment_has_sessions_not_connections(serve) -> None:
    """ROOMCAST_LOG_FORMAT=json and ROOMCAST_ACCESS_LOG=1 at the default level: a line per
    request and per session, none per connection (those are DEBUG)."""
    server = serve(
        env={
            "ROOMCAST_LOG_FORMAT": "json",
            "ROOMCAST_ACCESS_LOG": "1",
            "ROOMCAST_HISTORY_CUONT": "5",  # a misspelling: its warning is JSON too
        }
    )
    await _session(server, "café 2")
    await _session(server, "café 2")
    assert (await asyncio.to_thread(server.get, "/chat/"))[0] == 200
    wait_for_object(server, logger="roomcast.access", path="/chat/")
    log = server.stop()
    lines = objects(log)
    sessions = [o for o in lines if o["logger"] == "roomcast.access" and "code" in o]
    assert [(o["room"], o["code"], o["frames_in"]) for o in sessions] == [("café 2", 1000, 1)] * 2
    assert all(o["level"] != "DEBUG" for o in lines)
    (typo,) = [o for o in lines if "ROOMCAST_HISTORY_CUONT" in o["message"]]
    assert (typo["level"], typo["logger"]) == ("WARNING", "roomcast.serve"), typo
    assert "Did you mean ROOMCAST_HISTORY_COUNT?" in typo["message"]
    assert not any("connection open" in o["message"] or "[accepted]" in o["message"] for o in lines)
