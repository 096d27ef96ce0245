"""Fan-out benchmark: one message delivered to every member of a big room.

Scenarios (``--scenarios``; both by default):

``embedded``
    ``--targets``, one after the other, each with ``--members`` members in one room:
    ``roomcast`` (one ``roomcast serve`` on the embedded default: SQLite, in-memory layer);
    ``baseline`` (a bare ``websockets`` broadcast server, started from this file), which
    measures what the clients themselves can take; ``seed`` (the seed tutorial's consumer
    on daphne and channels_redis, ``benchmarks/seed_project``).
``redis``
    Two ``roomcast serve`` processes on one PostgreSQL database and a private Redis, half
    the members on each, the publisher on the first, per ``--layers``: ``pubsub``
    (RedisPubSubChannelLayer) and ``core`` (RedisChannelLayer).

Each target runs two phases on the same connections: ``paced`` (``--rate`` messages/s)
and ``burst`` (``--messages`` sent back to back). The members live in ``--client-procs``
client processes (``_clients.py``); the publisher lives in this one. Latency is the
publisher's send to a member's receipt, both read from ``time.monotonic()``, one clock for
the whole host on Linux. Every member must get every message exactly once and in order;
anything else is counted and printed. Servers listen on 127.0.0.1 only and are stopped at
the end, also after an error, Ctrl-C or ``--time-limit``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _harness as h
from _clients import (
    SUBPROTOCOL,
    MemberPool,
    MemberRecord,
    add_member_arguments,
    loop_factory,
    open_ws,
)
from _report import PhaseResult, percentiles, report
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

THIS_FILE = Path(__file__).resolve()
TARGETS = ("roomcast", "before", "baseline", "node", "seed")
#: The Node.js `ws` baseline (target node): its server and its npm package.
NODE_WS = THIS_FILE.parent / "node_ws"


# -- the publisher ----------------------------------------------------------------------------


@dataclass
class Publisher:
    """The connection that posts, in this process; its reader collects acks and errors."""

    ws: ClientConnection
    acks: dict[str, tuple[int, float]] = field(default_factory=dict)  # client_id -> seq, time
    errors: list[str] = field(default_factory=list)  # error frames, as received
    waiting: int = 0
    all_acked: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        try:
            async for raw in self.ws:
                if '"type":"ack"' in raw:
                    frame = json.loads(raw)
                    self.acks[frame["client_id"]] = (int(frame["seq"]), time.monotonic())
                    self.waiting -= 1
                    if self.waiting == 0:
                        self.all_acked.set()
                elif '"type":"error"' in raw:
                    self.errors.append(str(raw))
        except ConnectionClosedOK:
            pass  # this process closed it
        except ConnectionClosed as exc:
            # Reported with the phase (e.g. 1013: this process read too slowly for the
            # server's outbound buffer bound), not only as acks that never came.
            rcvd = exc.rcvd
            self.errors.append(
                f"publisher closed: {rcvd.code} {rcvd.reason!r}" if rcvd else "publisher closed"
            )

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self.ws.close()
        self.ws.transport.abort()
        if self.reader is not None:
            self.reader.cancel()


def post_frame(dialect: str, text: str, client_id: str) -> str:
    """What the publisher sends: roomcast.v1 with a client_id, or the seed's frame."""
    if dialect == "seed":
        return json.dumps({"message": text})  # as the seed's room.html sends it
    return json.dumps({"type": "message", "message": text, "client_id": client_id})


# -- one phase ------------------------------------------------------------------------------


