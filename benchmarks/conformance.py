"""Autobahn conformance of ``roomcast serve``'s socket layer, against stock uvicorn, in one run.

Two echo servers (``echo_asgi.py``), both on uvicorn with the options ``roomcast serve``
passes (uvloop, httptools, ``ws_max_size`` 1 MiB, permessage-deflate off):

* ``roomcast``: roomcast's protocol class (``server.lean_ws``), text replies written
  through roomcast's direct path (``direct.try_write``) where ``hub.Member`` would;
* ``uvicorn``: uvicorn's own ``websockets-sansio`` class, every reply through ASGI.

`kosoku <https://pypi.org/project/kosoku/>`_ drives the Autobahn TestSuite's case files
at both (its fuzzing client, in a child process per chapter and server, one case at a
time), chapter by chapter, alternating servers so that load on the machine falls on both
alike. A chapter gets ``--chapter-timeout`` seconds per server and the run
``--time-limit``; a chapter cut short is reported as not finished (its cases are missing
from the tables). Every case whose verdict differs between the servers is run
``--reruns`` more times on each, since some Autobahn verdicts (NON-STRICT against OK)
depend on how a burst of frames is split between reads. Then, unless ``--no-large``, the
chapter 9 cases (messages up to 16 MiB) run again on a second pair of servers whose
``ws_max_size`` is 16 MiB (uvicorn's default), since at roomcast's 1 MiB both servers
rightly close the larger ones with 1009.

Everything listens on 127.0.0.1 and is stopped at the end, on an error, Ctrl-C, SIGTERM
or ``--time-limit``. The report: per server, cases passed / non-strict / informational /
unimplemented / failed; every case where roomcast's stack does worse than stock; the
cases both fail. Exit status 1 when roomcast's stack is worse than stock on a case in every
run of it, or a chapter did not finish.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _harness as h

#: Server name -> echo_asgi.py's WS argument.
SERVERS = {"roomcast": "lean", "uvicorn": "websockets-sansio"}
#: The Autobahn TestSuite's chapters (8 and 11 do not exist).
CHAPTERS = ("1", "2", "3", "4", "5", "6", "7", "9", "10", "12", "13")
#: uvicorn's default ws_max_size, and the largest Autobahn message (9.1.6, 9.2.6).
LARGE_MAX_BYTES = 16 * 1024 * 1024
#: Verdict categories, best first; "worse" compares positions in this order.
CATEGORIES = ("passed", "informational", "non-strict", "unimplemented", "failed")
#: behaviorClose verdicts that are acceptable (Autobahn colours the rest red).
_CLOSE_OK = ("OK", "INFORMATIONAL")
_EXCEPTION = re.compile(r"^(\w+(?:Error|Exception)): .*")
#: Distinct lines of a server's log shown in the report.
LOG_LINES_SHOWN = 8
#: Payload characters of a received message shown in the report.
PAYLOAD_SHOWN = 40
SELF = str(Path(__file__).resolve())

#: What an outcome both servers share means, by case glob and the close code they sent
#: (None: any), shown beside those cases only when observed. websockets' own notes on
#: 3.x-7.1.5: compliance/README.rst in its repository ("Conformance notes").
NOTES: tuple[tuple[str, int | None, str], ...] = (
    (
        "9.*",
        1009,
        "message larger than ws_max_size (roomcast serve: 1 MiB): closed with 1009 "
        "(message too big, RFC 6455 7.4.1), as roomcast means to",
    ),
    (
        "7.1.5",
        1002,
        "a close frame inside a fragmented message: websockets fails the connection with "
        "1002 'incomplete fragmented message'; Autobahn wants the 1000 echoed (RFC 6455 "
        "5.5.1 says an endpoint 'typically' echoes the code, not that it must)",
    ),
    (
        "[345].*",
        1002,
        "websockets fails the connection on the bad frame before the app has echoed the "
        "valid message before it (they came in one read); allowed by RFC 6455. Which of "
        "OK / NON-STRICT a run gets depends on how the frames fall into reads",
    ),
    (
        "6.4.*",
        1007,
        "invalid UTF-8 found when the whole message is decoded (uvicorn decodes complete "
        "messages), not on the fragment that breaks it (fail-fast is a SHOULD): still 1007",
    ),
    ("7.1.6", None, "a close right behind a 256 KiB message: the spec leaves the order open"),
    (
        "7.13.*",
        1002,
        "close codes 5000 and 65535 (undefined): websockets answers 1002 'invalid status code'",
    ),
    (
        "1[23].*",
        None,
        "permessage-deflate, which roomcast serve turns off (ws_per_message_deflate=False)",
    ),
)


@dataclass
class CaseOutcome:
    """One Autobahn case run once against one server."""

    server: str
    phase: str  # "standard" (roomcast serve's options) or "large" (ws_max_size 16 MiB)
    run: int  # 0: the chapter run; 1..: reruns of a case whose verdict differed
    id: str
    behavior: str  # Autobahn's verdict on the message exchange
    behavior_close: str  # ...and on the closing handshake
    category: str  # one of CATEGORIES
    remote_close_code: int | None  # the code the server sent
    remote_close_reason: str | None
    result: str
    result_close: str
    duration_ms: int
    description: str = ""
    expectation: str = ""
    received: list[str] = field(default_factory=list)


def category(behavior: str, behavior_close: str) -> str:
    """A case's verdict as one word: failed if either verdict fails."""
    if behavior in ("FAILED", "ERROR") or behavior_close not in _CLOSE_OK:
        return "failed"
    return {"OK": "passed", "NON-STRICT": "non-strict", "INFORMATIONAL": "informational"}.get(
        behavior, "unimplemented"
    )


