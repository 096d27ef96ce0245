"""What one benchmark phase measured, and the Markdown report of a run.

The report prints measured values and ratios between them, nothing else: conclusions
belong in the results file, written by the person who ran it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

PERCENTILES = (0.50, 0.90, 0.95, 0.99)
#: Lines of each server's log shown in the report (the first: a traceback starts there).
LOG_LINES_SHOWN = 12
#: Keys of PhaseResult.cpu that are not processes serving the room ("churners": the
#: process of users joining and leaving, churn.py).
_NOT_SERVING = ("client", "members", "members_max", "machine", "steal", "churners")
#: Target pairs of the ratios table, first / second, by default (fanout.py's targets).
PAIRS = (("roomcast", "seed"), ("roomcast", "baseline"), ("roomcast", "before"), ("pubsub", "core"))


@dataclass
class PhaseResult:
    """What one phase of one target measured. Times in ms, CPU in cores."""

    scenario: str
    target: str
    round: int
    phase: str
    members: int
    messages: int
    connect_secs: float  # opening every member and the publisher, joined frames included
    deliveries: int = 0  # (message, member) pairs received, first time
    lost: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    wrong_text: int = 0  # a seq carrying another message's text
    other_frames: int = 0  # frames that are not message frames (errors...)
    closed_members: int = 0
    publisher_errors: list[str] = field(default_factory=list)  # error frames it was sent
    acked: int = 0
    timed_out: bool = False
    deliveries_per_sec: float = 0.0  # deliveries / (last receipt - first send)
    stored_per_sec: float = 0.0  # acks / (last ack - first send)
    latency_ms: dict[str, float] = field(default_factory=dict)  # send -> each receipt
    first_ms: dict[str, float] = field(default_factory=dict)  # send -> first receipt, per msg
    ack_ms: dict[str, float] = field(default_factory=dict)  # send -> the publisher's ack
    latency_by_side_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # process name -> cores
    cpu_wall: float = 0.0  # seconds the CPU figures cover
    client_procs: int = 1  # processes holding the members

    @property
    def server_cpu_secs(self) -> float:
        """CPU seconds of the servers (roomcast or baseline) and Redis in the phase."""
        return sum(v for k, v in self.cpu.items() if k not in _NOT_SERVING) * self.cpu_wall

    @property
    def server_us_per_delivery(self) -> float:
        """Server and Redis CPU microseconds per delivery."""
        return self.server_cpu_secs / self.deliveries * 1e6 if self.deliveries else 0.0


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p95/p99/max (nearest rank) of seconds, in ms."""
    if not values:
        return {}
    values = sorted(values)
    out = {
        f"p{round(p * 100)}": values[max(math.ceil(p * len(values)) - 1, 0)] for p in PERCENTILES
    }
    out["max"] = values[-1]
    return {k: v * 1000 for k, v in out.items()}


def _ms(values: dict[str, float], key: str) -> str:
    return f"{values[key]:,.1f}" if key in values else "-"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _table(columns: str) -> list[str]:
    """A Markdown table header from ``"a|b|c"``; every table starts with who was measured."""
    names = ["scenario", "target", "round", "phase", *columns.split("|")]
    return ["| " + " | ".join(names) + " |", "|" + " --- |" * len(names)]


def _name(r: PhaseResult) -> str:
    return f"| {r.scenario} | {r.target} | {r.round} | {r.phase} |"


def _counterpart(results: list[PhaseResult], r: PhaseResult, target: str) -> PhaseResult | None:
    for other in results:
        if (other.scenario, other.round, other.phase, other.target) == (
            r.scenario,
            r.round,
            r.phase,
            target,
        ):
            return other
    return None


