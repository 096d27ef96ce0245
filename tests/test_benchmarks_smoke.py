"""Smoke runs of the benchmark scripts: tiny loads, correctness only.

Keeps ``benchmarks/`` working. No timing is asserted here, ever: the numbers of a run on a
shared test machine mean nothing; ``benchmarks/run.py`` measures them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(tmp_path: Path, script: str, *args: str) -> list[dict]:
    """Run a benchmark script with ``args``; its JSON results."""
    out = tmp_path / "results.json"
    argv = [sys.executable, str(REPO / "benchmarks" / script), *args, "--json", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return list(json.loads(out.read_text())["results"])


@pytest.mark.e2e
@pytest.mark.parametrize("client", ["picows", "websockets"])
def test_fanout_delivers_every_message_to_every_member(tmp_path: Path, client: str) -> None:
    """Members in two client processes get every message once, in order, from both servers."""
    out = tmp_path / "results.json"
    argv = [sys.executable, str(REPO / "benchmarks" / "fanout.py"), "--scenarios", "embedded"]
    argv += ["--client", client]
    argv += ["--targets", "roomcast,baseline", "--members", "20", "--messages", "5"]
    argv += ["--rate", "50", "--client-procs", "2", "--phase-timeout", "20"]
    argv += ["--time-limit", "60", "--json", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    seen = {(r["target"], r["phase"]) for r in results}
    assert seen == {(t, p) for t in ("roomcast", "baseline") for p in ("paced", "burst")}
    for r in results:
        where = f"{r['target']} {r['phase']}"
        assert r["deliveries"] == 20 * 5, where
        assert (r["lost"], r["duplicates"], r["out_of_order"], r["wrong_text"]) == (0, 0, 0, 0)
        assert not r["timed_out"], where
        assert r["acked"] == 5, where
        assert r["client_procs"] == 2, where


@pytest.mark.e2e
def test_idle_opens_every_connection_on_each_server(tmp_path: Path) -> None:
    """roomcast and both bare-uvicorn floors take every connection; memory is measured."""
    results = run(
        tmp_path,
        "idle.py",
        *("--targets", "roomcast,uvicorn,uvicorn-stock", "--connections", "40"),
        *("--client-procs", "2", "--settle", "0.5", "--time-limit", "90"),
    )
    assert sorted(r["target"] for r in results) == ["roomcast", "uvicorn", "uvicorn-stock"]
    for r in results:
        assert (r["opened"], r["failed"]) == (40, 0), r
        assert r["rss_after_kb"] > 0, r


@pytest.mark.e2e
@pytest.mark.postgres
def test_ingest_stores_every_message_once(tmp_path: Path) -> None:
    """Every post acked and in the database once, on SQLite and PostgreSQL."""
    results = run(
        tmp_path,
        "ingest.py",
        *("--publishers", "5", "--rooms", "2", "--messages", "10", "--time-limit", "90"),
    )
    assert sorted(r["database"] for r in results) == ["postgres", "sqlite"]
    for r in results:
        assert (r["acked"], r["in_database"], r["duplicate_seqs"], r["errors"]) == (50, 50, 0, 0)