def rank(outcome: CaseOutcome) -> int:
    """Position of the outcome's category, 0 best."""
    return CATEGORIES.index(outcome.category)


def case_key(case_id: str) -> tuple[int, ...]:
    """Numeric order of case ids (1.2.10 after 1.2.9)."""
    return tuple(int(part) for part in case_id.split("."))


# -- the client process: kosoku -------------------------------------------------------------


def _event(event: Any) -> str:
    """One received event (message, ping, pong) in a few words."""
    kind = str(event[0])
    if kind == "message" and len(event) >= 3:
        payload, binary = event[1], event[2]
        size = len(payload)
        shown = payload[:PAYLOAD_SHOWN] if isinstance(payload, str) else payload[:20].hex()
        return f"{'binary' if binary else 'text'} message, {size} B: {shown!r}"
    if kind in ("ping", "pong") and len(event) >= 2:
        return f"{kind}, {len(event[1])} B"
    return kind


def client_main(argv: list[str]) -> int:
    """``conformance.py _client URL OUT [--include G]... [--exclude G]...``: run the cases
    with kosoku and write one JSON record per case to OUT."""
    parser = argparse.ArgumentParser(prog="conformance.py _client")
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("--include", action="append", default=[])
    parser.add_argument("--exclude", action="append", default=[])
    args = parser.parse_args(argv)
    # Imported here: kosoku puts its Autobahn case files and Python 2 shims (a module
    # named pkg_resources among them) at the front of sys.path; only this process has them.
    from kosoku import FailureError, run_fuzzingclient

    async def run() -> list[Any]:
        try:
            return list(
                await run_fuzzingclient(args.url, args.include or None, args.exclude or None)
            )
        except FailureError as failure:  # some case did not pass: its results all the same
            return list(failure.results)

    records = [
        {
            "id": r.case_id,
            "behavior": r.behavior.value,
            "behavior_close": r.behavior_close.value,
            "remote_close_code": r.remote_close_code,
            "remote_close_reason": r.remote_close_reason,
            "result": r.result,
            "result_close": r.result_close,
            "duration_ms": r.duration,
            "description": r.description,
            "expectation": r.expectation,
            "received": [_event(e) for e in (r.received or [])[:6]],
        }
        for r in asyncio.run(run())
    ]
    args.out.write_text(json.dumps(records))
    # kosoku 0.1.0 sometimes aborts (SIGABRT, nothing printed) while the interpreter
    # shuts down, after the run; seen here 3 times in 15 runs of chapter 1. The results
    # are written: leave without the shutdown.
    sys.stdout.flush()
    os._exit(0)


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Server:
    """One echo server of the run."""

    name: str
    phase: str
    proc: h.Proc
    counts_path: Path
    max_size: int
    counts: dict[str, int] = field(default_factory=dict)  # read when it stopped


