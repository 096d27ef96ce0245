"""The hub and Member on their own: joins racing the live stream, bounded buffers.

The hub runs on the real in-memory layer and reads the real (test) database; what the
tests control is timing, through the catch-up callable and the ASGI ``send`` they pass.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.db import database_sync_to_async

from roomcast import fanout, services
from roomcast import hub as hub_module
from roomcast.hub import CONTROL_GROUP, CatchUp, Hub, Member, register_control
from roomcast.protocol import CloseCode

pytestmark = pytest.mark.django_db(transaction=True)


class Socket:
    """An ASGI send callable that records frames; ``block()`` makes sends wait (a slow client)."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.open = asyncio.Event()
        self.open.set()

    async def __call__(self, message: dict) -> None:
        self.sent.append(message)
        await self.open.wait()

    def block(self) -> None:
        self.open.clear()

    @property
    def seqs(self) -> list[int]:
        return [
            json.loads(m["text"]).get("seq") for m in self.sent if m["type"] == "websocket.send"
        ]

    async def wait_for(self, count: int) -> None:
        for _ in range(500):
            if len(self.sent) >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"only {len(self.sent)} of {count} frames were sent: {self.sent!r}")


@pytest.fixture
async def the_hub():
    hub = Hub(fanout.get_layer(), services.DatabaseLoader(), fanout.room_group)
    yield hub
    await hub.close()


async def store(room: str, text: str):
    return await database_sync_to_async(services.store_message)(room, text)


async def test_join_drops_live_frames_the_catch_up_already_sent(the_hub):
    """A message stored before the catch-up read but delivered live after it is sent once."""
    socket = Socket()
    member = Member(socket, room="race", max_frames=100, v1=True)
    late = None

    async def catch_up() -> CatchUp:
        nonlocal late
        late = await store("race", "stored before the read")
        last_seq, frames, _ = await database_sync_to_async(services.read_catch_up)("race", None)
        await fanout.publish("race", services.layer_message(late))  # arrives while holding
        await asyncio.sleep(0.05)
        return CatchUp(preface=[], frames=frames, last_seq=last_seq)

    await the_hub.join(member, catch_up)
    await socket.wait_for(1)
    await asyncio.sleep(0.05)
    assert socket.seqs == [1]


async def test_join_keeps_live_frames_newer_than_the_catch_up(the_hub):
    """Messages published while a member reads its catch-up follow it, in order, once."""
    socket = Socket()
    member = Member(socket, room="race2", max_frames=100, v1=True)
    await services.apost_message("race2", "before")

    async def catch_up() -> CatchUp:
        last_seq, frames, _ = await database_sync_to_async(services.read_catch_up)("race2", None)
        for text in ("during 1", "during 2"):
            await services.apost_message("race2", text)
        await asyncio.sleep(0.05)
        return CatchUp(preface=[], frames=frames, last_seq=last_seq)

    await the_hub.join(member, catch_up)
    await services.apost_message("race2", "after")
    await socket.wait_for(4)
    assert socket.seqs == [1, 2, 3, 4]


async def test_slow_member_is_closed_with_1013_and_others_keep_going(the_hub):
    """A member whose buffer overflows is closed with TRY_AGAIN_LATER; the room is not held up."""
    slow_socket, fast_socket = Socket(), Socket()
    slow = Member(slow_socket, room="busy", max_frames=5, v1=True)
    fast = Member(fast_socket, room="busy", max_frames=50, v1=True)
    empty = CatchUp(preface=[], frames=[], last_seq=0)

    async def nothing() -> CatchUp:
        return empty

    await the_hub.join(slow, nothing)
    await the_hub.join(fast, nothing)
    slow_socket.block()
    for i in range(10):
        await services.apost_message("busy", f"m{i}")
    await fast_socket.wait_for(10)
    assert fast_socket.seqs == list(range(1, 11))
    assert slow.closed
    closes = [m for m in slow_socket.sent if m["type"] == "websocket.close"]
    assert closes == [
        {
            "type": "websocket.close",
            "code": CloseCode.TRY_AGAIN_LATER,
            "reason": closes[0]["reason"],
        }
    ]
    # The slow socket got at most what fit before the close: no frame after it.
    assert slow_socket.sent[-1]["type"] == "websocket.close"


