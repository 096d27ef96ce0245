"""Smoke run of the benchmarks' load generator: a tiny room, correctness only.

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


@pytest.mark.e2e
def test_fanout_delivers_every_message_to_every_member(tmp_path: Path) -> None:
    """Members in two client processes get every message once, in order, from both servers."""
    out = tmp_path / "results.json"
    argv = [sys.executable, str(REPO / "benchmarks" / "fanout.py"), "--scenarios", "embedded"]
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