def report(
    results: list[PhaseResult],
    facts: dict[str, str],
    command: str,
    logs: dict[str, list[str]],
    pairs: tuple[tuple[str, str], ...] = PAIRS,
) -> str:
    """The run as Markdown: machine, command, tables, ratios of the targets ``pairs``."""
    out = ["## Machine", ""]
    out += [f"- {key}: {value}" for key, value in facts.items()]
    out += ["", "## Command", "", "```", command, "```", ""]

    out += ["## Delivery: publisher's send -> each member's receipt", ""]
    out += _table(
        "members|msgs|deliveries|lost|dup|out of order|deliveries/s"
        "|p50 ms|p90 ms|p95 ms|p99 ms|max ms"
    )
    for r in results:
        lat = r.latency_ms
        out.append(
            _name(r) + f" {r.members:,} | {r.messages} | {r.deliveries:,} | {r.lost} "
            f"| {r.duplicates} | {r.out_of_order} | {r.deliveries_per_sec:,.0f} "
            f"| {_ms(lat, 'p50')} | {_ms(lat, 'p90')} | {_ms(lat, 'p95')} | {_ms(lat, 'p99')} "
            f"| {_ms(lat, 'max')} |"
        )
    for r in results:
        errors = r.publisher_errors
        if r.wrong_text or r.other_frames or r.closed_members or r.timed_out or errors:
            out.append(
                f"\n{r.scenario}/{r.target} round {r.round} {r.phase}: wrong text "
                f"{r.wrong_text}, other frames {r.other_frames}, members closed "
                f"{r.closed_members}, acked {r.acked}/{r.messages}, timed out {r.timed_out}, "
                f"error frames to the publisher {len(errors)}"
                + (f" (first: `{errors[0]}`)" if errors else "")
            )

    out += ["", "## Per message: send -> first member's receipt, send -> publisher's ack", ""]
    out += _table("first p50 ms|first p99 ms|ack p50 ms|ack p99 ms|stored msgs/s|connect+join s")
    for r in results:
        first, ack = r.first_ms, r.ack_ms
        out.append(
            _name(r) + f" {_ms(first, 'p50')} | {_ms(first, 'p99')} | {_ms(ack, 'p50')} "
            f"| {_ms(ack, 'p99')} | {r.stored_per_sec:,.0f} | {r.connect_secs:.1f} |"
        )

    out += ["", "## CPU during each phase (cores = CPU seconds per wall second)", ""]
    out += _table(
        "publisher (this process)|member procs (sum)|busiest member proc|server(s)|redis"
        "|whole machine|steal|server+redis CPU µs per delivery"
    )
    for r in results:
        servers = " + ".join(
            f"{v:.2f}" for k, v in r.cpu.items() if k not in _NOT_SERVING and k != "redis"
        )
        redis = f"{r.cpu['redis']:.2f}" if "redis" in r.cpu else "-"
        out.append(
            _name(r) + f" {r.cpu['client']:.2f} | {r.cpu.get('members', 0):.2f} "
            f"({r.client_procs}) | {r.cpu.get('members_max', 0):.2f} | {servers} | {redis} "
            f"| {r.cpu['machine']:.2f} "
            f"| {r.cpu['steal']:.2f} | {r.server_us_per_delivery:.1f} |"
        )

    sided = [r for r in results if r.latency_by_side_ms]
    if sided:
        out += ["", "## Delivery latency by server (A has the publisher)", ""]
        out += _table("A p50 ms|A p99 ms|B p50 ms|B p99 ms")
        for r in sided:
            a, b = r.latency_by_side_ms.get("A", {}), r.latency_by_side_ms.get("B", {})
            out.append(
                _name(r) + f" {_ms(a, 'p50')} | {_ms(a, 'p99')} | {_ms(b, 'p50')} "
                f"| {_ms(b, 'p99')} |"
            )

    out += ["", "## Ratios: first target / second, same round and phase", ""]
    out += _table(
        "deliveries/s|p50 latency|p99 latency|first-receipt p50|server+redis CPU per delivery"
    )
    for x, y in pairs:
        for rx in results:
            ry = _counterpart(results, rx, y) if rx.target == x else None
            if ry is None:
                continue
            out.append(
                f"| {rx.scenario} | {x} / {y} | {rx.round} | {rx.phase} "
                f"| {_ratio(rx.deliveries_per_sec, ry.deliveries_per_sec)} "
                f"| {_ratio(rx.latency_ms.get('p50', 0), ry.latency_ms.get('p50', 0))} "
                f"| {_ratio(rx.latency_ms.get('p99', 0), ry.latency_ms.get('p99', 0))} "
                f"| {_ratio(rx.first_ms.get('p50', 0), ry.first_ms.get('p50', 0))} "
                f"| {_ratio(rx.server_us_per_delivery, ry.server_us_per_delivery)} |"
            )

    out += ["", "## Server logs (at log level warning; first lines of each)", ""]
    for name, lines in logs.items():
        if not lines:
            out.append(f"- {name}: nothing")
            continue
        out += [f"- {name}: {len(lines)} lines", "", "  ```"]
        out += [f"  {line}" for line in lines[:LOG_LINES_SHOWN]]
        out += ["  ```", ""]
    return "\n".join(out) + "\n"