async def _run_phase(
    result: PhaseResult,
    pool: MemberPool,
    publishers: list[Publisher],
    *,
    dialect: str,
    rate: float,
    size: int,
    timeout: float,
    procs: list[h.Proc],
) -> PhaseResult:
    """One phase: each publisher (one per room, all at once) sends ``result.messages``."""
    tag = f"{result.phase}{result.round}"
    texts = [f"{tag}#{i:06d} ".ljust(size, "x") for i in range(result.messages)]
    sent: list[list[float]] = [[] for _ in publishers]
    await pool.arm(f"{tag}#", result.messages)
    errors_before = []
    for publisher in publishers:
        publisher.waiting = result.messages if dialect == "v1" else 0
        publisher.all_acked.clear()
        if dialect != "v1":
            publisher.all_acked.set()  # the seed acknowledges nothing
        errors_before.append(len(publisher.errors))

    async def publish(publisher: Publisher, times: list[float]) -> None:
        for i, text in enumerate(texts):
            if rate > 0:
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            frame = post_frame(dialect, text, f"{tag}-{i}")
            times.append(time.monotonic())
            await publisher.ws.send(frame)

    before = h.sample(procs, pool.pids)
    start = time.monotonic()
    await asyncio.gather(*(publish(p, times) for p, times in zip(publishers, sent, strict=True)))
    done = await pool.wait_done(timeout - (time.monotonic() - start))
    try:
        async with asyncio.timeout(max(1.0, timeout - (time.monotonic() - start))):
            for publisher in publishers:
                await publisher.all_acked.wait()
    except TimeoutError:
        done = False
    result.timed_out = not done
    after = h.sample(procs, pool.pids)
    result.cpu, result.cpu_wall = h.cpu_between(before, after), after.wall - before.wall
    result.publisher_errors = [
        e for p, n in zip(publishers, errors_before, strict=True) for e in p.errors[n:]
    ]
    records = await pool.collect(tag)
    rooms = []
    for k, publisher in enumerate(publishers):
        acks = None
        if dialect == "v1":
            acks = {
                int(cid.rsplit("-", 1)[1]): ack
                for cid, ack in publisher.acks.items()
                if cid.startswith(f"{tag}-")
            }
        mine = [r for r in records if len(publishers) == 1 or room_of_side(r.side) == k]
        rooms.append((mine, acks, sent[k]))
    analyse_rooms(result, rooms)
    return result


def room_of_side(side: str) -> int:
    """The room index of a member's side label (``A:3``: side A, room 3)."""
    return int(side.rpartition(":")[2] or 0)


def analyse(
    result: PhaseResult,
    records: list[MemberRecord],
    acks: dict[int, tuple[int, float]] | None,
    texts: list[str],
    sent: list[float],
) -> None:
    """Check every member's receipts of the phase (one room); fill ``result``.

    ``acks`` (message number -> seq, ack time) is None for the seed, which acks nothing and
    sends no seq: its members are checked by message number (the text) alone.
    """
    analyse_rooms(result, [(records, acks, sent)])


def analyse_rooms(
    result: PhaseResult,
    rooms: list[tuple[list[MemberRecord], dict[int, tuple[int, float]] | None, list[float]]],
) -> None:
    """:func:`analyse` for rooms published to at once: each room's members, its
    publisher's acks and send times; the figures are the rooms' together (deliveries/s
    from the first send of any room to the last receipt in any)."""
    first_send = min(min(sent) for _, _, sent in rooms)
    latencies: list[float] = []
    by_side: dict[str, list[float]] = {}
    first_ms: list[float] = []
    ack_ms: list[float] = []
    last_receipt = first_send
    last_ack = None
    for records, acks, sent in rooms:
        if acks is not None:
            result.acked += len(acks)
            if acks:
                last = max(t for _, t in acks.values())
                last_ack = last if last_ack is None else max(last_ack, last)
                ack_ms += [t - sent[i] for i, (_, t) in acks.items()]
        receipts = _check_room(result, records, acks, sent, latencies, by_side)
        first_ms += [t - sent[i] for i, t in receipts[0].items()]
        last_receipt = max(last_receipt, receipts[1])
    if last_ack is not None:
        result.stored_per_sec = result.acked / max(last_ack - first_send, 1e-9)
        result.ack_ms = percentiles(ack_ms)
    result.lost += (result.members - sum(len(r) for r, _, _ in rooms)) * result.messages
    result.deliveries = len(latencies)
    result.deliveries_per_sec = len(latencies) / max(last_receipt - first_send, 1e-9)
    result.latency_ms = percentiles(latencies)
    result.first_ms = percentiles(first_ms)
    if len(by_side) > 1 and len(rooms) == 1:
        result.latency_by_side_ms = {s: percentiles(v) for s, v in sorted(by_side.items())}


def _check_room(
    result: PhaseResult,
    records: list[MemberRecord],
    acks: dict[int, tuple[int, float]] | None,
    sent: list[float],
    latencies: list[float],
    by_side: dict[str, list[float]],
) -> tuple[dict[int, float], float]:
    """One room's members: counts into ``result``, latencies appended; returns each
    message's first receipt and the room's last receipt."""
    if acks is not None:
        seq_index = {seq: i for i, (seq, _) in acks.items()}
        expected = set(seq_index)
    first_receipt: dict[int, float] = {}
    last_receipt = min(sent)
    for rec in records:
        side = by_side.setdefault(rec.side, [])
        result.other_frames += rec.other_frames
        seen: set[int] = set()
        previous = -1
        for index, seq, received in zip(rec.index, rec.seq, rec.received, strict=True):
            key = seq if acks is not None else index  # what must be unique and increasing
            if acks is not None and seq in seq_index and seq_index[seq] != index:
                result.wrong_text += 1
            if key in seen:
                result.duplicates += 1
                continue
            if key < previous:
                result.out_of_order += 1
            seen.add(key)
            previous = max(previous, key)
            latency = received - sent[index]
            latencies.append(latency)
            side.append(latency)
            last_receipt = max(last_receipt, received)
            first_receipt[index] = min(first_receipt.get(index, received), received)
        if acks is not None:
            # Unacked messages have no known seq: each counts as lost for every member.
            result.lost += len(expected - seen) + (result.messages - len(expected))
        else:
            result.lost += result.messages - len(seen)
        if rec.closed:
            result.closed_members += 1
    return first_receipt, last_receipt