async def test_slow_member_is_closed_at_its_byte_bound(the_hub):
    """Bytes bound the buffer too: frames under the frame bound but over max_bytes close
    the socket with 1013, and nothing is sent after the close."""
    socket = Socket()
    member = Member(socket, room="bytes", max_frames=100, max_bytes=2_000, v1=True)

    async def nothing() -> CatchUp:
        return CatchUp(preface=[], frames=[], last_seq=0)

    await the_hub.join(member, nothing)
    socket.block()
    text = "é" * 300  # 600 bytes of UTF-8 in 300 characters: bytes are what count
    for i in range(6):
        await services.apost_message("bytes", f"{i} {text}")
    for _ in range(100):
        if member.closed:
            break
        await asyncio.sleep(0.01)
    assert member.closed
    assert socket.sent[-1]["type"] == "websocket.close"
    assert socket.sent[-1]["code"] == CloseCode.TRY_AGAIN_LATER
    assert len(socket.sent) < 6


async def test_a_catch_up_larger_than_the_byte_bound_is_allowed(the_hub):
    """A join's catch-up is allowed on top of max_bytes while it drains (else a replay
    bigger than the bound would close every reconnecting socket, again and again)."""
    socket = Socket()
    member = Member(socket, room="replay", max_frames=100, max_bytes=1_000, v1=True)
    frames = [
        (seq, json.dumps({"type": "message", "seq": seq, "message": "x" * 500}))
        for seq in range(1, 11)
    ]

    async def catch_up() -> CatchUp:
        return CatchUp(preface=[], frames=frames, last_seq=10)

    socket.block()
    await the_hub.join(member, catch_up)
    await asyncio.sleep(0.05)
    assert not member.closed  # 5 KB of catch-up queued against a 1 KB bound
    socket.open.set()
    await socket.wait_for(10)
    assert socket.seqs == list(range(1, 11))
    # Once it is written, the allowance is gone: the bound is max_bytes again.
    socket.block()
    for i in range(4):
        member.deliver(11 + i, json.dumps({"type": "message", "seq": 11 + i, "message": "y" * 500}))
    await asyncio.sleep(0.05)
    assert member.closed


async def test_member_holding_too_long_is_closed(the_hub):
    """Frames held while joining count against the same bound."""
    socket = Socket()
    member = Member(socket, room="held", max_frames=3, v1=True)

    async def slow_catch_up() -> CatchUp:
        for i in range(5):
            await services.apost_message("held", f"m{i}")
        await asyncio.sleep(0.05)
        return CatchUp(preface=[], frames=[], last_seq=0)

    await the_hub.join(member, slow_catch_up)
    await socket.wait_for(1)
    assert member.closed
    assert [m["type"] for m in socket.sent] == ["websocket.close"]


async def test_member_writes_without_a_task_until_a_send_has_to_wait():
    """Sends that complete at once are written inline; one that waits hands over to a task,
    which writes the rest in order; then writing is inline again."""
    socket = Socket()
    member = Member(socket, room="flow", max_frames=100, v1=True)
    member.start(CatchUp(preface=[], frames=[], last_seq=0))
    member.deliver(1, '{"seq":1}')
    assert socket.seqs == [1]  # written before deliver() returned: no task involved
    socket.block()
    for seq in (2, 3, 4):
        member.deliver(seq, f'{{"seq":{seq}}}')
    assert socket.seqs == [1, 2]  # the send of 2 is waiting; 3 and 4 are queued
    assert member.connection._writer is not None
    socket.open.set()
    await socket.wait_for(4)
    await asyncio.sleep(0)
    assert socket.seqs == [1, 2, 3, 4] and member.connection._writer is None
    member.deliver(5, '{"seq":5}')
    assert socket.seqs == [1, 2, 3, 4, 5]


async def test_member_writer_task_is_cancelled_cleanly():
    """Cancelling a waiting writer (the server shutting down) closes the send coroutine."""
    socket = Socket()
    member = Member(socket, room="flow2", max_frames=100, v1=True)
    member.start(CatchUp(preface=[], frames=[], last_seq=0))
    socket.block()
    member.deliver(1, '{"seq":1}')
    writer = member.connection._writer
    assert writer is not None
    writer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writer
    assert member.connection._writer is None