@dataclass
class RunState:
    """What the report needs besides the case outcomes."""

    servers: list[Server] = field(default_factory=list)
    not_finished: list[str] = field(default_factory=list)  # "<server> <phase> chapter N: why"
    workdir: Path = Path()  # the run's temporary directory (set by _measure)
    facts: dict[str, str] = field(default_factory=dict)  # the report's, JSON's too


def start_server(procs: h.Processes, name: str, phase: str, max_size: int) -> Server:
    """``echo_asgi.py`` as server ``name`` on a free port."""
    port = h.free_port()
    counts = procs.workdir / f"{name}-{phase}-counts.json"
    argv = [sys.executable, str(h.REPO / "benchmarks" / "echo_asgi.py"), str(port)]
    argv += [SERVERS[name], "--counts", str(counts), "--ws-max-size", str(max_size)]
    env = {"PYTHONPATH": str(h.REPO / "benchmarks")}
    proc = procs.start(f"{name}-{phase}", argv, port=port, env=env)
    return Server(name, phase, proc, counts, max_size)


async def run_cases(
    server: Server,
    include: list[str],
    exclude: list[str],
    timeout: float,
    workdir: Path,
) -> list[dict[str, Any]] | str:
    """Run the selected cases against ``server``: their records, or why there are none."""
    out = workdir / f"cases-{server.name}-{server.phase}-{time.monotonic_ns()}.json"
    argv = [sys.executable, SELF, "_client"]
    argv += [f"ws://127.0.0.1:{server.proc.port}", str(out)]
    argv += [f"--include={glob}" for glob in include]
    argv += [f"--exclude={glob}" for glob in exclude]
    child = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(child.communicate(), timeout)
    except TimeoutError:
        child.kill()
        await child.wait()
        return f"not finished within {timeout:.0f} s"
    except asyncio.CancelledError:  # --time-limit: do not leave the client running
        child.kill()
        await child.wait()
        raise
    if child.returncode != 0 or not out.exists():
        tail = output.decode(errors="replace").strip().splitlines()[-3:]
        return f"kosoku client exited with {child.returncode}: {' | '.join(tail)}"
    return list(json.loads(out.read_text()))


def outcome(server: Server, run: int, record: dict[str, Any]) -> CaseOutcome:
    """A client record as a CaseOutcome of ``server``."""
    return CaseOutcome(
        server=server.name,
        phase=server.phase,
        run=run,
        category=category(record["behavior"], record["behavior_close"]),
        **record,
    )


def _selected(chapter: str, include: list[str]) -> list[str] | None:
    """kosoku's include globs for ``chapter``'s share of the selection; None if none of
    it is selected."""
    if not include:
        return [f"{chapter}.*"]
    mine = [glob for glob in include if fnmatch.fnmatchcase(chapter, glob.split(".")[0])]
    return mine or None


async def run_phase(
    args: argparse.Namespace,
    state: RunState,
    results: list[CaseOutcome],
    servers: list[Server],
    chapters: tuple[str, ...],
    include: list[str],
    exclude: list[str],
) -> None:
    """Every chapter against every server of a phase, alternating servers."""
    for chapter in chapters:
        chapter_include = _selected(chapter, include)
        if chapter_include is None:
            continue
        chapter_exclude = exclude + [f"{c}.*" for c in CHAPTERS if c != chapter]
        for server in servers:
            records = await run_cases(
                server, chapter_include, chapter_exclude, args.chapter_timeout, state.workdir
            )
            where = f"{server.name} ({server.phase}) chapter {chapter}"
            if isinstance(records, str):
                state.not_finished.append(f"{where}: {records}")
                print(state.not_finished[-1], file=sys.stderr)
                continue
            results.extend(outcome(server, 0, r) for r in records)
            print(f"{where}: {len(records)} cases", file=sys.stderr)


def differing(results: list[CaseOutcome], phase: str) -> list[str]:
    """Ids of the cases whose first-run category differs between the two servers."""
    first: dict[tuple[str, str], CaseOutcome] = {
        (o.server, o.id): o for o in results if o.phase == phase and o.run == 0
    }
    ids = {case for _, case in first}
    return sorted(
        (
            case
            for case in ids
            if ("roomcast", case) in first
            and ("uvicorn", case) in first
            and first["roomcast", case].category != first["uvicorn", case].category
        ),
        key=case_key,
    )


