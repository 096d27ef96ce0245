"""Edits and deletes on real ``roomcast serve`` processes through Redis and PostgreSQL:
made over HTTP on one process, seen live on the other, replayed by ``since``, and shown
in their final state in history."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import urllib.request
import uuid
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgres]


def api(server: Any, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """``method path`` on ``server`` with its API key: (status, JSON answer)."""
    key = (server.data_dir / "api_key").read_text().strip()
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{server.http_url}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_an_edit_on_one_process_reaches_the_other_and_replays(cluster, clients):
    a, b = cluster(2)
    room = f"edits {uuid.uuid4().hex[:6]}"
    path = f"/api/rooms/{urllib.parse.quote(room, safe='')}/messages"
    watcher = await clients(a.ws_url(room))
    await watcher.recv_type("joined")
    for text in ("first", "second"):
        status, _ = await asyncio.to_thread(api, b, "POST", path, {"message": text})
        assert status == 201
    assert [f["seq"] for f in await watcher.messages(2)] == [1, 2]
    status, answer = await asyncio.to_thread(api, b, "PATCH", f"{path}/1", {"message": "1st"})
    assert (status, answer) == (200, {"room": room, "seq": 3, "target": 1})
    edit = await watcher.recv_type("edit")
    assert (edit["room"], edit["seq"], edit["target"], edit["message"]) == (room, 3, 1, "1st")
    status, answer = await asyncio.to_thread(api, a, "DELETE", f"{path}/2")
    assert (status, answer["seq"]) == (200, 4)
    assert (await watcher.recv_type("delete"))["target"] == 2
    status, answer = await asyncio.to_thread(api, a, "DELETE", f"{path}/2")
    assert (status, answer["error"]) == (404, "not_found")

    returning = await clients(b.ws_url(room, since=1))
    assert (await returning.recv_type("joined"))["recovered"] is True
    replay = [await returning.recv() for _ in range(3)]
    assert [(f["type"], f["seq"]) for f in replay] == [("message", 2), ("edit", 3), ("delete", 4)]
    assert replay[0]["deleted"] is True and replay[0]["message"] == ""

    status, page = await asyncio.to_thread(api, a, "GET", path)
    messages = page["messages"]
    assert status == 200 and [m["type"] for m in messages] == ["message"] * 2 + ["edit", "delete"]
    assert messages[0]["message"] == "1st" and messages[0]["edited"] == edit["ts"]
    assert messages[1]["deleted"] is True
