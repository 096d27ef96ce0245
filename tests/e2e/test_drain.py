"""A rolling restart, end to end: SIGTERM one of two ``roomcast serve`` processes (a private
Redis, one PostgreSQL database) while its clients read and post.

Process A drains (``roomcast.server.drain``): its sockets close with 1012 in batches
spread over ``DRAIN_SECS``, each after the post it was storing is acked; new connections
are refused; A exits within its bound. Every client goes to B (as behind a load balancer)
with ``since=`` and ends with every acked message exactly once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import time
import uuid
from typing import Any

import pytest
import websockets

from roomcast.server.drain import schedule

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgres]

DRAIN_SECS = 2.0
READERS = 60
PUBLISHERS = 3
#: Seconds between a publisher's ack and its next post: steady, not flat out (this tests
#: the drain, not throughput).
POST_GAP_SECS = 0.005
#: The documented bound on A's exit after SIGTERM: DRAIN_SECS + CLOSE_TIMEOUT_SECS (5)
#: + 12 s (docs/settings.md, DRAIN_SECS).
EXIT_BOUND_SECS = DRAIN_SECS + 5 + 12
#: Longest wait for any one event of this test (a bound for a failing test, not a speed
#: check).
WAIT_SECS = 30


class Client:
    """A roomcast.v1 room socket that goes to process B when A closes it, with since=."""

    def __init__(self, name: str, room: str, a: Any, b: Any) -> None:
        self.name, self.room, self.a, self.b = name, room, a, b
        self.ws: Any = None
        self.last = 0  # the last seq received
        self.seqs: list[int] = []
        self.texts: list[str] = []
        self.users: dict[int, str] = {}  # seq -> the guest name it was stored under
        self.close: tuple[float, int | None] | None = None  # (monotonic time, code)
        self.recovered: bool | None = None  # the reconnect's joined frame said so
        self.closed = asyncio.Event()
        self.progress = asyncio.Event()

    async def connect(self, server: Any, since: int | None = None) -> None:
        self.ws = await websockets.connect(
            server.ws_url(self.room, since=since), subprotocols=["roomcast.v1"], open_timeout=10
        )
        joined = json.loads(await asyncio.wait_for(self.ws.recv(), WAIT_SECS))
        assert joined["type"] == "joined", joined
        if since is None:
            self.last = joined["seq"]
        else:
            self.recovered = joined["recovered"]

    async def frames(self) -> Any:
        """Frames until the end of the test, across the move from A to B."""
        while True:
            try:
                frame = json.loads(await self.ws.recv())
            except websockets.ConnectionClosed as exc:
                if self.close is not None:
                    raise  # closed twice: only A's close is expected
                self.close = (time.monotonic(), exc.rcvd.code if exc.rcvd else None)
                self.closed.set()
                await self.connect(self.b, since=self.last)
                yield {"type": "reconnected"}
                continue
            if frame["type"] == "message":
                seq = frame["seq"]
                if seq > self.last:  # a replay overlapping what it had is not "received twice"
                    self.seqs.append(seq)
                    self.texts.append(frame["message"])
                    self.users[seq] = frame["user"]
                    self.last = seq
                    self.progress.set()
                else:
                    self.texts.append(f"again: {seq}")  # caught by the exactly-once check
            yield frame

    async def read(self) -> None:
        async for _ in self.frames():
            pass

    async def reach(self, seq: int) -> None:
        async with asyncio.timeout(WAIT_SECS):
            while self.last < seq:
                self.progress.clear()
                await self.progress.wait()


class Publisher(Client):
    """Posts one message at a time with a client_id, the next after the ack; a post whose
    ack did not come before the close is sent again, with the same client_id, to B."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.acked: dict[str, int] = {}
        self.stop = asyncio.Event()
        self.count = 0
        self.unacked_at_close: str | None = None  # the post sent again to B, if any

    async def post(self) -> None:
        stream = self.frames()
        while not self.stop.is_set():
            self.count += 1
            client_id = f"{self.name}-{self.count}"
            await self.send(client_id)
            while client_id not in self.acked:
                frame = await anext(stream)
                if frame["type"] == "reconnected":  # on B: A may not have read the post
                    self.unacked_at_close = client_id
                    await self.send(client_id)
                elif frame["type"] == "ack" and frame["client_id"] == client_id:
                    self.acked[client_id] = frame["seq"]
                    self.progress.set()
                else:
                    assert frame["type"] == "message", frame
            await asyncio.sleep(POST_GAP_SECS)
        async for _ in stream:  # stopped posting: reads the others' messages on
            pass

    async def send(self, client_id: str) -> None:
        """Post; on a socket closed meanwhile, the stream sees the close and reconnects,
        and the post is sent again."""
        with contextlib.suppress(websockets.ConnectionClosed):
            await self.ws.send(
                json.dumps({"type": "message", "message": client_id, "client_id": client_id})
            )

    async def acks(self, count: int) -> None:
        async with asyncio.timeout(WAIT_SECS):
            while len(self.acked) < count:
                self.progress.clear()
                await self.progress.wait()