async def rerun(
    args: argparse.Namespace,
    state: RunState,
    results: list[CaseOutcome],
    servers: list[Server],
    cases: list[str],
) -> None:
    """Run each of ``cases`` ``--reruns`` more times on every server, alternating."""
    for case in cases:
        for run in range(1, args.reruns + 1):
            for server in servers:
                records = await run_cases(server, [case], [], args.chapter_timeout, state.workdir)
                if isinstance(records, str):
                    state.not_finished.append(f"{server.name} rerun of {case}: {records}")
                    continue
                results.extend(outcome(server, run, r) for r in records)


async def stop(procs: h.Processes, state: RunState, server: Server) -> None:
    """Stop a server (its lifespan shutdown writes its reply counts) and read them."""
    await asyncio.to_thread(procs.stop, server.proc)
    if server.counts_path.exists():
        server.counts = json.loads(server.counts_path.read_text())
        state.facts[f"replies: {server.name} ({server.phase})"] = " ".join(
            f"{key}={value}" for key, value in server.counts.items()
        )


async def _measure(
    args: argparse.Namespace, procs: h.Processes, state: RunState, results: list[CaseOutcome]
) -> None:
    from roomcast.cli.serve import UVICORN_WS_MAX_BYTES  # roomcast serve's ws_max_size

    state.workdir = procs.workdir
    phases = [("standard", UVICORN_WS_MAX_BYTES, CHAPTERS)]
    if args.large:
        phases.append(("large", LARGE_MAX_BYTES, ("9",)))
    for phase, max_size, chapters in phases:
        servers = [start_server(procs, name, phase, max_size) for name in args.servers]
        state.servers.extend(servers)
        try:
            await run_phase(args, state, results, servers, chapters, args.cases, args.exclude)
            if len(servers) == 2 and args.reruns:
                await rerun(args, state, results, servers, differing(results, phase))
        finally:
            for server in servers:
                await stop(procs, state, server)


# -- the report -------------------------------------------------------------------------------


def _ids(outcomes: list[CaseOutcome]) -> str:
    return ", ".join(sorted({o.id for o in outcomes}, key=case_key))


def _what(o: CaseOutcome) -> str:
    """What happened in a case, in one cell: verdicts, the server's close, what the client
    received, and Autobahn's explanation where it says more than "as expected"."""
    text = f"{o.category} ({o.behavior}/{o.behavior_close})"
    if o.remote_close_code:
        text += f", closed {o.remote_close_code}"
        text += f" {o.remote_close_reason!r}" if o.remote_close_reason else ""
    text += "; got " + ("; ".join(o.received) if o.received else "nothing")
    for said in (o.result, o.result_close):
        if said and not said.startswith(_UNREMARKABLE) and said not in text:
            text += f"; {said}"
    return text.replace("|", "\\|")


#: Autobahn's explanations that add nothing to the verdict.
_UNREMARKABLE = ("Actual events match at least one expected", "Connection was properly closed")


def _note(case_id: str, code: int | None) -> str:
    for glob, note_code, note in NOTES:
        if fnmatch.fnmatchcase(case_id, glob) and note_code in (None, code):
            return note
    return ""


def _first(results: list[CaseOutcome], phase: str) -> dict[str, dict[str, CaseOutcome]]:
    """server -> case id -> its first run, in ``phase``."""
    table: dict[str, dict[str, CaseOutcome]] = {}
    for o in results:
        if o.phase == phase and o.run == 0:
            table.setdefault(o.server, {})[o.id] = o
    return table


def _summary_table(first: dict[str, dict[str, CaseOutcome]]) -> list[str]:
    lines = ["| server | cases | " + " | ".join(CATEGORIES) + " |"]
    lines.append("| --- | ---: | " + " | ".join("---:" for _ in CATEGORIES) + " |")
    for name in sorted(first, key=list(SERVERS).index):
        cases = first[name]
        counts = [sum(1 for o in cases.values() if o.category == c) for c in CATEGORIES]
        lines.append(f"| {name} | {len(cases)} | " + " | ".join(map(str, counts)) + " |")
    return lines