async def run_target(
    scenario: str,
    target: str,
    round_: int,
    sides: list[tuple[str, h.Proc, int]],
    args: argparse.Namespace,
    procs: list[h.Proc],
    *,
    dialect: str = "v1",
    phases: list[tuple[str, float]] | None = None,
    messages: int | None = None,
) -> list[PhaseResult]:
    """Open the members (``sides``: name, server, count per room) in the client
    processes, in ``--rooms`` rooms, and publish from this process through the first
    server, one publisher per room, phase by phase."""
    rooms = [f"bench-{uuid.uuid4().hex[:10]}" for _ in range(args.rooms)]
    urls = [
        # Side "A:3": side A, room 3 (room_of_side), when there are several rooms.
        (name if len(rooms) == 1 else f"{name}:{k}", f"ws://127.0.0.1:{proc.port}/ws/chat/{room}/")
        for k, room in enumerate(rooms)
        for name, proc, count in sides
        for _ in range(count)
    ]
    members = len(urls)
    pool = MemberPool(urls, dialect, args.client_procs, args.client)
    pool.start()
    results = []
    publishers: list[Publisher] = []
    try:
        opened = await pool.open(timeout=args.phase_timeout)
        started = min(s.started for s in opened)
        connect_secs = max(s.finished for s in opened) - started
        failed = [s for s in opened if s.failed]
        if failed:
            print(
                f"  {sum(s.failed for s in failed)} members did not open: {failed[0].first_error}",
                file=sys.stderr,
            )
        first = sides[0][1]
        for room in rooms:
            ws, _ = await open_ws(f"ws://127.0.0.1:{first.port}/ws/chat/{room}/", dialect)
            publishers.append(Publisher(ws))
            publishers[-1].reader = asyncio.create_task(publishers[-1].read())
        for phase, rate in phases or [("paced", args.rate), ("burst", 0.0)]:
            result = PhaseResult(
                scenario, target, round_, phase, members, messages or args.messages, connect_secs
            )
            result.client_procs = pool.nprocs
            await _run_phase(
                result,
                pool,
                publishers,
                dialect=dialect,
                rate=rate,
                size=args.size,
                timeout=args.phase_timeout,
                procs=procs,
            )
            results.append(result)
            print(_progress_line(result), file=sys.stderr, flush=True)
    finally:
        for publisher in publishers:
            await publisher.close()
        await pool.stop()
    return results


def _progress_line(r: PhaseResult) -> str:
    lat = r.latency_ms
    return (
        f"  {r.scenario}/{r.target} round {r.round} {r.phase}: {r.deliveries:,} deliveries, "
        f"{r.deliveries_per_sec:,.0f}/s, p50 {lat.get('p50', 0):.1f} ms, "
        f"p99 {lat.get('p99', 0):.1f} ms, lost {r.lost}" + (" (TIMED OUT)" if r.timed_out else "")
    )


# -- scenarios ------------------------------------------------------------------------------


async def _embedded(
    procs: h.Processes, args: argparse.Namespace, round_: int, redis: h.Proc | None
) -> list[PhaseResult]:
    results: list[PhaseResult] = []
    order = list(args.targets) if round_ % 2 else list(reversed(args.targets))
    for target in order:
        print(
            f"embedded/{target}, round {round_}: {args.rooms} x {args.members} members",
            file=sys.stderr,
        )
        dialect, phases, messages = "v1", None, None
        if target == "baseline":
            port = h.free_port()
            argv = [sys.executable, str(THIS_FILE), "--baseline-server", str(port)]
            server = procs.start("baseline", argv, port=port)
        elif target == "node":
            port = h.free_port()
            argv = ["node", str(NODE_WS / "server.js"), str(port)]
            server = procs.start("node", argv, port=port)
        elif target == "seed":
            assert redis is not None  # started by _main when seed is a target
            server = procs.seed("seed", redis)
            dialect, messages = "seed", args.seed_messages or args.messages
            phases = [(name, args.rate if name == "paced" else 0.0) for name in args.seed_phases]
        elif target == "before":  # another build of roomcast, side by side (--before)
            data_dir = procs.workdir / f"embedded-before-{round_}"
            server = procs.roomcast("before", data_dir, {}, binary=args.before)
        else:
            data_dir = procs.workdir / f"embedded-{round_}"
            server = procs.roomcast("roomcast", data_dir, {})
        serving = [server, redis] if target == "seed" and redis is not None else [server]
        try:
            sides = [("A", server, args.members)]
            results += await run_target(
                "embedded",
                target,
                round_,
                sides,
                args,
                serving,
                dialect=dialect,
                phases=phases,
                messages=messages,
            )
        finally:
            procs.stop(server)
    return results


