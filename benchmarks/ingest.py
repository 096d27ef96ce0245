"""Ingest benchmark: many publishers in many rooms, stored messages per second.

For each of ``--databases`` (``sqlite``: ``roomcast serve`` on the embedded default;
``postgres``: the same on a database of this run's own on ``--postgres``, dropped at the
end), one ``roomcast serve`` process with the in-memory layer, and ``--publishers``
connections in ``--rooms`` rooms (publisher ``i`` in room ``i % rooms``), all in this
process. Each publisher sends ``--messages`` roomcast.v1 messages back to back (flat out:
it does not wait for acks), all publishers at once. Measured:

* **stored msgs/s**: acks received divided by the time from the first send to the last
  ack. An ack means the message was stored (roomcast acks after the commit) and got its seq.
* **in the database**: rows of the run's rooms counted afterwards with SQL, which must
  equal the acks; every ack's seq must be unique within its room.
* **ack latency**: each message's send -> its ack (a queue: every publisher sends all of
  its messages at once).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import _harness as h
from _clients import open_ws
from _report import percentiles
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

DATABASES = ("sqlite", "postgres")
#: SQL: rows stored in the run's rooms (room names start with the run's prefix).
COUNT_SQL = (
    "SELECT count(*), count(DISTINCT m.room_id) FROM roomcast_message m "
    "JOIN roomcast_room r ON r.id = m.room_id WHERE r.name LIKE %s"
)


@dataclass
class IngestResult:
    """What one database measured."""

    database: str
    round: int
    publishers: int
    rooms: int
    messages: int  # sent, all publishers
    acked: int = 0
    errors: int = 0  # error frames sent to publishers
    first_error: str = ""
    duplicate_seqs: int = 0  # an ack's seq already acked in its room
    in_database: int = 0  # rows counted afterwards
    rooms_in_database: int = 0
    timed_out: bool = False
    stored_per_sec: float = 0.0
    ack_ms: dict[str, float] = field(default_factory=dict)
    server_cores: float = 0.0
    publisher_cores: float = 0.0  # this process
    server_cpu_us_per_msg: float = 0.0


async def _publish(
    ws: ClientConnection, tag: str, count: int, size: int, errors: list[str]
) -> tuple[list[float], dict[int, tuple[int, float]]]:
    """Send ``count`` messages back to back; their send times, and message -> (seq, ack)."""
    acks: dict[int, tuple[int, float]] = {}
    done = asyncio.Event()

    async def read() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                if '"type":"ack"' in raw:
                    frame = json.loads(raw)
                    index = int(frame["client_id"].rsplit("-", 1)[1])
                    acks[index] = (int(frame["seq"]), time.monotonic())
                    if len(acks) == count:
                        done.set()
                elif '"type":"error"' in raw:
                    errors.append(str(raw))

    reader = asyncio.create_task(read())
    sent: list[float] = []
    try:
        for i in range(count):
            text = f"{tag}#{i:06d} ".ljust(size, "x")
            frame = json.dumps({"type": "message", "message": text, "client_id": f"{tag}-{i}"})
            sent.append(time.monotonic())
            await ws.send(frame)
        await done.wait()
    finally:
        reader.cancel()
    return sent, acks


def _count_rows(database: str, data_dir: Path, url: str, prefix: str) -> tuple[int, int]:
    if database == "sqlite":
        with contextlib.closing(sqlite3.connect(data_dir / "db.sqlite3", timeout=30)) as conn:
            row = conn.execute(COUNT_SQL.replace("%s", "?"), (prefix + "%",)).fetchone()
    else:
        import psycopg

        with psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute(COUNT_SQL, (prefix + "%",)).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


async def _measure(
    database: str, round_: int, server: h.Proc, data_dir: Path, url: str, args: argparse.Namespace
) -> IngestResult:
    result = IngestResult(
        database, round_, args.publishers, args.rooms, args.publishers * args.messages
    )
    prefix = f"ingest-{uuid.uuid4().hex[:8]}-"
    base = f"ws://127.0.0.1:{server.port}/ws/chat/{prefix}"
    gate = asyncio.Semaphore(50)

    async def open_one(i: int) -> ClientConnection:
        async with gate:
            ws, _ = await open_ws(f"{base}{i % args.rooms}/", "v1")
        return ws

    conns = list(await asyncio.gather(*(open_one(i) for i in range(args.publishers))))
    errors: list[str] = []
    before = h.sample([server])
    tasks = [
        asyncio.create_task(_publish(ws, f"p{i}", args.messages, args.size, errors))
        for i, ws in enumerate(conns)
    ]
    try:
        async with asyncio.timeout(args.timeout):
            outcome = await asyncio.gather(*tasks)
    except TimeoutError:
        result.timed_out = True
        outcome = []
    after = h.sample([server])
    for ws in conns:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await ws.close()
        ws.transport.abort()
    cpu = h.cpu_between(before, after)
    result.server_cores, result.publisher_cores = cpu.get(server.name, 0.0), cpu["client"]
    result.errors, result.first_error = len(errors), errors[0] if errors else ""
    if outcome:
        per_room: dict[int, list[int]] = {}
        latencies: list[float] = []
        for i, (sent, acks) in enumerate(outcome):
            per_room.setdefault(i % args.rooms, []).extend(seq for seq, _ in acks.values())
            latencies += [t - sent[index] for index, (_, t) in acks.items()]
        result.acked = len(latencies)
        result.duplicate_seqs = sum(len(v) - len(set(v)) for v in per_room.values())
        first = min(sent[0] for sent, _ in outcome if sent)
        last = max(t for _, acks in outcome for _, t in acks.values())
        result.stored_per_sec = result.acked / max(last - first, 1e-9)
        result.ack_ms = percentiles(latencies)
        server_secs = result.server_cores * (after.wall - before.wall)
        result.server_cpu_us_per_msg = server_secs / max(result.acked, 1) * 1e6
    result.in_database, result.rooms_in_database = await asyncio.to_thread(
        _count_rows, database, data_dir, url, prefix
    )
    return result


async def _main(args: argparse.Namespace, procs: h.Processes, results: list[IngestResult]) -> None:
    database_url: str | None = None
    try:
        if "postgres" in args.databases:
            database_url = h.create_database(args.postgres)
        for round_ in range(1, args.rounds + 1):
            order = args.databases if round_ % 2 else list(reversed(args.databases))
            for database in order:
                print(
                    f"ingest/{database}, round {round_}: {args.publishers} publishers in "
                    f"{args.rooms} rooms, {args.messages} messages each",
                    file=sys.stderr,
                )
                data_dir = procs.workdir / f"ingest-{database}-{round_}"
                env = {"ROOMCAST_DATABASE_URL": database_url or ""}
                if database == "sqlite":
                    env = {}
                server = procs.roomcast(f"roomcast-{database}", data_dir, env)
                try:
                    result = await _measure(
                        database, round_, server, data_dir, database_url or "", args
                    )
                finally:
                    procs.stop(server)
                results.append(result)
                print(
                    f"  {result.acked:,}/{result.messages:,} acked, "
                    f"{result.stored_per_sec:,.0f} stored/s, {result.in_database:,} in the "
                    f"database" + (" (TIMED OUT)" if result.timed_out else ""),
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        procs.stop_all()
        if database_url is not None:
            h.drop_database(args.postgres, database_url)


def _failed(r: IngestResult) -> bool:
    return bool(
        r.timed_out
        or r.errors
        or r.duplicate_seqs
        or r.acked != r.messages
        or r.in_database != r.acked
    )


def report(results: list[IngestResult], facts: dict[str, str], command: str) -> str:
    """The run as Markdown: machine, command, table, ratios."""
    out = ["## Machine", ""]
    out += [f"- {key}: {value}" for key, value in facts.items()]
    out += ["", "## Command", "", "```", command, "```", ""]
    out += ["## Ingest: stored messages per second", ""]
    out += [
        "| database | round | publishers | rooms | sent | acked | in database | dup seqs "
        "| errors | stored msgs/s | ack p50 ms | ack p99 ms | ack max ms | server cores "
        "| publisher cores | server CPU µs per msg |",
        "|" + " --- |" * 16,
    ]
    for r in results:
        ack = r.ack_ms
        out.append(
            f"| {r.database} | {r.round} | {r.publishers} | {r.rooms} | {r.messages:,} "
            f"| {r.acked:,} | {r.in_database:,} | {r.duplicate_seqs} | {r.errors} "
            f"| {r.stored_per_sec:,.0f} | {ack.get('p50', 0):,.1f} | {ack.get('p99', 0):,.1f} "
            f"| {ack.get('max', 0):,.1f} | {r.server_cores:.2f} | {r.publisher_cores:.2f} "
            f"| {r.server_cpu_us_per_msg:,.0f} |"
        )
    for r in results:
        if _failed(r):
            out.append(
                f"\n{r.database} round {r.round}: timed out {r.timed_out}, error frames "
                f"{r.errors}" + (f" (first: `{r.first_error}`)" if r.first_error else "")
            )
    return "\n".join(out) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's arguments."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/ingest.py",
        description=__doc__.split("\n\n")[0]
        + " Starts its own servers on 127.0.0.1 and stops them; prints Markdown results.",
    )
    parser.add_argument("--databases", default="sqlite,postgres", help="sqlite, postgres")
    parser.add_argument("--publishers", type=int, default=50, help="publishers (default 50)")
    parser.add_argument("--rooms", type=int, default=50, help="rooms (default 50)")
    parser.add_argument(
        "--messages", type=int, default=100, help="messages per publisher (default 100)"
    )
    parser.add_argument("--size", type=int, default=100, help="message text length (default 100)")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds for every ack (default 120)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat, order reversed")
    h.add_run_arguments(parser, postgres=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every message was acked once and is in the database."""
    args = build_parser().parse_args(argv)
    args.databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    if set(args.databases) - set(DATABASES) or min(args.publishers, args.rooms) < 1:
        build_parser().error("bad arguments")
    h.raise_fd_limit(args.publishers + 1024)
    facts = h.machine_facts(args.postgres if "postgres" in args.databases else None)
    results: list[IngestResult] = []
    return h.run_benchmark(
        "ingest.py",
        args,
        facts,
        lambda procs: _main(args, procs, results),
        results,
        failed=lambda rs: any(_failed(r) for r in rs),
        report=lambda command, _: report(results, facts, command),
    )


if __name__ == "__main__":
    sys.exit(main())