async def test_member_writer_stops_when_the_socket_is_gone():
    """A send that raises OSError (uvicorn's ClientDisconnected) marks the member closed."""

    async def gone(message: dict) -> None:
        raise OSError("client disconnected")

    member = Member(gone, room="x", max_frames=10, v1=True)
    member.start(CatchUp(preface=[], frames=[], last_seq=0))
    member.deliver(1, '{"seq":1}')
    await asyncio.sleep(0.01)
    assert member.closed
    member.deliver(2, '{"seq":2}')  # ignored, no new writer
    await asyncio.sleep(0.01)


async def test_gap_fill_when_many_messages_were_lost(the_hub):
    """A long run of lost layer messages is read back in batches, in order."""
    socket = Socket()
    member = Member(socket, room="bulk", max_frames=2000, v1=True)

    async def nothing() -> CatchUp:
        return CatchUp(preface=[], frames=[], last_seq=0)

    await the_hub.join(member, nothing)
    stored = None
    for i in range(1, 1201):
        stored = await store("bulk", f"m{i}")
    await fanout.publish("bulk", services.layer_message(stored))  # only the last arrives
    await socket.wait_for(1200)
    assert socket.seqs == list(range(1, 1201))


@pytest.fixture
async def unchecked_hub():
    """A hub whose position checks run only when the test calls ``check_positions()``."""
    hub = Hub(
        fanout.get_layer(), services.DatabaseLoader(), fanout.room_group, position_check_secs=3600
    )
    yield hub
    await hub.close()


async def joined(hub: Hub, room: str) -> Socket:
    socket = Socket()

    async def nothing() -> CatchUp:
        return CatchUp(preface=[], frames=[], last_seq=0)

    await hub.join(Member(socket, room=room, max_frames=100, v1=True), nothing)
    return socket


async def test_position_check_delivers_a_message_whose_publish_was_lost(unchecked_hub, caplog):
    """Stored messages that never reached the layer, and no later one, arrive at the second
    check that finds them missing; then the live stream goes on without duplicates."""
    socket = await joined(unchecked_hub, "lost publish")
    await store("lost publish", "stored, never published")
    await store("lost publish", "also never published")
    await unchecked_hub.check_positions()  # seen missing once: may still be in transit
    await asyncio.sleep(0.05)
    assert socket.seqs == []
    await unchecked_hub.check_positions()  # still missing: read from the database
    await socket.wait_for(2)
    assert socket.seqs == [1, 2]
    assert "seqs 1..2 never arrived" in caplog.text
    await services.apost_message("lost publish", "published")
    await socket.wait_for(3)
    await asyncio.sleep(0.05)
    assert socket.seqs == [1, 2, 3]


async def test_position_check_joins_the_group_again_when_messages_stop_arriving(unchecked_hub):
    """A layer that lost the hub's group membership (a Redis restarted empty, under the
    core layer): the check that fills the missing messages also joins the group again,
    so later messages arrive live."""
    socket = await joined(unchecked_hub, "forgotten")
    layer = fanout.get_layer()
    group = fanout.room_group("forgotten")
    channel = unchecked_hub._rooms["forgotten"].channel
    await layer.group_discard(group, channel)  # what an emptied Redis does to it
    stored = await store("forgotten", "sent to nobody")
    await layer.group_send(group, services.layer_message(stored))  # reaches no one
    await unchecked_hub.check_positions()
    await unchecked_hub.check_positions()  # filled from the database, group rejoined
    await socket.wait_for(1)
    for _ in range(100):
        if channel in layer.groups.get(group, {}):
            break
        await asyncio.sleep(0.01)
    assert channel in layer.groups.get(group, {})
    later = await store("forgotten", "live again")
    await layer.group_send(group, services.layer_message(later))
    await socket.wait_for(2)
    assert socket.seqs == [1, 2]


