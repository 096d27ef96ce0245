"""The multi-room socket across two ``roomcast serve`` processes through a private Redis
(and one PostgreSQL database): typing, a user's own channel, read cursors and a room
taken away from one subscription while the socket's other rooms go on.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from tests.e2e.test_presence_e2e import shell, tokens_for

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgres]


async def quiet_of(socket: Any, kind: str, seconds: float) -> bool:
    """Whether no frame of ``kind`` arrives within ``seconds`` (others are skipped)."""
    try:
        await socket.next_of(kind, timeout=seconds)
    except TimeoutError:
        return True
    return False


async def test_typing_user_channel_cursors_and_revocation_across_processes(cluster, sockets):
    a, b = cluster(2, ROOMCAST_PRESENCE_BATCH_SECS="0.05")
    suffix = "-" + uuid.uuid4().hex[:6]
    lobby, board = f"lobby {suffix}", f"board {suffix}"
    tokens = await asyncio.to_thread(tokens_for, a, suffix, "alice", "bob")
    alice = await sockets(a, tokens["alice"])
    bob_b = await sockets(b, tokens["bob"])  # bob's laptop, on the other process
    bob_a = await sockets(a, tokens["bob"])  # and his phone, on alice's
    for socket in (alice, bob_b, bob_a):
        await socket.subscribe(lobby)
        await socket.subscribe(board)

    # Typing crosses processes, to the other user only.
    await alice.send(type="typing", room=lobby)
    for bob in (bob_b, bob_a):
        assert await bob.next_of("typing") == {
            "type": "typing",
            "room": lobby,
            "user": "alice" + suffix,
        }
    assert await quiet_of(alice, "typing", 0.5)

    # The user's own channel: a push from a third process reaches both of bob's sockets.
    code = (
        "from roomcast import push; "
        f"print(push.send_to_user('bob{suffix}', 'your export is ready').seq)"
    )
    seq = int(await asyncio.to_thread(shell, a, code))
    for bob in (bob_b, bob_a):
        frame = await bob.next_of("user_message")
        assert (frame["seq"], frame["message"]) == (seq, "your export is ready")
    assert await quiet_of(alice, "user_message", 0.3)

    # Read cursors: bob reads on his laptop, his phone on the other process learns it.
    for text in ("one", "two", "three"):
        await alice.send(type="message", room=lobby, message=text)
        await alice.next_of("ack")
    for bob in (bob_b, bob_a):
        while (await bob.next_of("message"))["message"] != "three":
            pass
    await bob_b.send(type="read", room=lobby, seq=2)
    for bob in (bob_b, bob_a):
        unread = await bob.next_of("unread")
        assert (unread["room"], unread["read_seq"], unread["unread"]) == (lobby, 2, 1)

    # The board is made private with alice alone in it: bob's subscriptions to it end
    # with 4403 on both processes; his lobby goes on.
    code = (
        "from roomcast import rooms; "
        f"rooms.create_room({board!r}); "
        f"rooms.add_members({board!r}, ['alice{suffix}']); "
        f"rooms.set_visibility({board!r}, 'private'); print('ok')"
    )
    await asyncio.to_thread(shell, a, code)
    for bob in (bob_b, bob_a):
        ended = await bob.next_of("unsubscribed", timeout=10)
        assert (ended["room"], ended["code"]) == (board, 4403)
    await alice.send(type="message", room=lobby, message="still here?")
    assert (await alice.next_of("ack"))["room"] == lobby
    for bob in (bob_b, bob_a):
        assert (await bob.next_of("message"))["message"] == "still here?"
    await alice.send(type="message", room=board, message="members only")
    assert (await alice.next_of("ack"))["room"] == board
    assert await quiet_of(bob_b, "message", 0.5)
