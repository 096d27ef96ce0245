"""Scenario (f): a room of 1,000 with presence, users joining and leaving, messages flat out.

Three targets (``--targets``), one after the other, each on a ``roomcast serve`` of its own
(the embedded default: SQLite, the in-memory layer), each with ``--members`` members in one
room and a burst of ``--messages`` sent back to back by one publisher:

``chat``
    (a)'s roomcast target: the members on ``/ws/chat/<room>/``, guests, nothing else
    happening. The reference, measured in the same run.
``mux``
    The members on the multi-room socket ``/ws/``, each subscribed to the room
    (``--member-auth users``: each a user of its own with a token, so that they are in
    the room's presence; ``guests``: counted as anonymous). The publisher is on ``/ws/``
    too. No churn: what ``/ws/`` itself costs beside ``chat``.
``churn``
    ``mux``, plus ``--joins`` users per second who join the room on ``/ws/`` (connect with
    a token of their own, subscribe, get ``joined``) and leave it (close the socket)
    ``--stay`` seconds later, from ``--warmup`` seconds before the burst until every
    member has every message: ``--joins`` joins and as many leaves per second, each a
    presence change the room's members hear of (``presence``, ``join``, ``leave``,
    ``presence_count`` frames, batched by the server).

Measured per target: deliveries/s of the room's messages (first send -> last receipt),
latency, and that every member got every acked seq once, in order; for ``mux`` and
``churn`` the presence frames each member received per second, by kind; for ``churn``
the joins and leaves done per second within the burst, the time from a join's start to
its ``joined`` frame, and failed joins. The ratio ``churn / chat`` of deliveries/s is
issue 8's target (>= 0.85). Servers and clients listen and connect on 127.0.0.1 only;
every process stops at the end, also after an error, Ctrl-C or ``--time-limit``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
import uuid
from dataclasses import dataclass, field

import _harness as h
from _clients import (
    PRESENCE_TYPES,
    ChurnDriver,
    ChurnStats,
    MemberPool,
    MemberRecord,
    Spec,
    add_member_arguments,
    loop_factory,
    open_ws,
)
from _report import PhaseResult, percentiles, report
from fanout import Publisher, analyse

TARGETS = ("chat", "mux", "churn")
#: The stages of a churn user's join and leave the report times (ChurnResult.stage_ms):
#: scheduled -> handshake done, -> connected frame, -> joined frame; close sent -> closed.
STAGES = ("handshake", "connected", "subscribe", "close")
#: Seconds the members are given, after every churn user left, for the frames of the last
#: leaves (batched for PRESENCE_BATCH_SECS, 0.2 s by default) before their frames are read.
LEAVES_SETTLE_SECS = 1.0
#: The ratios the report prints, first / second.
PAIRS = (("churn", "chat"), ("mux", "chat"), ("churn", "mux"))


@dataclass
class ChurnResult(PhaseResult):
    """A burst of one target, with what the presence frames and the churn did."""

    member_auth: str = "guests"
    server_us: float = 0.0  # server CPU µs per delivery (in the JSON; PhaseResult's property)
    window_secs: float = 0.0  # first send -> last receipt: the window of the rates below
    presence_frames: int = 0  # received by the members within the window
    presence_by_kind: dict[str, int] = field(default_factory=dict)
    # The whole phase (from arming to collecting, churn warm-up and the last leaves
    # included): with every churn user gone at the end, joins and leaves should match.
    presence_phase_by_kind: dict[str, int] = field(default_factory=dict)
    presence_per_member_sec: float = 0.0
    churn_scheduled: int = 0  # joins started (the whole churn, warm-up included)
    churn_skipped: int = 0  # not started: no free user or too many churners at once
    churn_failed: int = 0
    churn_first_error: str = ""
    churn_joined: int = 0  # joins that got their joined frame (the whole churn)
    churn_left: int = 0  # of those, the ones that left (closed) cleanly
    joins_in_window: int = 0  # joined frames received within the window
    leaves_in_window: int = 0  # sockets closed within the window
    joins_per_sec: float = 0.0
    leaves_per_sec: float = 0.0
    join_ms: dict[str, float] = field(default_factory=dict)  # start -> joined frame
    # The stages of a join and a leave: start -> handshake done, -> connected frame,
    # -> joined frame (the subscribe); close frame sent -> the server's close received.
    stage_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    churn_frames: int = 0  # frames the churners received


def _post(room: str | None, text: str, client_id: str) -> str:
    frame = {"type": "message", "message": text, "client_id": client_id}
    return json.dumps(frame if room is None else {**frame, "room": room})


def _presence(result: ChurnResult, records: list[MemberRecord], start: float, end: float) -> None:
    by_kind = dict.fromkeys(PRESENCE_TYPES, 0)
    phase = dict.fromkeys(PRESENCE_TYPES, 0)
    for rec in records:
        for received, kind in zip(rec.presence_received, rec.presence_kind, strict=True):
            phase[PRESENCE_TYPES[kind]] += 1
            if start <= received <= end:
                by_kind[PRESENCE_TYPES[kind]] += 1
    result.presence_by_kind = by_kind
    result.presence_phase_by_kind = phase
    result.presence_frames = sum(by_kind.values())
    result.presence_per_member_sec = (
        result.presence_frames / max(result.members, 1) / max(end - start, 1e-9)
    )


def _churn_figures(result: ChurnResult, stats: ChurnStats, start: float, end: float) -> None:
    joins = stats.joins
    result.churn_scheduled = len(joins)
    result.churn_skipped = stats.skipped
    failed = [j for j in joins if j.error]
    result.churn_failed = len(failed)
    result.churn_first_error = failed[0].error if failed else ""
    result.churn_joined = sum(1 for j in joins if not math.isnan(j.joined))
    result.churn_left = sum(1 for j in joins if not math.isnan(j.left))
    result.joins_in_window = sum(1 for j in joins if start <= j.joined <= end)
    result.leaves_in_window = sum(1 for j in joins if start <= j.left <= end)
    window = max(end - start, 1e-9)
    result.joins_per_sec = result.joins_in_window / window
    result.leaves_per_sec = result.leaves_in_window / window
    result.join_ms = percentiles(
        [j.joined - j.scheduled for j in joins if not math.isnan(j.joined)]
    )
    result.churn_frames = stats.frames
    stages = {
        "handshake": [(j.scheduled, j.opened) for j in joins],
        "connected": [(j.opened, j.connected) for j in joins],
        "subscribe": [(j.connected, j.joined) for j in joins],
        "close": [(j.leaving, j.left) for j in joins],
    }
    result.stage_ms = {
        name: percentiles([b - a for a, b in pairs if not (math.isnan(a) or math.isnan(b))])
        for name, pairs in stages.items()
    }


async def _burst(
    result: ChurnResult,
    pool: MemberPool,
    publisher: Publisher,
    room: str | None,
    churn: ChurnDriver | None,
    args: argparse.Namespace,
    procs: list[h.Proc],
) -> None:
    tag = f"burst{result.round}"
    texts = [f"{tag}#{i:06d} ".ljust(args.size, "x") for i in range(result.messages)]
    frames = [_post(room, text, f"{tag}-{i}") for i, text in enumerate(texts)]
    sent: list[float] = []
    await pool.arm(f"{tag}#", result.messages)
    publisher.waiting = result.messages
    publisher.all_acked.clear()
    errors_before = len(publisher.errors)
    stats: ChurnStats | None = None
    churn_cpu = 0.0
    try:
        if churn is not None and churn.pid is not None:
            churn.begin()
            await asyncio.sleep(args.warmup)  # the churn's population settles first
            churn_cpu = h.pid_cpu_seconds(churn.pid)
        before = h.sample(procs, pool.pids)
        start = time.monotonic()
        for frame in frames:
            sent.append(time.monotonic())
            await publisher.ws.send(frame)
        done = await pool.wait_done(args.phase_timeout - (time.monotonic() - start))
        try:
            async with asyncio.timeout(max(1.0, args.phase_timeout - (time.monotonic() - start))):
                await publisher.all_acked.wait()
        except TimeoutError:
            done = False
        after = h.sample(procs, pool.pids)
        if churn is not None and churn.pid is not None:
            churn_cpu = h.pid_cpu_seconds(churn.pid) - churn_cpu
    finally:
        if churn is not None and churn.pid is not None:
            stats = await churn.finish()
            await asyncio.sleep(LEAVES_SETTLE_SECS)  # the last leaves' frames come
    result.timed_out = not done
    result.cpu, result.cpu_wall = h.cpu_between(before, after), after.wall - before.wall
    if churn is not None:
        result.cpu["churners"] = churn_cpu / max(result.cpu_wall, 1e-9)
    result.publisher_errors = publisher.errors[errors_before:]
    records = await pool.collect(tag)
    acks = {
        int(cid.rsplit("-", 1)[1]): ack
        for cid, ack in publisher.acks.items()
        if cid.startswith(f"{tag}-")
    }
    analyse(result, records, acks, texts, sent)
    result.server_us = result.server_us_per_delivery
    received = [t for rec in records for t in rec.received]
    end = max(received, default=start)
    result.window_secs = end - start
    _presence(result, records, start, end)
    if stats is not None:
        _churn_figures(result, stats, start, end)


async def _target(
    procs: h.Processes, args: argparse.Namespace, target: str, round_: int
) -> ChurnResult:
    data_dir = procs.workdir / f"{target}-{round_}"
    server = procs.roomcast(target, data_dir, {}, nofile=args.members + args.churn_users + 1024)
    room = f"bench-{uuid.uuid4().hex[:10]}"
    mux = target != "chat"
    auth = args.member_auth if mux else "guests"
    member_tokens: list[str | None] = [None] * args.members
    churn_tokens: list[str] = []
    names = [f"m{i}" for i in range(args.members)] if auth == "users" else []
    names += [f"c{i}" for i in range(args.churn_users)] if target == "churn" else []
    if names:
        tokens = procs.users(data_dir, names)
        if auth == "users":
            member_tokens = list(tokens[: args.members])
        churn_tokens = tokens[len(tokens) - (args.churn_users if target == "churn" else 0) :]
    base = f"ws://127.0.0.1:{server.port}"
    if mux:
        specs = [Spec("A", f"{base}/ws/", t, (room,)) for t in member_tokens]
    else:
        specs = [Spec("A", f"{base}/ws/chat/{room}/") for _ in member_tokens]
    result = ChurnResult("embedded", target, round_, "burst", args.members, args.messages, 0.0)
    result.member_auth = auth
    pool = MemberPool(specs, "mux" if mux else "v1", args.client_procs, args.client)
    churn = None
    if target == "churn":
        churn = ChurnDriver(
            f"{base}/ws/",
            room,
            churn_tokens,
            rate=args.joins,
            stay=args.stay,
            max_joins=math.ceil(args.joins * (args.warmup + args.phase_timeout)) + 1,
            max_live=args.max_churners,
        )
    publisher: Publisher | None = None
    pool.start()
    try:
        if churn is not None:
            await churn.start()
        opened = await pool.open(timeout=args.phase_timeout)
        result.connect_secs = max(s.finished for s in opened) - min(s.started for s in opened)
        failed = [s for s in opened if s.failed]
        if failed:
            print(
                f"  {sum(s.failed for s in failed)} members did not open: {failed[0].first_error}",
                file=sys.stderr,
            )
        if mux:
            ws, _ = await open_ws(f"{base}/ws/", "mux", rooms=(room,))
        else:
            ws, _ = await open_ws(f"{base}/ws/chat/{room}/", "v1")
        publisher = Publisher(ws)
        publisher.reader = asyncio.create_task(publisher.read())
        result.client_procs = pool.nprocs
        await _burst(result, pool, publisher, room if mux else None, churn, args, [server])
    finally:
        if publisher is not None:
            await publisher.close()
        if churn is not None:
            await churn.stop()
        await pool.stop()
        procs.stop(server)
    return result


def _progress(r: ChurnResult) -> str:
    line = (
        f"  {r.target} round {r.round}: {r.deliveries:,} deliveries, "
        f"{r.deliveries_per_sec:,.0f}/s, lost {r.lost}, dup {r.duplicates}, "
        f"out of order {r.out_of_order}, presence frames {r.presence_per_member_sec:.2f} "
        f"per member per s"
    )
    if r.target == "churn":
        line += f", joins {r.joins_per_sec:.1f}/s, leaves {r.leaves_per_sec:.1f}/s"
    return line + (" (TIMED OUT)" if r.timed_out else "")


async def _main(args: argparse.Namespace, procs: h.Processes, results: list[ChurnResult]) -> None:
    try:
        for round_ in range(1, args.rounds + 1):
            order = args.targets if round_ % 2 else list(reversed(args.targets))
            for target in order:
                print(f"churn.py/{target}, round {round_}", file=sys.stderr, flush=True)
                result = await _target(procs, args, target, round_)
                results.append(result)
                print(_progress(result), file=sys.stderr, flush=True)
    finally:
        procs.stop_all()


def _ms(values: dict[str, float], key: str) -> str:
    return f"{values[key]:,.1f}" if key in values else "-"


def churn_report(results: list[ChurnResult], args: argparse.Namespace) -> str:
    """The tables of this scenario that ``_report.report`` has not: presence and churn."""
    out = ["## Presence frames received by the members, first send -> last receipt", ""]
    out += [
        "| target | round | members | auth | window s | presence frames | per member per s "
        "| " + " | ".join(PRESENCE_TYPES) + " |",
        "|" + " --- |" * (7 + len(PRESENCE_TYPES)),
    ]
    for r in results:
        kinds = " | ".join(f"{r.presence_by_kind.get(k, 0):,}" for k in PRESENCE_TYPES)
        out.append(
            f"| {r.target} | {r.round} | {r.members:,} | {r.member_auth} "
            f"| {r.window_secs:.2f} | {r.presence_frames:,} | {r.presence_per_member_sec:.2f} "
            f"| {kinds} |"
        )
    out += ["", "The whole phase (churn warm-up and last leaves included), per member:", ""]
    out += [
        "| target | round | " + " | ".join(PRESENCE_TYPES) + " |",
        "|" + " --- |" * (2 + len(PRESENCE_TYPES)),
    ]
    for r in results:
        per = [r.presence_phase_by_kind.get(k, 0) / max(r.members, 1) for k in PRESENCE_TYPES]
        out.append(f"| {r.target} | {r.round} | " + " | ".join(f"{x:,.1f}" for x in per) + " |")
    churned = [r for r in results if r.target == "churn"]
    if churned:
        out += ["", f"## Churn: asked {args.joins:g} joins/s, each staying {args.stay:g} s", ""]
        out += [
            "| round | joins started | joined | left | skipped | failed | joins/s in window "
            "| leaves/s in window "
            "| join p50 ms | join p99 ms | join max ms | churn process cores "
            "| frames to churners |",
            "|" + " --- |" * 13,
        ]
        for r in churned:
            out.append(
                f"| {r.round} | {r.churn_scheduled:,} | {r.churn_joined:,} | {r.churn_left:,} "
                f"| {r.churn_skipped} | {r.churn_failed} "
                f"| {r.joins_per_sec:.1f} | {r.leaves_per_sec:.1f} | {_ms(r.join_ms, 'p50')} "
                f"| {_ms(r.join_ms, 'p99')} | {_ms(r.join_ms, 'max')} "
                f"| {r.cpu.get('churners', 0):.2f} | {r.churn_frames:,} |"
            )
        out += ["", "Stages of a join and a leave, ms (p50 / p99 / max):", ""]
        out += ["| round | " + " | ".join(STAGES) + " |", "|" + " --- |" * (1 + len(STAGES))]
        for r in churned:
            cells = [
                " / ".join(_ms(r.stage_ms.get(name, {}), k) for k in ("p50", "p99", "max"))
                for name in STAGES
            ]
            out.append(f"| {r.round} | " + " | ".join(cells) + " |")
        for r in churned:
            if r.churn_first_error:
                out.append(f"\nround {r.round}: first failed join: `{r.churn_first_error}`")
    out += ["", "## Issue 8's target: churn / chat deliveries/s, same round (>= 0.85)", ""]
    out += ["| round | churn /s | chat /s | ratio | mux / chat |", "|" + " --- |" * 5]
    for r in churned:
        chat = next((o for o in results if o.target == "chat" and o.round == r.round), None)
        mux = next((o for o in results if o.target == "mux" and o.round == r.round), None)
        if chat is None or not chat.deliveries_per_sec:
            continue
        mux_ratio = f"{mux.deliveries_per_sec / chat.deliveries_per_sec:.2f}x" if mux else "-"
        out.append(
            f"| {r.round} | {r.deliveries_per_sec:,.0f} | {chat.deliveries_per_sec:,.0f} "
            f"| {r.deliveries_per_sec / chat.deliveries_per_sec:.2f}x | {mux_ratio} |"
        )
    return "\n".join(out) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's arguments."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/churn.py",
        description=__doc__.split("\n\n")[0]
        + " Starts its own servers on 127.0.0.1 and stops them; prints Markdown results.",
    )
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help="comma-separated: chat (members on /ws/chat/<room>/), mux (on /ws/), churn "
        "(on /ws/, with users joining and leaving)",
    )
    parser.add_argument("--members", type=int, default=1000, help="members (default 1000)")
    parser.add_argument(
        "--member-auth",
        choices=("users", "guests"),
        default="users",
        help="members of mux and churn: users (a token each: listed in presence; above "
        "PRESENCE_LIVE_MAX the room gets presence_count frames) or guests (anonymous: the "
        "churn users alone are listed, so the room gets join and leave frames); default users",
    )
    parser.add_argument(
        "--messages", type=int, default=1000, help="messages in the burst (default 1000)"
    )
    parser.add_argument("--size", type=int, default=100, help="message text length (default 100)")
    parser.add_argument(
        "--joins", type=float, default=50.0, help="churn: joins (and leaves) per second (50)"
    )
    parser.add_argument(
        "--stay", type=float, default=1.0, help="churn: seconds each joined user stays (1)"
    )
    parser.add_argument(
        "--churn-users",
        type=int,
        default=500,
        help="churn: users to join with, each in the room at most once at a time (500)",
    )
    parser.add_argument(
        "--max-churners",
        type=int,
        default=1000,
        help="churn: most churn sockets open at once; joins past it are skipped (1000)",
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="churn: seconds of churn before the burst (2)"
    )
    add_member_arguments(parser, "processes holding the members")
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat everything, order reversed (default 1)"
    )
    parser.add_argument(
        "--phase-timeout",
        type=float,
        default=120.0,
        help="seconds to open the members, and for every delivery of the burst (default 120)",
    )
    h.add_run_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every message reached every member once, in order."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = set(args.targets) - set(TARGETS)
    if bad or not args.targets or args.members < 1 or args.messages < 1 or args.rounds < 1:
        parser.error(f"bad arguments (unknown targets: {sorted(bad)})")
    if args.joins <= 0 or args.stay < 0 or args.churn_users < 1 or args.max_churners < 1:
        parser.error("--joins must be positive, --stay >= 0, --churn-users and --max-churners >= 1")
    if args.churn_users < args.joins * args.stay * 2:
        parser.error("--churn-users must be at least twice --joins x --stay (users in the room)")
    h.raise_fd_limit(args.members + args.max_churners + 1024)
    facts = h.machine_facts(None)
    facts["client event loop"] = loop_factory().__module__.split(".")[0]
    facts["member client"] = args.client
    facts["client processes"] = (
        f"{args.client_procs} (members), 1 (churn users), plus this one (publisher)"
    )
    results: list[ChurnResult] = []

    def text(command: str, procs: h.Processes) -> str:
        tables = report(results, facts, command, procs.logs, PAIRS)
        logs = tables.index("## Server logs")
        return tables[:logs] + churn_report(results, args) + "\n" + tables[logs:]

    return h.run_benchmark(
        "churn.py",
        args,
        facts,
        lambda procs: _main(args, procs, results),
        results,
        failed=lambda rs: any(
            r.lost or r.duplicates or r.out_of_order or r.timed_out or r.publisher_errors
            for r in rs
        ),
        report=text,
    )


if __name__ == "__main__":
    sys.exit(main())