async def _redis(
    procs: h.Processes, args: argparse.Namespace, round_: int, redis: h.Proc, database: str
) -> list[PhaseResult]:
    results: list[PhaseResult] = []
    order = list(args.layers) if round_ % 2 else list(reversed(args.layers))
    half = args.members // 2
    for layer in order:
        print(f"redis/{layer}, round {round_}: {args.members} members on 2", file=sys.stderr)
        env = {
            "ROOMCAST_DATABASE_URL": database,
            "ROOMCAST_REDIS_URL": f"redis://127.0.0.1:{redis.port}/0",
            "ROOMCAST_REDIS_PREFIX": f"bench{uuid.uuid4().hex[:8]}",
            "ROOMCAST_LAYER": layer,
        }
        data_dir = procs.workdir / "redis-data"
        # One after the other: each runs migrate before it listens.
        a = procs.roomcast(f"{layer}-A", data_dir, env)
        b = procs.roomcast(f"{layer}-B", data_dir, env)
        try:
            sides = [("A", a, half), ("B", b, args.members - half)]
            results += await run_target("redis", layer, round_, sides, args, [a, b, redis])
        finally:
            procs.stop(b)
            procs.stop(a)
    return results


async def _main(args: argparse.Namespace, procs: h.Processes, results: list[PhaseResult]) -> None:
    redis: h.Proc | None = None
    database: str | None = None
    try:
        if "redis" in args.scenarios or "seed" in args.targets:
            redis = procs.redis()
        if "redis" in args.scenarios:
            database = h.create_database(args.postgres)
        for round_ in range(1, args.rounds + 1):
            if "embedded" in args.scenarios:
                results += await _embedded(procs, args, round_, redis)
            if "redis" in args.scenarios and redis is not None and database is not None:
                results += await _redis(procs, args, round_, redis, database)
    finally:
        procs.stop_all()
        if database is not None:
            h.drop_database(args.postgres, database)


# -- the baseline server ----------------------------------------------------------------------


def _encode(event: dict[str, Any]) -> str:
    # As roomcast.protocol.codec.encode: compact, UTF-8 kept.
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


async def _baseline_server(port: int) -> None:
    """A bare ``websockets`` server speaking just enough of roomcast.v1: no storage, no
    framework. Each posted message gets the room's next seq, is encoded once and
    broadcast to every connection of the room, then acked."""
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    rooms: dict[str, set[ServerConnection]] = {}
    seqs: dict[str, int] = {}

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request else "/"
        members = rooms.setdefault(path, set())
        members.add(ws)
        try:
            await ws.send(_encode({"type": "joined", "room": path, "seq": seqs.get(path, 0)}))
            async for raw in ws:
                posted = json.loads(raw)
                seq = seqs[path] = seqs.get(path, 0) + 1
                ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
                event = {"type": "message", "room": path, "message": posted["message"]}
                event |= {"kind": "chat", "user": None, "ts": ts, "seq": seq}
                event["client_id"] = posted.get("client_id")
                broadcast(members, _encode(event))
                await ws.send(_encode({"type": "ack", "client_id": event["client_id"], "seq": seq}))
        finally:
            members.discard(ws)

    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(
        handler,
        "127.0.0.1",
        port,
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        compression=None,
        ping_interval=None,
        max_size=2**20,
    ):
        await stop


def _install_node_ws() -> None:
    """``npm ci`` in benchmarks/node_ws once (the lock file pins ws), or exit in one line
    saying what to install."""
    import shutil
    import subprocess

    if (NODE_WS / "node_modules" / "ws").is_dir():
        return
    if shutil.which("node") is None or shutil.which("npm") is None:
        sys.exit("the node target needs Node.js and npm: apt-get install -y nodejs npm")
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_WS, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"npm ci in {NODE_WS} failed: {done.stderr.strip()[-500:]}")


