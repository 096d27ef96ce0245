"""Fan-out benchmark: one message delivered to every member of a big room.

Scenarios (``--scenarios``; both by default):

``embedded``
    One ``roomcast serve`` on the embedded default (SQLite, in-memory layer) with
    ``--members`` members in one room; and, in the same run, the same clients against a
    bare ``websockets`` broadcast server (``baseline``, started from this file), so that
    the cost of the clients themselves is measured beside roomcast's.
``redis``
    Two ``roomcast serve`` processes on one PostgreSQL database and a private Redis, half
    the members on each, the publisher on the first: once with ``ROOMCAST_LAYER=pubsub``
    (RedisPubSubChannelLayer) and once with ``core`` (RedisChannelLayer).

Each target runs two phases on the same connections: ``paced`` (``--rate`` messages/s)
and ``burst`` (``--messages`` sent back to back). Latency is the publisher's send to a
member's receipt, both read from this process's ``time.monotonic()`` (every client lives
in this one process). Every member must get every seq exactly once and in order;
anything else is counted and printed. Servers listen on 127.0.0.1 only and are stopped
at the end, also after an error, Ctrl-C or ``--time-limit``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _harness as h
import websockets
from _report import PhaseResult, percentiles, report
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

#: Clients opening at once: enough to fill the server's accept queue without overflowing it.
CONNECT_CONCURRENCY = 50
#: Seconds to open one connection and get its ``joined`` frame.
OPEN_TIMEOUT_SECS = 30.0
SUBPROTOCOL = "roomcast.v1"
THIS_FILE = Path(__file__).resolve()


# -- clients --------------------------------------------------------------------------------


@dataclass(eq=False)
class Client:
    """One connection; its reader keeps every frame with its receipt time."""

    ws: ClientConnection
    side: str  # which server it is connected to ("A", "B")
    frames: list[tuple[float, str]] = field(default_factory=list)
    cursor: int = 0  # frames before this index belong to earlier phases
    joined_seq: int = 0
    reader: asyncio.Task[None] | None = None


class Progress:
    """Counts members that have all the message frames expected so far."""

    def __init__(self) -> None:
        self.target = 0
        self.remaining = 0
        self.done = asyncio.Event()

    def expect(self, messages: int, members: int) -> None:
        """Each of ``members`` will now get ``messages`` more message frames."""
        self.target += messages
        self.remaining = members
        self.done.clear()


async def _read_member(client: Client, progress: Progress) -> None:
    # Parsing waits until the phase is over: here, only a timestamp and a substring test.
    count = 0
    frames = client.frames
    with contextlib.suppress(ConnectionClosed):
        async for raw in client.ws:
            frames.append((time.monotonic(), str(raw)))
            if '"type":"message"' in raw:
                count += 1
                if count == progress.target:
                    progress.remaining -= 1
                    if progress.remaining == 0:
                        progress.done.set()


@dataclass
class Publisher:
    """The connection that posts; its reader collects acks and error frames."""

    ws: ClientConnection
    acks: dict[str, tuple[int, float]] = field(default_factory=dict)  # client_id -> seq, time
    errors: list[str] = field(default_factory=list)  # error frames, as received
    waiting: int = 0
    all_acked: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.ws:
                if '"type":"ack"' in raw:
                    frame = json.loads(raw)
                    self.acks[frame["client_id"]] = (int(frame["seq"]), time.monotonic())
                    self.waiting -= 1
                    if self.waiting == 0:
                        self.all_acked.set()
                elif '"type":"error"' in raw:
                    self.errors.append(str(raw))


async def _open(url: str) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await websockets.connect(
        url,
        subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
        compression=None,  # roomcast serve turns permessage-deflate off
        open_timeout=OPEN_TIMEOUT_SECS,
        ping_interval=None,
        max_size=2**20,
    )
    joined = json.loads(await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT_SECS))
    if joined.get("type") != "joined":
        raise RuntimeError(f"expected a joined frame first, got {joined!r}")
    return ws, joined


async def _connect_members(urls: list[tuple[str, str]], progress: Progress) -> list[Client]:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(side: str, url: str) -> Client:
        async with gate:
            ws, joined = await _open(url)
        client = Client(ws, side, joined_seq=int(joined["seq"]))
        client.reader = asyncio.create_task(_read_member(client, progress))
        return client

    return list(await asyncio.gather(*(one(side, url) for side, url in urls)))


async def _close(clients: list[Client], publisher: Publisher) -> None:
    connections = [c.ws for c in clients] + [publisher.ws]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(20):
            await asyncio.gather(*(ws.close() for ws in connections), return_exceptions=True)
    for ws in connections:
        ws.transport.abort()
    for task in [c.reader for c in clients] + [publisher.reader]:
        if task is not None:
            task.cancel()


# -- one phase ------------------------------------------------------------------------------


async def _run_phase(
    result: PhaseResult,
    clients: list[Client],
    publisher: Publisher,
    progress: Progress,
    *,
    rate: float,
    size: int,
    timeout: float,
    procs: list[h.Proc],
) -> PhaseResult:
    tag = f"{result.phase}{result.round}"
    texts = [f"{tag}#{i:06d} ".ljust(size, "x") for i in range(result.messages)]
    sent: dict[str, float] = {}
    progress.expect(result.messages, len(clients))
    publisher.waiting = result.messages
    publisher.all_acked.clear()
    for client in clients:
        client.cursor = len(client.frames)
    errors_before = len(publisher.errors)

    before = h.sample(procs)
    start = time.monotonic()
    for i, text in enumerate(texts):
        if rate > 0:
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        frame = json.dumps({"type": "message", "message": text, "client_id": f"{tag}-{i}"})
        sent[text] = time.monotonic()
        await publisher.ws.send(frame)
    try:
        async with asyncio.timeout(timeout):
            await progress.done.wait()
            await publisher.all_acked.wait()
    except TimeoutError:
        result.timed_out = True
    after = h.sample(procs)
    result.cpu, result.cpu_wall = h.cpu_between(before, after), after.wall - before.wall
    result.publisher_errors = publisher.errors[errors_before:]
    _analyse(result, clients, publisher.acks, texts, sent)
    return result


def _analyse(
    result: PhaseResult,
    clients: list[Client],
    all_acks: dict[str, tuple[int, float]],
    texts: list[str],
    sent: dict[str, float],
) -> None:
    """Check every member's frames of the phase against the acked seqs; fill ``result``."""
    tag = texts[0].split("#", 1)[0]
    acks = {
        int(cid.rsplit("-", 1)[1]): ack
        for cid, ack in all_acks.items()
        if cid.startswith(f"{tag}-")
    }
    result.acked = len(acks)
    seq_text = {seq: texts[i] for i, (seq, _) in acks.items()}
    expected = set(seq_text)
    first_send = min(sent.values())
    if acks:
        last_ack = max(t for _, t in acks.values())
        result.stored_per_sec = len(acks) / max(last_ack - first_send, 1e-9)
        result.ack_ms = percentiles([t - sent[texts[i]] for i, (_, t) in acks.items()])
    latencies: list[float] = []
    by_side: dict[str, list[float]] = {}
    first_receipt: dict[str, float] = {}
    last_receipt = first_send
    for client in clients:
        seqs: list[int] = []
        side = by_side.setdefault(client.side, [])
        for received, raw in client.frames[client.cursor :]:
            frame = json.loads(raw)
            if frame.get("type") != "message":
                result.other_frames += 1
                continue
            text = frame.get("message", "")
            if not text.startswith(f"{tag}#"):
                continue  # a straggler of an earlier phase
            seq = int(frame["seq"])
            if seq in seq_text and seq_text[seq] != text:
                result.wrong_text += 1
            if seqs and seq <= seqs[-1]:
                if seq in seqs:
                    result.duplicates += 1
                    continue
                result.out_of_order += 1
            seqs.append(seq)
            latency = received - sent[text]
            latencies.append(latency)
            side.append(latency)
            last_receipt = max(last_receipt, received)
            first_receipt[text] = min(first_receipt.get(text, received), received)
        # Unacked messages have no known seq: each counts as lost for every member.
        result.lost += len(expected - set(seqs)) + (result.messages - len(expected))
        if client.ws.close_code is not None:
            result.closed_members += 1
    result.deliveries = len(latencies)
    result.deliveries_per_sec = len(latencies) / max(last_receipt - first_send, 1e-9)
    result.latency_ms = percentiles(latencies)
    result.first_ms = percentiles([t - sent[text] for text, t in first_receipt.items()])
    if len(by_side) > 1:
        result.latency_by_side_ms = {s: percentiles(v) for s, v in sorted(by_side.items())}


