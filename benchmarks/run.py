"""The standard benchmark set, one command: issue 3's scenarios (a)-(e), issue 8's (f) and
(g), and their targets.

    .venv/bin/python benchmarks/run.py            # or scripts/bench; about 20 minutes

Runs each step below as its own process (``fanout.py``, ``idle.py``, ``ingest.py``,
``churn.py``, ``multiroom.py``, each bounded by its ``--time-limit`` and stopping its own
servers), then writes ``benchmarks/results/YYYY-MM-DD-<commit>.md``: the machine, a table
of the targets with the measured values, ratios and pass/fail, and every step's own
report. Only measured values are printed; the targets' ratios are taken within one step
(one run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import _harness as h

HERE = Path(__file__).resolve().parent
PY = sys.executable


@dataclass(frozen=True)
class Step:
    """One benchmark process of the standard set."""

    name: str
    title: str
    argv: list[str]
    time_limit: int  # seconds, passed as --time-limit; the process is killed 60 s later


STEPS = (
    Step(
        "a",
        "(a) fan-out: 1,000 members, one process: roomcast vs bare websockets vs seed",
        "fanout.py --scenarios embedded --targets roomcast,baseline,seed --members 1000 "
        "--messages 200 --rate 10 --seed-messages 50".split(),
        240,
    ),
    Step(
        "b",
        "(b) two roomcast processes through Redis (pubsub), 10 msgs/s into 1,000 members",
        "fanout.py --scenarios redis --layers pubsub --members 1000 --messages 200 "
        "--rate 10".split(),
        150,
    ),
    Step(
        "c",
        "(c) 10,000 idle connections, one process: roomcast vs seed vs bare uvicorn (lean, stock)",
        "idle.py --connections 10000 --rooms 100".split(),
        200,
    ),
    Step(
        "d",
        "(d) ingest: 50 publishers in 50 rooms, SQLite and PostgreSQL",
        "ingest.py --publishers 50 --rooms 50 --messages 100".split(),
        200,
    ),
    Step(
        "e",
        "(e) a large room: 5,000 members, one process: roomcast vs bare websockets",
        "fanout.py --scenarios embedded --targets roomcast,baseline --members 5000 "
        "--messages 50 --rate 2".split(),
        200,
    ),
    Step(
        "f",
        "(f) a room of 1,000 on /ws/ with presence, 50 joins + 50 leaves/s, flat out: vs (a)",
        "churn.py --targets chat,mux,churn --members 1000 --member-auth users --messages 1000 "
        "--joins 50 --stay 1".split(),
        420,
    ),
    Step(
        "g",
        "(g) 10,000 /ws/ sockets in 5 rooms each vs one-room sockets; 10 rooms vs 1 (2,000)",
        "multiroom.py --sockets 10000 --rooms-per-socket 5 --rooms 2000 --goal-sockets 2000 "
        "--goal-rooms 10".split(),
        1200,
    ),
)


# -- targets -----------------------------------------------------------------------------------


def _phase(data: dict[str, Any], target: str, phase: str) -> dict[str, Any] | None:
    for r in data.get("results", []):
        if r["target"] == target and r["phase"] == phase:
            return dict(r)
    return None


Row = tuple[str, str, str, str, str]  # target, wanted, measured, ratio or detail, verdict


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("pass" if ok else "**fail**")


def _targets_a(data: dict[str, Any]) -> list[Row]:
    rc, seed = _phase(data, "roomcast", "burst"), _phase(data, "seed", "burst")
    bare = _phase(data, "baseline", "burst")
    rows = []
    for other, name, wanted in ((seed, "seed", 20.0), (bare, "bare websockets", 0.5)):
        if rc and other and other["deliveries_per_sec"]:
            ratio = rc["deliveries_per_sec"] / other["deliveries_per_sec"]
            ok = ratio >= wanted and not rc["lost"]
            measured = f"{rc['deliveries_per_sec']:,.0f} vs {other['deliveries_per_sec']:,.0f}/s"
            rows.append(
                (
                    f"(a) roomcast / {name}, flat out",
                    f">= {wanted}x",
                    measured,
                    f"{ratio:.2f}x",
                    _verdict(ok),
                )
            )
        else:
            rows.append(
                (
                    f"(a) roomcast / {name}, flat out",
                    f">= {wanted}x",
                    "not measured",
                    "-",
                    _verdict(False),
                )
            )
    return rows


def _targets_b(data: dict[str, Any]) -> list[Row]:
    r = _phase(data, "pubsub", "paced")
    if not r or not r["latency_ms"]:
        return [
            (
                "(b) 2 processes via Redis, p99 at 10,000/s",
                "<= 25 ms, 0 lost",
                "not measured",
                "-",
                _verdict(False),
            )
        ]
    p99, lost = r["latency_ms"]["p99"], r["lost"]
    lat = r["latency_ms"]
    measured = (
        f"{r['deliveries_per_sec']:,.0f}/s; p50 {lat['p50']:.1f}, p90 {lat['p90']:.1f}, "
        f"p99 {p99:.1f}, max {lat['max']:.1f} ms; lost {lost}"
    )
    ok = p99 <= 25 and lost == 0 and not r["timed_out"]
    return [
        (
            "(b) 2 processes via Redis, p99 at 10,000/s",
            "<= 25 ms, 0 lost",
            measured,
            f"p99 / 25 ms = {p99 / 25:.2f}",
            _verdict(ok),
        )
    ]


def _targets_c(data: dict[str, Any]) -> list[Row]:
    by = {r["target"]: r for r in data.get("results", [])}
    rc, seed, floor = by.get("roomcast"), by.get("seed"), by.get("uvicorn")
    stock = by.get("uvicorn-stock")
    rows = []
    if rc:
        kb = rc["kb_per_connection"]
        versus = [f"seed {seed['kb_per_connection']:.1f} KB"] if seed else []
        if floor:  # the server's own cost: a bare ASGI app on the same uvicorn
            versus.append(f"bare uvicorn {floor['kb_per_connection']:.1f} KB")
        if stock:  # the same on uvicorn's own protocol class
            versus.append(f"bare stock uvicorn {stock['kb_per_connection']:.1f} KB")
        rows.append(
            (
                "(c) memory per idle connection",
                "<= 20 KB",
                f"{kb:.1f} KB ({rc['opened']:,} open)",
                "vs " + ", ".join(versus) if versus else "-",
                _verdict(kb <= 20 and rc["opened"] == rc["connections"]),
            )
        )
    if rc and seed and seed["connections_per_sec"]:
        ratio = rc["connections_per_sec"] / seed["connections_per_sec"]
        rows.append(
            (
                "(c) connections accepted per second / seed",
                ">= 3x",
                f"{rc['connections_per_sec']:,.0f} vs {seed['connections_per_sec']:,.0f}/s",
                f"{ratio:.2f}x",
                _verdict(ratio >= 3 and not rc["failed"]),
            )
        )
    return rows or [("(c) idle connections", "-", "not measured", "-", _verdict(False))]


def _targets_d(data: dict[str, Any]) -> list[Row]:
    rows = []
    for r in data.get("results", []):
        wanted = 1000 if r["database"] == "sqlite" else 2000
        ok = (
            r["stored_per_sec"] >= wanted
            and r["acked"] == r["messages"]
            and r["in_database"] == r["acked"]
            and not r["duplicate_seqs"]
        )
        rows.append(
            (
                f"(d) stored messages/s, {r['database']}",
                f">= {wanted:,}",
                f"{r['stored_per_sec']:,.0f}/s; {r['acked']:,} acked, "
                f"{r['in_database']:,} in the database",
                f"{r['stored_per_sec'] / wanted:.2f}x the target",
                _verdict(ok),
            )
        )
    return rows or [("(d) ingest", "-", "not measured", "-", _verdict(False))]


def _targets_e(data: dict[str, Any]) -> list[Row]:
    rows = []
    for phase in ("paced", "burst"):
        rc, bare = _phase(data, "roomcast", phase), _phase(data, "baseline", phase)
        if rc:
            lat = rc["latency_ms"]
            ratio = (
                f"{rc['deliveries_per_sec'] / bare['deliveries_per_sec']:.2f}x bare"
                if bare and bare["deliveries_per_sec"]
                else "-"
            )
            rows.append(
                (
                    f"(e) 5,000 members, {phase}",
                    "no target; 0 lost",
                    f"{rc['deliveries_per_sec']:,.0f}/s, p99 {lat.get('p99', 0):,.1f} ms, "
                    f"lost {rc['lost']}",
                    ratio,
                    _verdict(rc["lost"] == 0),
                )
            )
    return rows or [("(e) 5,000 members", "-", "not measured", "-", _verdict(False))]


def _targets_f(data: dict[str, Any]) -> list[Row]:
    by = {r["target"]: r for r in data.get("results", []) if r["round"] == 1}
    churn, chat, mux = by.get("churn"), by.get("chat"), by.get("mux")
    rows = []
    if churn and chat and chat["deliveries_per_sec"]:
        ratio = churn["deliveries_per_sec"] / chat["deliveries_per_sec"]
        bad = churn["lost"] + churn["duplicates"] + churn["out_of_order"]
        measured = (
            f"{churn['deliveries_per_sec']:,.0f} vs {chat['deliveries_per_sec']:,.0f}/s "
            f"(server CPU {churn['server_us']:.1f} vs {chat['server_us']:.1f} µs per "
            "delivery); "
            f"{churn['presence_per_member_sec']:.2f} presence frames per member per s; "
            f"{churn['joins_per_sec']:.1f} joins/s, {churn['leaves_per_sec']:.1f} leaves/s; "
            f"lost {churn['lost']}, dup {churn['duplicates']}, "
            f"out of order {churn['out_of_order']}"
        )
        ok = ratio >= 0.85 and not bad and not churn["timed_out"]
        rows.append(
            (
                f"(f) {churn['members']:,} on /ws/ with presence and churn / (a) on "
                "/ws/chat/, flat out",
                ">= 0.85x, 0 lost",
                measured,
                f"{ratio:.2f}x",
                _verdict(ok),
            )
        )
    else:
        rows.append(
            ("(f) presence and churn / (a)", ">= 0.85x", "not measured", "-", _verdict(False))
        )
    if mux and chat and chat["deliveries_per_sec"]:
        ratio = mux["deliveries_per_sec"] / chat["deliveries_per_sec"]
        rows.append(
            (
                "(f) the same on /ws/ without churn / (a)",
                "none; 0 lost",
                f"{mux['deliveries_per_sec']:,.0f}/s ({mux['server_us']:.1f} µs per delivery), "
                f"lost {mux['lost']}",
                f"{ratio:.2f}x",
                _verdict(mux["lost"] == 0),
            )
        )
    return rows


def _targets_g(data: dict[str, Any]) -> list[Row]:
    by = {(r["group"], r["target"]): r for r in data.get("results", []) if r["round"] == 1}
    rows = []
    chat = by.get(("big", "chat x1"))
    for (group, _), r in by.items():
        if group != "big" or r["endpoint"] != "ws" or chat is None:
            continue
        rows.append(
            (
                f"(g) {r['sockets']:,} /ws/ sockets x {r['rooms_per_socket']} rooms "
                f"(over {r['rooms']:,})",
                "none; all open",
                f"{r['kb_per_socket']:.1f} KB per socket vs {chat['kb_per_socket']:.1f} "
                f"one-room; {r['sockets_per_sec']:,.0f} vs {chat['sockets_per_sec']:,.0f} "
                f"sockets/s ({r['subscriptions_per_sec']:,.0f} subscriptions/s)",
                f"{r['kb_per_socket'] / chat['kb_per_socket']:.2f}x the memory"
                if chat["kb_per_socket"]
                else "-",
                _verdict(r["opened"] == r["sockets"] and chat["opened"] == chat["sockets"]),
            )
        )
    single = by.get(("goal", "chat x1"))
    many = [r for (g, _), r in by.items() if g == "goal" and r["rooms_per_socket"] > 1]
    for r in many:
        if single is None or not single["kb_per_socket"]:
            continue
        ratio = r["kb_per_socket"] / single["kb_per_socket"]
        ok = ratio <= 2 and r["opened"] == r["sockets"] and single["opened"] == single["sockets"]
        one = by.get(("goal", "ws x1"))
        versus = f"; /ws/ x1 {one['kb_per_socket']:.1f} KB" if one else ""
        rows.append(
            (
                f"(g) a socket in {r['rooms_per_socket']} rooms / a one-room socket "
                f"({r['sockets']:,} each)",
                "<= 2x",
                f"{r['kb_per_socket']:.1f} vs {single['kb_per_socket']:.1f} KB{versus}",
                f"{ratio:.2f}x",
                _verdict(ok),
            )
        )
    return rows or [("(g) sockets in many rooms", "-", "not measured", "-", _verdict(False))]


TARGETS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "a": _targets_a,
    "b": _targets_b,
    "c": _targets_c,
    "d": _targets_d,
    "e": _targets_e,
    "f": _targets_f,
    "g": _targets_g,
}


# -- running -----------------------------------------------------------------------------------


def _run_step(step: Step, tmp: Path) -> tuple[dict[str, Any], str, int, float]:
    out_json, out_md = tmp / f"{step.name}.json", tmp / f"{step.name}.md"
    argv = [PY, str(HERE / step.argv[0]), *step.argv[1:]]
    argv += ["--time-limit", str(step.time_limit), "--json", str(out_json)]
    argv += ["--output", str(out_md)]
    print(f"== {step.title}", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        proc = subprocess.run(argv, stdout=subprocess.DEVNULL, timeout=step.time_limit + 60)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = -1
    secs = time.monotonic() - started
    data = json.loads(out_json.read_text()) if out_json.exists() else {}
    text = out_md.read_text() if out_md.exists() else f"(no report: exit status {code})\n"
    return data, text, code, secs


def main(argv: list[str] | None = None) -> int:
    """Run the standard set; 0 when every step delivered and stored everything."""
    parser = argparse.ArgumentParser(prog="benchmarks/run.py", description=__doc__)
    parser.add_argument("--steps", default="abcdefg", help="which of a-g to run (default all)")
    parser.add_argument("--output", type=Path, help="results file (default: see above)")
    args = parser.parse_args(argv)
    steps = [s for s in STEPS if s.name in args.steps]
    facts = h.machine_facts(None)
    commit = facts["commit"].split()[0] or "unknown"
    output = args.output or HERE / "results" / f"{date.today():%Y-%m-%d}-{commit}.md"
    started = time.monotonic()
    parts: list[str] = []
    rows: list[Row] = []
    codes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="roomcast-run-") as tmp:
        for step in steps:
            data, text, code, secs = _run_step(step, Path(tmp))
            rows += TARGETS[step.name](data)
            codes.append(f"{step.name}: exit {code} in {secs:.0f} s")
            # Each step's report, its headings one level down.
            body = "\n".join(
                "#" + line if line.startswith("## ") else line for line in text.splitlines()
            )
            parts += [f"## {step.title}", "", body, ""]
    facts["load average at end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    facts["src/ digest at end"] = h.source_digest()
    out = [f"# Benchmarks, {date.today():%Y-%m-%d}, commit {commit}", ""]
    out += ["Written by `benchmarks/run.py`: every number below was measured in this run.", ""]
    out += ["## Machine", ""] + [f"- {k}: {v}" for k, v in facts.items()]
    out += [f"- steps: {'; '.join(codes)}; total {time.monotonic() - started:.0f} s", ""]
    if facts["src/ digest at end"] != facts["src/ digest at start"]:
        out += ["src/ changed during the run: steps started later ran other code.", ""]
    out += ["## Targets (issue 3: a-e; issue 8: f, g)", ""]
    out += ["| target | wanted | measured | ratio | verdict |", "| --- | --- | --- | --- | --- |"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    out += ["", *parts]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(out))
    print(f"wrote {output}", file=sys.stderr)
    return 0 if all(c.split()[2] == "0" for c in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