async def test_a_lingering_room_is_position_checked(caplog):
    """An empty room kept subscribed (ROOM_LINGER_SECS) is checked too: a message whose
    publish was lost makes its recent frames stale, so a join reads the database (which
    has it) instead of being answered from them."""
    hub = Hub(
        fanout.get_layer(),
        services.DatabaseLoader(),
        fanout.room_group,
        position_check_secs=3600,
        linger_secs=60,
    )
    try:
        socket = await joined(hub, "idle")
        await services.apost_message("idle", "seen live")
        await socket.wait_for(1)
        hub.leave(hub.members("idle")[0])
        assert hub.recent("idle", None, replay_limit=100) is not None  # lingering
        await store("idle", "stored while nobody was here, never published")
        await hub.check_positions()
        await hub.check_positions()
        for _ in range(100):
            if hub._rooms["idle"].last_seq == 2:
                break
            await asyncio.sleep(0.01)
        assert hub._rooms["idle"].last_seq == 2
        assert hub.recent("idle", None, replay_limit=100) is None  # the database answers
        assert hub.recent("idle", 1, replay_limit=100) is None
    finally:
        await hub.close()


async def test_position_check_leaves_messages_in_transit_alone(unchecked_hub, caplog):
    """A message stored but not yet published at one check is not read back: it arrives
    live before the next check, which then finds nothing missing."""
    socket = await joined(unchecked_hub, "in transit")
    stored = await store("in transit", "slow publish")
    await unchecked_hub.check_positions()
    await fanout.publish("in transit", services.layer_message(stored))
    await socket.wait_for(1)
    await unchecked_hub.check_positions()
    later = await store("in transit", "another slow one")
    await unchecked_hub.check_positions()
    await fanout.publish("in transit", services.layer_message(later))
    await socket.wait_for(2)
    await unchecked_hub.check_positions()
    await asyncio.sleep(0.05)
    assert socket.seqs == [1, 2]
    assert "never arrived" not in caplog.text


async def test_recent_frames_answer_joins_exactly_as_the_database_would(unchecked_hub):
    """The hub's recent frames give the same catch-up as ``read_catch_up``, and defer to
    the database for anything older than they hold or ahead of this process."""
    socket = await joined(unchecked_hub, "recent")
    for i in range(60):
        await services.apost_message("recent", f"m{i}")
    await socket.wait_for(60)
    read = database_sync_to_async(services.read_catch_up)
    answered = []
    for since in (None, 10, 11, 30, 59, 60):
        cached = unchecked_hub.recent("recent", since, replay_limit=500)
        assert cached == await read("recent", since), since
        answered.append(since)
    # Seqs 11..60 are kept (HISTORY_COUNT 50): since=9 needs seq 10, from the database.
    for since in (0, 9, 61):
        assert unchecked_hub.recent("recent", since, replay_limit=500) is None, since
    assert unchecked_hub.recent("recent", 30, replay_limit=20) is None  # past the limit
    assert unchecked_hub.recent("elsewhere", None, replay_limit=500) is None


async def test_recent_frames_stay_contiguous_through_a_gap_fill(unchecked_hub):
    """Messages filled from the database join the recent frames in order."""
    socket = await joined(unchecked_hub, "recent gap")
    await services.apost_message("recent gap", "live 1")
    for i in range(3):
        await store("recent gap", f"lost {i}")  # stored, never published
    await services.apost_message("recent gap", "live 5")  # seq 5 exposes the gap 2..4
    await socket.wait_for(5)
    last_seq, frames, _ = unchecked_hub.recent("recent gap", None, replay_limit=500)
    assert last_seq == 5 and [seq for seq, _ in frames] == [1, 2, 3, 4, 5]


async def test_a_disconnect_with_an_unsendable_code_or_long_reason_still_closes(the_hub):
    """A project's own group_send may carry any code and reason: a code a server may not
    send becomes 4000, and the reason is cut to fit a close frame (123 bytes)."""
    socket = Socket()
    member = Member(socket, room="odd-close", max_frames=10, v1=True)

    async def nothing() -> CatchUp:
        return CatchUp(preface=[], frames=[], last_seq=0)

    await the_hub.join(member, nothing)
    the_hub.dispatch("odd-close", {"type": "room.disconnect", "code": 1006, "reason": "é" * 300})
    await socket.wait_for(1)
    (close,) = [m for m in socket.sent if m["type"] == "websocket.close"]
    assert close["code"] == CloseCode.DISCONNECTED
    assert close["reason"] == "é" * 61  # 122 bytes: a 2-byte character does not fit the 123rd