def _differences(
    results: list[CaseOutcome], phase: str, first: dict[str, dict[str, CaseOutcome]]
) -> tuple[list[str], int]:
    """The table of cases whose verdicts differ, worse for roomcast first; and how many
    cases roomcast did worse on in every run."""
    ours, stock = first.get("roomcast", {}), first.get("uvicorn", {})
    cases = [c for c in differing(results, phase)]
    if not cases:
        return ["No case's verdict differs between the two servers."], 0
    runs: dict[tuple[str, str], list[CaseOutcome]] = {}
    for o in results:
        if o.phase == phase:
            runs.setdefault((o.server, o.id), []).append(o)
    lines = [
        "| case | roomcast (first run) | uvicorn (first run) | all runs (verdict count): "
        "roomcast / uvicorn | roomcast worse |",
        "| --- | --- | --- | --- | --- |",
    ]
    always_worse = 0
    for case in sorted(cases, key=lambda c: (rank(stock[c]) - rank(ours[c]), case_key(c))):
        mine, theirs = runs[("roomcast", case)], runs[("uvicorn", case)]
        worst_theirs = max(rank(o) for o in theirs)
        worse_runs = sum(1 for o in mine if rank(o) > worst_theirs)
        if worse_runs == len(mine) and len(mine) == len(theirs):
            verdict, always_worse = f"in every run ({worse_runs}/{len(mine)})", always_worse + 1
        elif rank(ours[case]) > rank(stock[case]) and not worse_runs:
            verdict = "first run only: no run worse than uvicorn's worst"
        elif rank(ours[case]) > rank(stock[case]):
            verdict = f"worse than uvicorn's worst in {worse_runs}/{len(mine)} runs"
        else:
            verdict = "no: better"
        tally = " / ".join(
            ", ".join(f"{c} {n}" for c in CATEGORIES if (n := sum(o.category == c for o in side)))
            for side in (mine, theirs)
        )
        lines.append(
            f"| {case} | {_what(ours[case])} | {_what(stock[case])} | {tally} | {verdict} |"
        )
    return lines, always_worse


def _shared(first: dict[str, dict[str, CaseOutcome]], wanted: str) -> list[str]:
    """Cases in category ``wanted`` on every server run, grouped by what happened."""
    servers = list(first.values())
    both = [
        o
        for case, o in servers[0].items()
        if all(cases.get(case, o).category == wanted for cases in servers)
    ]
    if not both:
        return ["None."]
    groups: dict[tuple[str, str, int | None], list[CaseOutcome]] = {}
    for o in both:
        key = (o.result, o.behavior_close, o.remote_close_code)
        groups.setdefault(key, []).append(o)
    lines = ["| cases | what happened (the row's first case) | why |", "| --- | --- | --- |"]
    for (_, _, code), group in sorted(groups.items(), key=lambda kv: case_key(kv[1][0].id)):
        lines.append(f"| {_ids(group)} | {_what(group[0])} | {_note(group[0].id, code)} |")
    return lines


def _logs(logs: dict[str, list[str]]) -> list[str]:
    """What each server logged: its distinct unindented lines (a traceback's first and
    last), most frequent first."""
    out = []
    for name, lines in logs.items():
        heads: dict[str, int] = {}
        for line in lines:
            if line and not line[0].isspace():
                line = _EXCEPTION.sub(r"\1: ...", line)  # one row per exception type
                heads[line] = heads.get(line, 0) + 1
        out += [f"`{name}`: {len(lines)} lines", ""]
        if heads:
            out += ["| times | line |", "| ---: | --- |"]
            ranked = sorted(heads.items(), key=lambda kv: -kv[1])
            out += [f"| {n} | `{line[:160]}` |" for line, n in ranked[:LOG_LINES_SHOWN]]
            if len(ranked) > LOG_LINES_SHOWN:
                out.append(f"| | ...and {len(ranked) - LOG_LINES_SHOWN} more distinct lines |")
            out.append("")
    return out or ["Nothing."]