async def _run_target(
    scenario: str,
    target: str,
    round_: int,
    sides: list[tuple[str, h.Proc, int]],
    args: argparse.Namespace,
    procs: list[h.Proc],
) -> list[PhaseResult]:
    """Open the members (``sides``: name, server, count), publish from the first server."""
    room = f"bench-{uuid.uuid4().hex[:10]}"
    urls = [
        (name, f"ws://127.0.0.1:{proc.port}/ws/chat/{room}/")
        for name, proc, count in sides
        for _ in range(count)
    ]
    members = len(urls)
    progress = Progress()
    started = time.monotonic()
    clients = await _connect_members(urls, progress)
    ws, _ = await _open(urls[0][1])
    connect_secs = time.monotonic() - started
    publisher = Publisher(ws)
    publisher.reader = asyncio.create_task(publisher.read())
    phases = [("paced", args.rate), ("burst", 0.0)]
    results = []
    try:
        for phase, rate in phases:
            result = PhaseResult(
                scenario, target, round_, phase, members, args.messages, connect_secs
            )
            await _run_phase(
                result,
                clients,
                publisher,
                progress,
                rate=rate,
                size=args.size,
                timeout=args.phase_timeout,
                procs=procs,
            )
            results.append(result)
            print(_progress_line(result), file=sys.stderr, flush=True)
    finally:
        await _close(clients, publisher)
    return results


