"""Scenario (g): idle sockets subscribed to many rooms: memory per socket, connect rate.

Cases, each on a ``roomcast serve`` of its own (the embedded default), all over the same
``--rooms`` rooms (2,000 by default), guests, opened at once by ``--client-procs`` client
processes (``_clients.py``, 50 at a time each) and left idle:

``big`` (``--sockets``, 10,000):
    ``chat x1``: one-room sockets, ``/ws/chat/<room>/``, socket i in room i mod
    ``--rooms`` (5 sockets a room); ``ws x5``: multi-room sockets, ``/ws/``, each
    subscribed to ``--rooms-per-socket`` (5) rooms drawn at random (a fixed seed) out of
    ``--rooms`` (about 25 sockets a room).
``goal`` (``--goal-sockets``, 2,000; issue 8's goal: a socket subscribed to 10 rooms
costs at most 2x one single-room socket):
    ``chat x1`` and ``ws x1`` (one room each, every room once) and ``ws x10``
    (``--goal-rooms`` rooms each, about 10 sockets a room). Every room has subscribers
    in all three, so the rooms themselves cost the same and the difference is the
    subscriptions.

Measured, as ``idle.py`` measures them: **KB per socket** = the server's VmRSS with every
socket open, subscribed and idle for ``--settle`` seconds, less its VmRSS before the first
(after one warm-up socket of each kind was opened and closed), divided by the sockets
open; **sockets/s** = sockets open (their ``joined`` frame, on ``/ws/`` the ``joined``
of every room they subscribe to) / (last open - first connect), and subscriptions/s.
Everything listens on 127.0.0.1 and stops at the end, also after an error, Ctrl-C or
``--time-limit``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import uuid
from dataclasses import dataclass

import _harness as h
from _clients import MemberPool, Spec, add_member_arguments, open_ws

CASES = ("big", "goal")
#: Seed of the rooms each /ws/ socket subscribes to: every case and run draws the same.
ROOMS_SEED = 8


@dataclass(frozen=True)
class Case:
    """One measurement: ``sockets`` sockets on ``endpoint`` (chat or ws), each in
    ``rooms_per_socket`` rooms."""

    group: str  # big or goal
    endpoint: str
    sockets: int
    rooms_per_socket: int

    @property
    def name(self) -> str:
        return f"{self.endpoint} x{self.rooms_per_socket}"


@dataclass
class MultiroomResult:
    """What one case measured."""

    group: str
    target: str  # the case's name: "chat x1", "ws x5"...
    endpoint: str
    round: int
    sockets: int  # asked for
    rooms_per_socket: int
    rooms: int  # rooms they are spread over
    opened: int
    failed: int
    first_error: str
    connect_secs: float  # first connect -> last socket subscribed to all its rooms
    sockets_per_sec: float
    subscriptions_per_sec: float
    rss_before_kb: int
    rss_after_kb: int
    kb_per_socket: float
    server_cores: float  # server CPU while connecting
    client_cores: float  # the client processes, summed, while connecting


def _cases(args: argparse.Namespace) -> list[Case]:
    cases = []
    if "big" in args.cases:
        cases += [Case("big", "chat", args.sockets, 1)]
        cases += [Case("big", "ws", args.sockets, args.rooms_per_socket)]
    if "goal" in args.cases:
        cases += [Case("goal", "chat", args.goal_sockets, 1)]
        cases += [Case("goal", "ws", args.goal_sockets, 1)]
        cases += [Case("goal", "ws", args.goal_sockets, args.goal_rooms)]
    return cases


def _specs(case: Case, base: str, run: str, rooms: int) -> list[Spec]:
    if case.rooms_per_socket == 1:
        names = [(f"g-{run}-{i % rooms}",) for i in range(case.sockets)]
    else:
        rng = random.Random(ROOMS_SEED)
        names = [
            tuple(f"g-{run}-{j}" for j in rng.sample(range(rooms), case.rooms_per_socket))
            for _ in range(case.sockets)
        ]
    if case.endpoint == "chat":
        return [Spec("A", f"{base}/ws/chat/{room[0]}/") for room in names]
    return [Spec("A", f"{base}/ws/", None, room) for room in names]


async def _measure(
    case: Case, round_: int, server: h.Proc, args: argparse.Namespace
) -> MultiroomResult:
    run = uuid.uuid4().hex[:8]
    base = f"ws://127.0.0.1:{server.port}"
    # Warm-up: one socket of each kind, so that lazy imports are not counted.
    ws, _ = await open_ws(f"{base}/ws/chat/g-{run}-w/", "v1")
    await ws.close()
    ws, _ = await open_ws(f"{base}/ws/", "mux", rooms=(f"g-{run}-w", f"g-{run}-v"))
    await ws.close()
    specs = _specs(case, base, run, args.rooms)
    pool = MemberPool(specs, "v1" if case.endpoint == "chat" else "mux", args.client_procs)
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
    secs = max(max(s.finished for s in stats) - min(s.started for s in stats), 1e-9)
    return MultiroomResult(
        group=case.group,
        target=case.name,
        endpoint=case.endpoint,
        round=round_,
        sockets=case.sockets,
        rooms_per_socket=case.rooms_per_socket,
        rooms=min(args.rooms, case.sockets * case.rooms_per_socket),
        opened=opened,
        failed=sum(s.failed for s in failed),
        first_error=failed[0].first_error if failed else "",
        connect_secs=secs,
        sockets_per_sec=opened / secs,
        subscriptions_per_sec=opened * case.rooms_per_socket / secs,
        rss_before_kb=rss_before,
        rss_after_kb=rss_after,
        kb_per_socket=(rss_after - rss_before) / opened if opened else 0.0,
        server_cores=cpu.get(server.name, 0.0),
        client_cores=cpu["members"],
    )


async def _main(
    args: argparse.Namespace, procs: h.Processes, results: list[MultiroomResult]
) -> None:
    cases = _cases(args)
    try:
        for round_ in range(1, args.rounds + 1):
            for case in cases if round_ % 2 else list(reversed(cases)):
                print(
                    f"multiroom/{case.group} {case.name}, round {round_}: {case.sockets:,}",
                    file=sys.stderr,
                    flush=True,
                )
                data_dir = procs.workdir / f"{case.group}-{case.endpoint}-{case.rooms_per_socket}"
                nofile = case.sockets + 1024
                server = procs.roomcast("roomcast", data_dir, {}, nofile=nofile)
                try:
                    result = await _measure(case, round_, server, args)
                finally:
                    procs.stop(server)
                results.append(result)
                print(
                    f"  {result.opened:,} open ({result.failed} failed) in "
                    f"{result.connect_secs:.1f} s: {result.sockets_per_sec:,.0f} sockets/s, "
                    f"{result.subscriptions_per_sec:,.0f} subscriptions/s, "
                    f"{result.kb_per_socket:.1f} KB each",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        procs.stop_all()


def find(
    results: list[MultiroomResult], group: str, name: str, round_: int
) -> MultiroomResult | None:
    """The result of case ``name`` of ``group`` in round ``round_``."""
    return next((r for r in results if (r.group, r.target, r.round) == (group, name, round_)), None)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def report(results: list[MultiroomResult], facts: dict[str, str], command: str) -> str:
    """The run as Markdown: machine, command, table, ratios."""
    out = ["## Machine", ""]
    out += [f"- {key}: {value}" for key, value in facts.items()]
    out += ["", "## Command", "", "```", command, "```", ""]
    out += ["## Idle sockets in many rooms: server memory and connect rate", ""]
    out += [
        "| case | target | round | sockets | rooms each | over rooms | open | failed "
        "| connect s | sockets/s | subscriptions/s | server RSS before MB | after MB "
        "| KB per socket | server cores | client cores (sum) |",
        "|" + " --- |" * 16,
    ]
    for r in results:
        out.append(
            f"| {r.group} | {r.target} | {r.round} | {r.sockets:,} | {r.rooms_per_socket} "
            f"| {r.rooms:,} | {r.opened:,} | {r.failed} | {r.connect_secs:.1f} "
            f"| {r.sockets_per_sec:,.0f} | {r.subscriptions_per_sec:,.0f} "
            f"| {r.rss_before_kb / 1024:,.1f} | {r.rss_after_kb / 1024:,.1f} "
            f"| {r.kb_per_socket:.1f} | {r.server_cores:.2f} | {r.client_cores:.2f} |"
        )
    for r in results:
        if r.failed:
            out.append(f"\n{r.group} {r.target} round {r.round}: first failure: `{r.first_error}`")
    big = [r for r in results if r.group == "big" and r.endpoint == "ws"]
    if big:
        out += ["", "## big: multi-room sockets / one-room sockets, same round", ""]
        out += [
            "| round | ratio | KB per socket | sockets/s | subscriptions/s |",
            "|" + " --- |" * 5,
        ]
        for ws in big:
            chat = find(results, "big", "chat x1", ws.round)
            if chat is None:
                continue
            kb = _ratio(ws.kb_per_socket, chat.kb_per_socket)
            out.append(
                f"| {ws.round} | {ws.target} / chat x1 | {kb} "
                f"| {_ratio(ws.sockets_per_sec, chat.sockets_per_sec)} "
                f"| {_ratio(ws.subscriptions_per_sec, chat.subscriptions_per_sec)} |"
            )
    goal = [r for r in results if r.group == "goal" and r.endpoint == "ws"]
    many = [r for r in goal if r.rooms_per_socket > 1]
    if many:
        out += ["", "## goal: a socket in N rooms / a socket in one room (<= 2x), same round", ""]
        out += [
            "| round | N | KB: ws xN / chat x1 | KB: ws xN / ws x1 "
            "| KB per extra subscription | ws xN KB | ws x1 KB | chat x1 KB |",
            "|" + " --- |" * 8,
        ]
        for r in many:
            chat = find(results, "goal", "chat x1", r.round)
            one = find(results, "goal", "ws x1", r.round)
            chat_kb = chat.kb_per_socket if chat else 0.0
            one_kb = one.kb_per_socket if one else 0.0
            extra = f"{(r.kb_per_socket - one_kb) / (r.rooms_per_socket - 1):.2f}" if one else "-"
            out.append(
                f"| {r.round} | {r.rooms_per_socket} | {_ratio(r.kb_per_socket, chat_kb)} "
                f"| {_ratio(r.kb_per_socket, one_kb)} | {extra} | {r.kb_per_socket:.1f} "
                f"| {one_kb:.1f} | {chat_kb:.1f} |"
            )
    return "\n".join(out) + "\n"


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's arguments."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/multiroom.py",
        description=__doc__.split("\n\n")[0]
        + " Starts its own servers on 127.0.0.1 and stops them; prints Markdown results.",
    )
    parser.add_argument(
        "--cases", default="big,goal", help="comma-separated: big, goal (default both)"
    )
    parser.add_argument(
        "--sockets", type=int, default=10_000, help="big: sockets of each kind (default 10000)"
    )
    parser.add_argument(
        "--rooms-per-socket",
        type=int,
        default=5,
        help="big: rooms each /ws/ socket subscribes to (default 5)",
    )
    parser.add_argument(
        "--goal-sockets", type=int, default=2000, help="goal: sockets of each kind (default 2000)"
    )
    parser.add_argument(
        "--goal-rooms", type=int, default=10, help="goal: rooms of the many-room socket (10)"
    )
    parser.add_argument(
        "--rooms", type=int, default=2000, help="rooms the sockets spread over (default 2000)"
    )
    add_member_arguments(parser, "client processes")
    parser.add_argument(
        "--settle", type=float, default=2.0, help="idle seconds before each RSS (default 2)"
    )
    parser.add_argument(
        "--open-timeout",
        type=float,
        default=600.0,
        help="seconds to open and subscribe the sockets of one case (default 600: 10,000 "
        "sockets in 5 rooms each may take minutes when every subscribe reads the database)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat, order reversed")
    h.add_run_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every socket opened and subscribed."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if set(args.cases) - set(CASES) or not args.cases or args.rounds < 1:
        parser.error(f"--cases takes {', '.join(CASES)}; --rounds at least 1")
    if min(args.sockets, args.goal_sockets, args.rooms) < 1:
        parser.error("--sockets, --goal-sockets and --rooms must be at least 1")
    if not 1 <= args.rooms_per_socket <= args.rooms or not 2 <= args.goal_rooms <= args.rooms:
        parser.error("--rooms-per-socket must be 1 to --rooms, --goal-rooms 2 to --rooms")
    h.raise_fd_limit(1024 + 64)
    facts = h.machine_facts(None)
    facts["member client"] = args.client
    facts["client processes"] = str(args.client_procs)
    results: list[MultiroomResult] = []
    return h.run_benchmark(
        "multiroom.py",
        args,
        facts,
        lambda procs: _main(args, procs, results),
        results,
        failed=lambda rs: any(r.failed or r.opened < r.sockets for r in rs),
        report=lambda command, _: report(results, facts, command),
    )


if __name__ == "__main__":
    sys.exit(main())