# -- command line ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's arguments."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/fanout.py",
        description=__doc__.split("\n\n")[0]
        + " Starts its own servers on 127.0.0.1 and stops them; prints Markdown results.",
    )
    parser.add_argument(
        "--scenarios",
        default="embedded,redis",
        help="comma-separated: embedded (one process: --targets), redis (two processes: --layers)",
    )
    parser.add_argument(
        "--targets",
        default="roomcast,baseline,seed",
        help="embedded scenario's targets, comma-separated: roomcast, before (the build "
        "given by --before), baseline (bare websockets), node (bare Node.js ws: "
        "benchmarks/node_ws, needs node and npm), seed (the tutorial on daphne + "
        "channels_redis; needs redis-server)",
    )
    parser.add_argument(
        "--before",
        metavar="ROOMCAST",
        help="another build's roomcast command, for the 'before' target: e.g. "
        "git worktree add /tmp/rc-old REV && /tmp/rc-old/scripts/install server, then "
        "--before /tmp/rc-old/.venv/bin/roomcast",
    )
    parser.add_argument(
        "--layers", default="pubsub,core", help="redis scenario's layers: pubsub, core"
    )
    add_member_arguments(parser, "processes holding the members")
    parser.add_argument(
        "--seed-messages",
        type=int,
        help="messages per phase for the seed target (default: --messages); it is slow",
    )
    parser.add_argument(
        "--seed-phases", default="burst", help="phases of the seed target (default burst)"
    )
    parser.add_argument("--members", type=int, default=1000, help="members per room (default 1000)")
    parser.add_argument(
        "--rooms",
        type=int,
        default=1,
        help="embedded scenario: rooms of --members each, published to at once, one "
        "publisher each (default 1; e.g. --rooms 10 --members 100)",
    )
    parser.add_argument(
        "--messages", type=int, default=200, help="messages per phase (default 200)"
    )
    parser.add_argument(
        "--rate", type=float, default=10.0, help="messages/s in the paced phase (default 10)"
    )
    parser.add_argument("--size", type=int, default=100, help="message text length (default 100)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat everything, order reversed (default 1)"
    )
    parser.add_argument(
        "--phase-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for every delivery of a phase (default 60)",
    )
    h.add_run_arguments(parser, postgres=True)
    parser.add_argument(
        "--baseline-server",
        type=int,
        metavar="PORT",
        help="internal: run the bare websockets broadcast server on PORT (the benchmark "
        "starts it itself)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every message reached every member."""
    args = build_parser().parse_args(argv)
    if args.baseline_server:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(_baseline_server(args.baseline_server))
        return 0
    split = lambda text: [x.strip() for x in text.split(",") if x.strip()]  # noqa: E731
    args.scenarios, args.targets = split(args.scenarios), split(args.targets)
    args.layers, args.seed_phases = split(args.layers), split(args.seed_phases)
    unknown = (set(args.scenarios) - {"embedded", "redis"}) | (set(args.targets) - set(TARGETS))
    unknown |= set(args.layers) - {"pubsub", "core"}
    unknown |= set(args.seed_phases) - {"paced", "burst"}
    if args.rooms > 1 and "redis" in args.scenarios:
        build_parser().error("--rooms applies to the embedded scenario: add --scenarios embedded")
    if unknown or args.members < 2 or args.messages < 1 or args.rounds < 1 or args.rooms < 1:
        build_parser().error(f"bad arguments (unknown: {sorted(unknown)})")
    if "before" in args.targets and not args.before:
        build_parser().error("the 'before' target needs --before PATH/TO/roomcast")
    if "node" in args.targets and "embedded" in args.scenarios:
        _install_node_ws()
    if "embedded" not in args.scenarios:
        args.targets = []
    h.raise_fd_limit(args.members * args.rooms + 1024)
    facts = h.machine_facts(args.postgres if "redis" in args.scenarios else None)
    facts["client event loop"] = loop_factory().__module__.split(".")[0]
    facts["member client"] = args.client
    facts["client processes"] = f"{args.client_procs} (members), plus this one (publisher)"
    results: list[PhaseResult] = []
    return h.run_benchmark(
        "fanout.py",
        args,
        facts,
        lambda procs: _main(args, procs, results),
        results,
        failed=lambda rs: any(
            r.lost or r.duplicates or r.out_of_order or r.timed_out or r.publisher_errors
            for r in rs
        ),
        report=lambda command, procs: report(results, facts, command, procs.logs),
    )


if __name__ == "__main__":
    sys.exit(main())