def _progress_line(r: PhaseResult) -> str:
    lat = r.latency_ms
    return (
        f"  {r.scenario}/{r.target} round {r.round} {r.phase}: {r.deliveries:,} deliveries, "
        f"{r.deliveries_per_sec:,.0f}/s, p50 {lat.get('p50', 0):.1f} ms, "
        f"p99 {lat.get('p99', 0):.1f} ms, lost {r.lost}" + (" (TIMED OUT)" if r.timed_out else "")
    )


# -- scenarios ------------------------------------------------------------------------------


async def _embedded(procs: h.Processes, args: argparse.Namespace, round_: int) -> list[PhaseResult]:
    results: list[PhaseResult] = []
    order = ["baseline", "roomcast"] if round_ % 2 else ["roomcast", "baseline"]
    for target in order:
        print(f"embedded/{target}, round {round_}: {args.members} members", file=sys.stderr)
        if target == "baseline":
            port = h.free_port()
            argv = [sys.executable, str(THIS_FILE), "--baseline-server", str(port)]
            server = procs.start("baseline", argv, port=port)
        else:
            data_dir = procs.workdir / f"embedded-{round_}"
            server = procs.roomcast("roomcast", data_dir, {})
        try:
            sides = [("A", server, args.members)]
            results += await _run_target("embedded", target, round_, sides, args, [server])
        finally:
            procs.stop(server)
    return results


async def _redis(
    procs: h.Processes, args: argparse.Namespace, round_: int, redis: h.Proc, database: str
) -> list[PhaseResult]:
    results: list[PhaseResult] = []
    order = ["pubsub", "core"] if round_ % 2 else ["core", "pubsub"]
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
            results += await _run_target("redis", layer, round_, sides, args, [a, b, redis])
        finally:
            procs.stop(b)
            procs.stop(a)
    return results


async def _main(args: argparse.Namespace, procs: h.Processes, results: list[PhaseResult]) -> None:
    redis: h.Proc | None = None
    database: str | None = None
    try:
        if "redis" in args.scenarios:
            redis = procs.redis()
            database = h.create_database(args.postgres)
        for round_ in range(1, args.rounds + 1):
            if "embedded" in args.scenarios:
                results += await _embedded(procs, args, round_)
            if redis is not None and database is not None:
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
        help="comma-separated: embedded (roomcast vs bare websockets), redis (pubsub vs core)",
    )
    parser.add_argument("--members", type=int, default=1000, help="members per room (default 1000)")
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
    parser.add_argument(
        "--time-limit", type=float, default=290.0, help="stop everything after this (default 290)"
    )
    parser.add_argument(
        "--postgres",
        default="postgres://postgres@127.0.0.1:5432/test",
        help="PostgreSQL server to create the run's database on (dropped at the end)",
    )
    parser.add_argument("--output", type=Path, help="also write the Markdown results here")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs")
    parser.add_argument(
        "--baseline-server",
        type=int,
        metavar="PORT",
        help="internal: run the bare websockets broadcast server on PORT (the benchmark "
        "starts it itself)",
    )
    return parser


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop  # as roomcast serve: the clients get the same loop


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every message reached every member."""
    args = build_parser().parse_args(argv)
    if args.baseline_server:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_baseline_server(args.baseline_server))
        return 0
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - {"embedded", "redis"}
    if unknown or args.members < 2 or args.messages < 1 or args.rounds < 1:
        build_parser().error(f"bad arguments (unknown scenarios: {sorted(unknown)})")
    h.raise_fd_limit(args.members + 1024)
    command = " ".join([".venv/bin/python benchmarks/fanout.py", *sys.argv[1:]])
    facts = h.machine_facts(args.postgres if "redis" in args.scenarios else None)
    facts["client event loop"] = _loop_factory().__module__.split(".")[0]
    workdir = Path(tempfile.mkdtemp(prefix="roomcast-bench-"))
    procs = h.Processes(workdir)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C: clean up
    results: list[PhaseResult] = []
    timed_out = False
    failed = True  # until shown otherwise: keep the logs of a run that went wrong
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(asyncio.wait_for(_main(args, procs, results), args.time_limit))
    except TimeoutError:
        timed_out = True
        print(f"stopped: --time-limit {args.time_limit} s reached", file=sys.stderr)
    else:
        failed = any(
            r.lost or r.duplicates or r.out_of_order or r.timed_out or r.publisher_errors
            for r in results
        )
    finally:
        procs.stop_all()
        if args.keep_logs or failed:
            print(f"server logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    facts["load average at end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    facts["src/ digest at end"] = h.source_digest()
    text = report(results, facts, command, procs.logs)
    if facts["src/ digest at end"] != facts["src/ digest at start"]:
        text += "\nsrc/ changed during the run: servers started later ran other code.\n"
    if timed_out:
        text += f"\nStopped by --time-limit {args.time_limit} s: the tables are incomplete.\n"
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
