"""The graceful drain's plan (``roomcast.server.drain``): its batch schedule, the order
and deadlines it closes sockets with on a real event loop, and its setting's check.

The drain of real sockets by real processes is tested end to end in
``tests/e2e/test_drain.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import pytest
from django.core.checks import run_checks
from django.test import override_settings

from roomcast.server.drain import (
    BATCH_INTERVAL_SECS,
    MIN_BATCH_SOCKETS,
    SETTLE_SECS,
    Drain,
    graceful_shutdown_secs,
    schedule,
)


@pytest.mark.parametrize(
    ("count", "drain_secs", "min_batch", "expected"),
    [
        (0, 5.0, 1, []),
        (1, 5.0, 1, [(0.0, 1)]),  # one socket: one batch, at once
        (7, 0.0, 1, [(0.0, 7)]),  # 0: every socket at once
        (5, 1.0, 1, [(0.0, 1), (0.2, 1), (0.4, 1), (0.6, 1), (0.8, 1)]),  # fewer than slots
        (7, 0.3, 1, [(0.0, 3), (0.1, 2), (0.2, 2)]),  # larger batches first
        (4, 0.04, 1, [(0.0, 4)]),  # under one interval: one batch
        (9, 5.0, 10, [(0.0, 9)]),  # fewer than a batch: at once, the stop is not delayed
        (63, 2.0, 10, [(i / 3, 11 if i < 3 else 10) for i in range(6)]),  # >= 10 each
        (1000, 5.0, 10, [(i / 10, 20) for i in range(50)]),  # ten a second at most
    ],
)
def test_schedule_spreads_sockets_over_the_drain(count, drain_secs, min_batch, expected):
    """Batches are evenly spaced from 0, never empty, of min_batch sockets at least, and
    differ in size by one at most."""
    got = schedule(count, drain_secs, min_batch=min_batch)
    assert [size for _, size in got] == [size for _, size in expected]
    assert [offset for offset, _ in got] == pytest.approx([offset for offset, _ in expected])


@pytest.mark.parametrize("count", [1, 9, 10, 50, 333, 10_000])
@pytest.mark.parametrize("drain_secs", [0.0, 0.5, 5.0, 30.0])
def test_schedule_closes_every_socket_once_within_the_drain(count, drain_secs):
    """Whatever the numbers: the sizes add up, no batch is below MIN_BATCH_SOCKETS (but a
    lone one), batches are at least BATCH_INTERVAL_SECS apart (within rounding), and the
    last starts before the end."""
    batches = schedule(count, drain_secs)
    sizes = [size for _, size in batches]
    offsets = [offset for offset, _ in batches]
    assert sum(sizes) == count and max(sizes) - min(sizes) <= 1
    assert min(sizes) >= MIN_BATCH_SOCKETS or len(batches) == 1
    assert sizes == sorted(sizes, reverse=True)
    assert offsets[0] == 0 and offsets == sorted(offsets)
    assert offsets[-1] < drain_secs or drain_secs == 0
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(offsets)}
    assert len(gaps) <= 1  # evenly spaced
    assert all(gap >= BATCH_INTERVAL_SECS * 0.66 for gap in gaps)
    assert len(batches) <= max(1, round(drain_secs / BATCH_INTERVAL_SECS))


def test_uvicorn_waits_for_the_drain_and_its_bounds():
    """uvicorn's graceful timeout covers the last batch, its settling, an unanswered
    close and a margin, in whole seconds."""
    assert graceful_shutdown_secs(5.0, 5.0) == 16
    assert graceful_shutdown_secs(0.0, 5.0) == 11
    assert graceful_shutdown_secs(2.5, 1.0) == 10


class Recorder:
    """A socket for the drain: notes when it was told to close, and its deadline."""

    def __init__(self, drain: Drain, log: list[tuple[Recorder, float, float]]) -> None:
        self.drain, self.log = drain, log
        self.done = asyncio.Event()

    def drain_close(self, deadline: float) -> None:
        self.log.append((self, self.drain.loop.time(), deadline))
        self.drain.closed(forced=False)
        self.done.set()


async def test_drain_closes_batches_in_order_with_their_deadlines(caplog):
    """Sockets added in one go are planned at the loop's next turn: closed batch by batch,
    in the order added, each with the deadline its batch time + SETTLE_SECS; the last
    one gone logs the summary."""
    loop = asyncio.get_running_loop()
    drain = Drain(0.3, loop)
    log: list[tuple[Recorder, float, float]] = []
    sockets = [Recorder(drain, log) for _ in range(70)]
    caplog.set_level(logging.INFO, logger="roomcast.server.drain")
    for socket in sockets:
        drain.add(socket)
    assert log == [] and drain.started_at is None  # planned at the next turn, not now
    await asyncio.sleep(0)
    assert drain.started_at is not None
    assert [entry[0] for entry in log] == sockets[:24]  # the first batch, at once
    async with asyncio.timeout(10):
        await sockets[-1].done.wait()
    assert [entry[0] for entry in log] == sockets
    start = drain.started_at
    deadlines = [round(deadline - start - SETTLE_SECS, 6) for _, _, deadline in log]
    assert deadlines == pytest.approx([0.0] * 24 + [0.1] * 23 + [0.2] * 23)
    # Never before its batch's time (the loop's timers do not fire early).
    assert all(at >= deadline - SETTLE_SECS - 1e-3 for _, at, deadline in log)
    assert "Draining 70 WebSockets over 0.3 s in 3 batches" in caplog.text
    assert "Drained 70 WebSockets in" in caplog.text


async def test_a_socket_added_after_the_plan_is_closed_at_once():
    """A handshake that completed during the drain is not left for the next batch."""
    drain = Drain(10.0, asyncio.get_running_loop())
    log: list[tuple[Recorder, float, float]] = []
    sockets = [Recorder(drain, log) for _ in range(20)]  # two batches, 5 s apart
    for socket in sockets:
        drain.add(socket)
    await asyncio.sleep(0)
    late = Recorder(drain, log)
    drain.add(late)
    assert [entry[0] for entry in log] == [*sockets[:10], late]


async def test_forced_closes_are_a_warning(caplog):
    """Sockets closed at their deadline, their consumer still busy, are counted in a
    warning (the posts are still stored; their clients send them again)."""
    drain = Drain(0.0, asyncio.get_running_loop())

    class Busy:
        def drain_close(self, deadline: float) -> None:
            drain.closed(forced=True)

    drain.add(Busy())
    await asyncio.sleep(0)
    assert any(
        r.levelno == logging.WARNING and "1 closed after SETTLE_SECS" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize("value", [-1, 601, "5", True, float("nan")])
def test_a_bad_drain_fails_the_checks(value):
    """DRAIN_SECS is 0 to 600 seconds: anything else stops the server with E023."""
    with override_settings(ROOMCAST={"DRAIN_SECS": value}):
        errors = [e for e in run_checks() if e.id.startswith("roomcast")]
    assert [e.id for e in errors] == ["roomcast.E023"]
    assert "DRAIN_SECS" in errors[0].msg


@pytest.mark.parametrize("value", [0, 0.5, 600])
def test_drain_from_zero_to_ten_minutes_passes(value):
    with override_settings(ROOMCAST={"DRAIN_SECS": value}):
        assert [e for e in run_checks() if e.id.startswith("roomcast")] == []
