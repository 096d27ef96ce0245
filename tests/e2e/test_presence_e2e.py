"""Presence across real ``roomcast serve`` processes through a private Redis (and one
PostgreSQL database): one list for the cluster, joins and leaves on every process, the
HTTP view and ``roomcast.presence.members`` in a third process, and a process killed
with SIGKILL whose users leave everyone's presence within ``PRESENCE_TTL_SECS``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
import uuid
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgres]

#: Short, so that the killed process's users leave soon (the default is 30 s).
TTL_SECS = 4.0


def shell(server: Any, code: str) -> str:
    """Run ``code`` in ``roomcast manage shell`` (a third process); its last output line."""
    result = server.cli("manage", "shell", "--no-imports", "-c", code)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def tokens_for(server: Any, suffix: str, *names: str) -> dict[str, str]:
    """Create users ``names`` (+ ``suffix``, the database lives for the whole run) and
    give each a connection token."""
    code = (
        "import json\n"
        "from django.contrib.auth import get_user_model\n"
        "from roomcast import auth\n"
        "tokens = {}\n"
        f"for name in {list(names)!r}:\n"
        f"    user = get_user_model().objects.create_user(name + {suffix!r})\n"
        "    tokens[name] = auth.issue_token(user)\n"
        "print(json.dumps(tokens))\n"
    )
    return dict(json.loads(shell(server, code)))


def listed(frame: dict[str, Any], suffix: str) -> dict[str, int]:
    """The users of a presence frame (or answer), without the test's suffix."""
    return {u["user"].removesuffix(suffix): u["connections"] for u in frame["users"]}


def presence_api(server: Any, room: str, key: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{server.http_url}/api/rooms/{urllib.request.quote(room, safe='')}/presence",
        headers={"Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


@pytest.mark.parametrize("layer", ["pubsub", "core"])
async def test_presence_across_processes_and_a_killed_one(cluster, sockets, layer):
    """Users on two processes see one list (connections summed), joins and leaves from
    both; the HTTP view and roomcast.presence.members in a third process agree; after
    SIGKILL to one process its users leave the other's presence with leave frames,
    within PRESENCE_TTL_SECS."""
    a, b = cluster(
        2,
        layer,
        ROOMCAST_PRESENCE_TTL_SECS=str(TTL_SECS),
        ROOMCAST_PRESENCE_BATCH_SECS="0.05",
    )
    suffix = "-" + uuid.uuid4().hex[:6]
    room = f"présence {suffix}"
    tokens = await asyncio.to_thread(tokens_for, a, suffix, "alice", "bob", "carol")
    alice = await sockets(a, tokens["alice"])
    assert listed(await alice.subscribe(room), suffix) == {"alice": 1}
    bob = await sockets(b, tokens["bob"])
    assert listed(await bob.subscribe(room), suffix) == {"alice": 1, "bob": 1}
    assert await alice.next_of("join") == {"type": "join", "room": room, "user": "bob" + suffix}

    # A second tab of bob's, on the other process: no join, two connections.
    bob_again = await sockets(a, tokens["bob"])
    await bob_again.subscribe(room)
    carol = await sockets(b, tokens["carol"])
    await carol.subscribe(room)
    assert (await alice.next_of("join"))["user"] == "carol" + suffix  # not bob again
    await alice.send(type="presence", room=room)
    assert listed(await alice.next_of("presence"), suffix) == {"alice": 1, "bob": 2, "carol": 1}

    # Asked from elsewhere: the HTTP view of either process, and a third process.
    api_key = (a.data_dir / "api_key").read_text().strip()
    for server in (a, b):
        answer = await asyncio.to_thread(presence_api, server, room, api_key)
        assert listed(answer, suffix) == {"alice": 1, "bob": 2, "carol": 1}
        assert answer["count"] == 3 and answer["anonymous"] == 0
    code = (
        f"from roomcast import presence; import json; print(json.dumps(presence.members({room!r})))"
    )
    assert listed(json.loads(await asyncio.to_thread(shell, a, code)), suffix) == {
        "alice": 1,
        "bob": 2,
        "carol": 1,
    }

    # Process b dies without a word: carol (only there) leaves; bob keeps his other tab.
    killed_at = time.monotonic()
    b.proc.send_signal(signal.SIGKILL)
    b.proc.wait()
    assert await alice.next_of("leave", timeout=TTL_SECS * 5) == {
        "type": "leave",
        "room": room,
        "user": "carol" + suffix,
    }
    took = time.monotonic() - killed_at
    assert took <= TTL_SECS, f"leave came {took:.1f} s after the kill (TTL {TTL_SECS} s)"
    await alice.send(type="presence", room=room)
    assert listed(await alice.next_of("presence"), suffix) == {"alice": 1, "bob": 1}
    answer = await asyncio.to_thread(presence_api, a, room, api_key)
    assert listed(answer, suffix) == {"alice": 1, "bob": 1}


async def test_a_process_shutting_down_makes_its_users_leave_at_once(cluster, sockets):
    """SIGTERM: the stopping process deletes its entries and says so; its users leave the
    other process's presence at once, without waiting for the TTL (30 s here)."""
    a, b = cluster(2, ROOMCAST_PRESENCE_BATCH_SECS="0.05")
    suffix = "-" + uuid.uuid4().hex[:6]
    room = f"shutdown {suffix}"
    tokens = await asyncio.to_thread(tokens_for, a, suffix, "alice", "bob")
    alice = await sockets(a, tokens["alice"])
    await alice.subscribe(room)
    bob = await sockets(b, tokens["bob"])
    await bob.subscribe(room)
    assert (await alice.next_of("join"))["user"] == "bob" + suffix
    stopping = asyncio.create_task(asyncio.to_thread(b.stop))
    # Through the TTL, b's heartbeat (2/3 of 30 s, renewed every 10 s) would outlive this.
    assert await alice.next_of("leave", timeout=8) == {
        "type": "leave",
        "room": room,
        "user": "bob" + suffix,
    }
    await stopping