async def _nothing() -> CatchUp:
    return CatchUp(preface=[], frames=[], last_seq=0)


async def test_the_hub_joins_the_control_group_once_and_leaves_it_on_close():
    """Every hub is in hub.CONTROL_GROUP with one channel, with or without members, so a
    control message sent to the group reaches it; close() takes it out again."""
    layer = fanout.get_layer()
    hub = Hub(layer, services.DatabaseLoader(), fanout.room_group)
    await asyncio.wait_for(hub.control_joined.wait(), 5)
    assert list(layer.groups[CONTROL_GROUP]) == [hub._control_channel]
    seen: list[dict] = []
    register_control("test.seen", lambda the_hub, message: seen.append(message))
    await layer.group_send(CONTROL_GROUP, {"type": "test.seen", "n": 1})
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.01)
    assert seen == [{"type": "test.seen", "n": 1}]
    await hub.close()
    assert not layer.groups.get(CONTROL_GROUP) and not hub.control_joined.is_set()


async def test_the_hub_finds_a_users_members_in_every_room_until_they_leave(the_hub):
    """user_members(uid) lists a user's members across rooms; guests are not indexed, and
    the index forgets a user with their last member."""
    members = [
        Member(Socket(), room=room, max_frames=10, v1=True, user_id=user_id)
        for room, user_id in (("a", 1), ("b", 1), ("a", 2), ("a", None))
    ]
    for member in members:
        await the_hub.join(member, _nothing)
    assert the_hub.user_members(1) == members[:2] and the_hub.user_members(2) == [members[2]]
    the_hub.leave(members[0])
    the_hub.leave(members[0])  # a second leave changes nothing
    assert the_hub.user_members(1) == [members[1]]
    for member in members[1:]:
        the_hub.leave(member)
    assert the_hub.user_members(1) == [] and the_hub._users == {}


async def test_access_control_messages_count_in_access_epoch_others_do_not(the_hub):
    """The epoch a joining member's rights are compared with counts access messages only."""
    register_control("test.other", lambda hub, message: None)
    before = the_hub.access_epoch
    the_hub.control({"type": "test.other"})
    the_hub.control({"type": "access.recheck", "room": "nowhere", "user_id": None})
    assert the_hub.access_epoch == before + 1


async def test_lingering_rooms_are_bounded_the_longest_empty_goes_first(monkeypatch):
    """Past LINGER_MAX_ROOMS empty rooms, the one empty longest is unsubscribed at once;
    a member joining a lingering room takes it out of the count."""
    monkeypatch.setattr(hub_module, "LINGER_MAX_ROOMS", 2)
    layer = fanout.get_layer()
    the_hub = Hub(layer, services.DatabaseLoader(), fanout.room_group, linger_secs=60)
    empty = CatchUp(preface=[], frames=[], last_seq=0)

    async def nothing() -> CatchUp:
        return empty

    async def visit(room: str) -> Member:
        member = Member(Socket(), room=room, max_frames=10, v1=True)
        await the_hub.join(member, nothing)
        return member

    async def subscribed(room: str) -> bool:
        await asyncio.sleep(0)  # let a spawned unsubscribe run
        for _ in range(100):
            if room not in the_hub._rooms or the_hub._rooms[room].ready:
                break
            await asyncio.sleep(0.01)
        return bool(layer.groups.get(fanout.room_group(room)))

    try:
        for room in ("a", "b"):
            the_hub.leave(await visit(room))
        assert await subscribed("a") and await subscribed("b")
        back = await visit("a")  # no longer lingering: "b" is the oldest empty room
        the_hub.leave(await visit("c"))
        assert await subscribed("b") and await subscribed("c")
        the_hub.leave(await visit("d"))  # three lingering: "b" goes
        for _ in range(100):
            if not await subscribed("b"):
                break
        assert not await subscribed("b")
        assert await subscribed("c") and await subscribed("d") and await subscribed("a")
        assert the_hub.members("a") == [back]
    finally:
        await the_hub.close()
