"""Smoke run of ``benchmarks/conformance.py`` (``scripts/conformance``): a few Autobahn
cases against roomcast serve's socket layer, so the script stays runnable.

The cases chosen pass on every run (no timing-dependent verdicts, see the results file):
text and binary echoes, fragmentation, pings, valid and invalid UTF-8, closes, a 64 KiB
message. The echo must have written its text replies through roomcast's direct path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CASES = ("1.1.2", "1.2.2", "2.2", "5.6", "6.2.1", "6.3.1", "7.1.1", "7.5.1", "9.1.1")


@pytest.mark.e2e
def test_conformance_cases_pass_on_the_roomcast_stack(tmp_path: Path) -> None:
    """kosoku's verdict is OK on each case, and text replies went out directly."""
    out = tmp_path / "results.json"
    argv = [sys.executable, str(REPO / "benchmarks" / "conformance.py"), "--servers", "roomcast"]
    argv += [f"--cases={case}" for case in CASES]
    argv += ["--no-large", "--reruns", "0", "--chapter-timeout", "30", "--time-limit", "60"]
    argv += ["--json", str(out)]
    # Not the test suite's settings (pytest-django sets them): the echo is no Django site.
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=90, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    verdicts = {r["id"]: (r["behavior"], r["behavior_close"]) for r in data["results"]}
    assert verdicts == {case: ("OK", "OK") for case in CASES}
    assert {r["server"] for r in data["results"]} == {"roomcast"}
    replies = dict(
        item.split("=") for item in data["facts"]["replies: roomcast (standard)"].split()
    )
    assert int(replies["direct"]) > 0, replies  # the direct path was the one tested