async def test_sigterm_drains_in_batches_to_the_other_process_losing_nothing(cluster) -> None:
    a, b = cluster(
        2,
        ROOMCAST_DRAIN_SECS=str(DRAIN_SECS),
        ROOMCAST_LOG_LEVEL="info",
        ROOMCAST_POST_RATE_PER_SOCKET="0",
    )
    room = f"drain {uuid.uuid4().hex[:6]}"
    readers = [Client(f"r{i}", room, a, b) for i in range(READERS)]
    publishers = [Publisher(f"p{i}", room, a, b) for i in range(PUBLISHERS)]
    everyone: list[Client] = [*readers, *publishers]
    for client in everyone:
        await client.connect(a)
    start = min(c.last for c in everyone)
    tasks = [asyncio.create_task(r.read()) for r in readers]
    tasks += [asyncio.create_task(p.post()) for p in publishers]
    try:
        for publisher in publishers:
            await publisher.acks(10)
        a.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        # During the drain: A takes no new connection (its listener is closed).
        waiters = [asyncio.create_task(c.closed.wait()) for c in everyone]
        await asyncio.wait(waiters, timeout=WAIT_SECS, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        with pytest.raises((OSError, websockets.InvalidStatus)):
            await websockets.connect(a.ws_url(room), open_timeout=5)
        assert not all(c.closed.is_set() for c in everyone), "the drain was over already"

        async with asyncio.timeout(WAIT_SECS):
            for client in everyone:
                await client.closed.wait()
        returncode = await asyncio.to_thread(a.proc.wait, EXIT_BOUND_SECS)
        exited = time.monotonic() - signalled
        assert exited < EXIT_BOUND_SECS
        assert returncode == 0  # a stop asked for (docs/cli.md, exit codes)

        # On B now, each publisher posts some more, then stops.
        for publisher in publishers:
            await publisher.acks(len(publisher.acked) + 10)
            publisher.stop.set()
        target = max(seq for p in publishers for seq in p.acked.values())
        for client in everyone:
            await client.reach(target)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in everyone:
            if client.ws is not None:
                client.ws.transport.abort()

    # Every socket of A closed with 1012, and came back to B recovering what it missed.
    assert {c.close[1] for c in everyone if c.close} == {1012}
    assert all(c.recovered is True for c in everyone), [c.recovered for c in everyone]

    # Spread over the drain in its batches, not all at once: the closes come in bursts
    # (a gap of over half a spacing between two bursts), as many as planned (two may
    # merge on a loaded machine), each of one batch or two.
    times = sorted(c.close[0] for c in everyone if c.close)
    offsets = [round(t - times[0], 3) for t in times]
    plan = schedule(len(everyone), DRAIN_SECS)
    spacing = DRAIN_SECS / len(plan)
    assert len(plan) == 6 and offsets[-1] >= DRAIN_SECS / 2, offsets
    bursts = [[times[0]]]
    for before, after in itertools.pairwise(times):
        if after - before > spacing / 2:
            bursts.append([])
        bursts[-1].append(after)
    most = max(size for _, size in plan)
    assert len(plan) - 1 <= len(bursts) <= len(plan), offsets
    assert max(map(len, bursts)) <= 2 * most, offsets
    planned_first_half = sum(size for offset, size in plan if offset < DRAIN_SECS / 2)
    seen_first_half = sum(1 for offset in offsets if offset < DRAIN_SECS / 2)
    assert abs(seen_first_half - planned_first_half) <= len(everyone) / 4, offsets

    # A post A had taken was acked before its socket closed: a post sent again to B (no
    # ack came from A) was stored by B, under B's guest name for the publisher, never
    # by A under A's (each connection is a guest of its own).
    users = readers[0].users
    resent = 0
    for publisher in publishers:
        if publisher.unacked_at_close is not None:
            resent += 1
            stored_by = users[publisher.acked[publisher.unacked_at_close]]
            names_on_a = {
                users[seq]
                for cid, seq in publisher.acked.items()
                if seq < publisher.acked[publisher.unacked_at_close]
            }
            assert stored_by not in names_on_a, (publisher.name, publisher.unacked_at_close)
    # Everyone has every acked message exactly once, in order; no post stored twice.
    acked = {cid: seq for p in publishers for cid, seq in p.acked.items()}
    assert len(set(acked.values())) == len(acked)
    expected = list(range(start + 1, target + 1))
    for client in everyone:
        assert not any(t.startswith("again:") for t in client.texts), client.name
        assert client.seqs[: len(expected)] == expected, client.name
        texts = dict(zip(client.seqs, client.texts, strict=True))
        assert len(set(texts.values())) == len(texts), client.name
        for cid, seq in acked.items():
            assert texts[seq] == cid, (client.name, cid, seq)

    print(
        f"{len(times)} closes from +{times[0] - signalled:.2f} s to +{times[-1] - signalled:.2f} s "
        f"after SIGTERM in {len(bursts)} bursts of {[len(b) for b in bursts]}; "
        f"A exited after {exited:.2f} s "
        f"(bound {EXIT_BOUND_SECS:g}); {len(acked)} posts acked, {target - start} in the room, "
        f"{resent} sent again to B"
    )
    log = a.log()
    assert f"Draining {len(everyone)} WebSockets over {DRAIN_SECS:g} s in 6 batches" in log, log
    assert f"Drained {len(everyone)} WebSockets in" in log, log
    assert "closed after SETTLE_SECS" not in log, log  # each closed when idle, none forced
    assert "Traceback" not in log and "ERROR" not in log, log
