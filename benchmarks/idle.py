"""Idle-connection benchmark: server memory per open connection, and connections per second.

For each of ``--targets`` (``roomcast``: one ``roomcast serve`` on the embedded default;
``seed``: the seed tutorial's consumer on daphne and channels_redis; ``uvicorn``: the
floor, ``bare_asgi.py`` on uvicorn with roomcast's options; ``uvicorn-stock``: the same on
uvicorn's own websockets-sansio class), one server process
with its open-file limit raised (``setrlimit`` in the child before exec), then
``--connections`` WebSockets opened by ``--client-procs`` client processes at once
(``_clients.py``, 50 at a time each), spread over ``--rooms`` rooms, and left idle.
Measured:

* **connections/s**: connections open (roomcast: its ``joined`` frame received; seed: the
  handshake done, which the seed's consumer completes after its ``group_add``) divided by
  the time from the first connect to the last open, over all client processes (one
  host-wide ``time.monotonic()``).
* **KB per connection**: the server's VmRSS (``/proc/PID/status``) with every connection
  open and idle for ``--settle`` seconds, less its VmRSS before the first of them (taken
  after one warm-up connection was opened and closed, so lazy imports are not counted),
  divided by the connections open.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from dataclasses import dataclass

import _harness as h
from _clients import MemberPool, add_member_arguments, open_ws

TARGETS = ("roomcast", "seed", "uvicorn", "uvicorn-stock")


@dataclass
class IdleResult:
    """What one target measured."""

    target: str
    round: int
    connections: int  # asked for
    opened: int
    failed: int
    first_error: str
    connect_secs: float  # first connect -> last open, all client processes
    connections_per_sec: float
    rss_before_kb: int
    rss_after_kb: int
    kb_per_connection: float
    server_cores: float  # server CPU while connecting
    client_cores: float  # the client processes, summed, while connecting


async def _measure(
    target: str, round_: int, server: h.Proc, args: argparse.Namespace
) -> IdleResult:
    dialect = "seed" if target == "seed" else "v1"
    run = uuid.uuid4().hex[:8]
    ws, _ = await open_ws(f"ws://127.0.0.1:{server.port}/ws/chat/idle-{run}-w/", dialect)
    await ws.close()  # the warm-up connection
    urls = [
        ("A", f"ws://127.0.0.1:{server.port}/ws/chat/idle-{run}-{i % args.rooms}/")
        for i in range(args.connections)
    ]
    pool = MemberPool(urls, dialect, args.client_procs, args.client)
    pool.start()
    try:
        await pool.ready()
        await asyncio.sleep(args.settle)
        rss_before = h.rss_kb(server.popen.pid)
        before = h.sample([server], pool.pids)
        stats = await pool.open(timeout=args.open_timeout)
        after = h.sample([server], pool.pids)
        await asyncio.sleep(args.settle)
        rss_after = h.rss_kb(server.popen.pid)
    finally:
        await pool.stop()
    cpu = h.cpu_between(before, after)
    opened = sum(s.opened for s in stats)
    failed = [s for s in stats if s.failed]
    secs = max(s.finished for s in stats) - min(s.started for s in stats)
    return IdleResult(
        target=target,
        round=round_,
        connections=args.connections,
        opened=opened,
        failed=sum(s.failed for s in failed),
        first_error=failed[0].first_error if failed else "",
        connect_secs=secs,
        connections_per_sec=opened / max(secs, 1e-9),
        rss_before_kb=rss_before,
        rss_after_kb=rss_after,
        kb_per_connection=(rss_after - rss_before) / opened if opened else 0.0,
        server_cores=cpu.get(server.name, 0.0),
        client_cores=cpu["members"],
    )


async def _main(args: argparse.Namespace, procs: h.Processes, results: list[IdleResult]) -> None:
    redis = procs.redis() if "seed" in args.targets else None
    nofile = args.connections + 1024
    try:
        for round_ in range(1, args.rounds + 1):
            order = args.targets if round_ % 2 else list(reversed(args.targets))
            for target in order:
                print(f"idle/{target}, round {round_}: {args.connections}", file=sys.stderr)
                if target == "seed" and redis is not None:
                    server = procs.seed("seed", redis, nofile=nofile)
                elif target == "uvicorn":
                    server = procs.bare_uvicorn("uvicorn", "lean", nofile=nofile)
                elif target == "uvicorn-stock":
                    server = procs.bare_uvicorn("uvicorn-stock", "websockets-sansio", nofile=nofile)
                else:
                    data_dir = procs.workdir / f"idle-{round_}"
                    server = procs.roomcast("roomcast", data_dir, {}, nofile=nofile)
                try:
                    result = await _measure(target, round_, server, args)
                finally:
                    procs.stop(server)
                results.append(result)
                print(
                    f"  {result.opened:,} open ({result.failed} failed) in "
                    f"{result.connect_secs:.1f} s: {result.connections_per_sec:,.0f}/s, "
                    f"{result.kb_per_connection:.1f} KB each",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        procs.stop_all()


def report(results: list[IdleResult], facts: dict[str, str], command: str) -> str:
    """The run as Markdown: machine, command, table, ratios."""
    out = ["## Machine", ""]
    out += [f"- {key}: {value}" for key, value in facts.items()]
    out += ["", "## Command", "", "```", command, "```", ""]
    out += ["## Idle connections: server memory and connect rate", ""]
    out += [
        "| target | round | asked | open | failed | connect s | connections/s "
        "| server RSS before MB | after MB | KB per connection | server cores "
        "| client cores (sum) |",
        "|" + " --- |" * 12,
    ]
    for r in results:
        out.append(
            f"| {r.target} | {r.round} | {r.connections:,} | {r.opened:,} | {r.failed} "
            f"| {r.connect_secs:.1f} | {r.connections_per_sec:,.0f} "
            f"| {r.rss_before_kb / 1024:,.1f} | {r.rss_after_kb / 1024:,.1f} "
            f"| {r.kb_per_connection:.1f} | {r.server_cores:.2f} | {r.client_cores:.2f} |"
        )
    for r in results:
        if r.failed:
            out.append(f"\n{r.target} round {r.round}: first failure: `{r.first_error}`")
    out += ["", "## Ratios: roomcast / seed, same round", ""]
    out += ["| round | connections/s | KB per connection |", "| --- | --- | --- |"]
    for r in results:
        other = next((o for o in results if o.round == r.round and o.target == "seed"), None)
        if r.target == "roomcast" and other is not None:
            rate = r.connections_per_sec / other.connections_per_sec if other.opened else 0
            mem = r.kb_per_connection / other.kb_per_connection if other.kb_per_connection else 0
            out.append(f"| {r.round} | {rate:.2f}x | {mem:.2f}x |")
    floors = [
        (r, o)
        for r in results
        for o in results
        if r.target == "roomcast" and o.target == "uvicorn" and o.round == r.round
    ]
    if floors:
        out += ["", "## roomcast above the server's floor (a bare ASGI app, same uvicorn)", ""]
        out += [
            "| round | KB per connection: roomcast - floor | floor KB "
            "| uvicorn's own protocol class KB |",
            "| --- | --- | --- | --- |",
        ]
        for r, o in floors:
            extra = r.kb_per_connection - o.kb_per_connection
            stock = next(
                (x for x in results if x.target == "uvicorn-stock" and x.round == r.round), None
            )
            stock_kb = f"{stock.kb_per_connection:.1f}" if stock else "-"
            out.append(f"| {r.round} | {extra:+.1f} | {o.kb_per_connection:.1f} | {stock_kb} |")
    return "\n".join(out) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's arguments."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/idle.py",
        description=__doc__.split("\n\n")[0]
        + " Starts its own servers on 127.0.0.1 and stops them; prints Markdown results.",
    )
    parser.add_argument(
        "--targets",
        default="roomcast,seed,uvicorn,uvicorn-stock",
        help="roomcast, seed, uvicorn (bare_asgi.py on roomcast serve's protocol class: the "
        "server's own floor), uvicorn-stock (the same on uvicorn's websockets-sansio)",
    )
    parser.add_argument(
        "--connections", type=int, default=10_000, help="idle connections (default 10000)"
    )
    parser.add_argument("--rooms", type=int, default=100, help="rooms they join (default 100)")
    add_member_arguments(parser, "client processes")
    parser.add_argument(
        "--settle", type=float, default=2.0, help="idle seconds before each RSS (default 2)"
    )
    parser.add_argument(
        "--open-timeout", type=float, default=120.0, help="seconds to open them (default 120)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat, order reversed")
    h.add_run_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every connection opened."""
    args = build_parser().parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if set(args.targets) - set(TARGETS) or args.connections < 1 or args.rounds < 1:
        build_parser().error("bad arguments")
    h.raise_fd_limit(1024 + 64)
    facts = h.machine_facts(None)
    facts["member client"] = args.client
    facts["client processes"] = str(args.client_procs)
    results: list[IdleResult] = []
    return h.run_benchmark(
        "idle.py",
        args,
        facts,
        lambda procs: _main(args, procs, results),
        results,
        failed=lambda rs: any(r.failed or r.opened < r.connections for r in rs),
        report=lambda command, _: report(results, facts, command),
    )


if __name__ == "__main__":
    sys.exit(main())