def report(
    args: argparse.Namespace,
    results: list[CaseOutcome],
    state: RunState,
    facts: dict[str, str],
    command: str,
    logs: dict[str, list[str]],
) -> str:
    """The Markdown report of a run."""
    out = ["# Autobahn conformance: roomcast serve's socket layer and stock uvicorn", ""]
    out += [f"Command: `{command}`", ""]
    out += ["| fact | value |", "| --- | --- |"]
    out += [f"| {k} | {v} |" for k, v in facts.items() if not k.startswith("replies: ")]
    out += ["", "## Servers", ""]
    out += [
        "| server | phase | ws_max_size | ws class | text replies direct / ASGI | binary "
        "replies (ASGI) | connections |",
        "| --- | --- | ---: | --- | --- | ---: | ---: |",
    ]
    for s in state.servers:
        c = s.counts
        out.append(
            f"| {s.name} | {s.phase} | {s.max_size} | {SERVERS[s.name]} | "
            f"{c.get('direct', '?')} / {c.get('asgi_text', '?')} | {c.get('asgi_binary', '?')} "
            f"| {c.get('connections', '?')} |"
        )
    selection = ", ".join(args.cases) or "all"
    exclusion = ", ".join(args.exclude) or "none"
    out += ["", f"Cases: {selection}; excluded: {exclusion}.", ""]
    if state.not_finished:
        out += ["**Not finished** (their cases are missing from the tables):", ""]
        out += [f"- {line}" for line in state.not_finished] + [""]
    for phase, title in (("standard", "roomcast serve's options"), ("large", "ws_max_size 16 MiB")):
        first = _first(results, phase)
        if not first:
            continue
        out += [f"## {phase.capitalize()}: {title}", ""]
        out += [*_summary_table(first), ""]
        if len(first) == 2:
            out += ["### Where the verdicts differ", ""]
            lines, always_worse = _differences(results, phase, first)
            out += [*lines, ""]
            out += [f"roomcast's stack worse than stock in every run: {always_worse} case(s).", ""]
        on = " on both" if len(first) == 2 else ""
        for wanted in ("failed", "non-strict", "informational", "unimplemented"):
            out += [f"### {wanted.capitalize()}{on}", "", *_shared(first, wanted), ""]
    out += ["## Server logs", "", *_logs(logs)]
    return "\n".join(out)


def always_worse_count(results: list[CaseOutcome]) -> int:
    """Cases where roomcast's stack is worse than stock in every run, all phases."""
    total = 0
    for phase in ("standard", "large"):
        first = _first(results, phase)
        if len(first) == 2:
            total += _differences(results, phase, first)[1]
    return total


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases",
        action="append",
        default=[],
        metavar="GLOB",
        help="case id or glob to run, e.g. 1.1.1 or '5.*' (repeatable; default: all)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="case id or glob not to run (repeatable)",
    )
    parser.add_argument(
        "--servers",
        default="roomcast,uvicorn",
        help="comma-separated: roomcast (roomcast serve's stack), uvicorn (stock)",
    )
    parser.add_argument(
        "--chapter-timeout",
        type=float,
        default=300.0,
        help="seconds one chapter may take on one server (default 300); Autobahn's own "
        "per-case timeouts are at most 100 s",
    )
    parser.add_argument(
        "--reruns",
        type=int,
        default=10,
        help="extra runs of each case whose verdict differs between the servers (default 10)",
    )
    parser.add_argument(
        "--large",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run chapter 9 at ws_max_size 16 MiB (default: yes)",
    )
    h.add_run_arguments(parser)
    parser.set_defaults(time_limit=1200.0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run both servers through the selected cases; 0 unless roomcast's stack is worse
    than stock in every run of some case, or a chapter did not finish."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_client"]:
        return client_main(argv[1:])
    args = build_parser().parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not args.servers or set(args.servers) - set(SERVERS) or args.reruns < 0:
        build_parser().error("--servers takes roomcast and/or uvicorn; --reruns >= 0")
    facts = h.machine_facts(None)
    facts["kosoku"] = h._version("kosoku")
    facts.pop("redis-server", None)
    state = RunState(facts=facts)
    results: list[CaseOutcome] = []
    return h.run_benchmark(
        "conformance.py",
        args,
        facts,
        lambda procs: _measure(args, procs, state, results),
        results,
        failed=lambda rs: bool(state.not_finished) or always_worse_count(rs) > 0,
        report=lambda command, procs: report(args, results, state, facts, command, procs.logs),
    )


if __name__ == "__main__":
    sys.exit(main())
