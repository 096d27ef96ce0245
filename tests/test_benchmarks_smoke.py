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


@pytest.mark.e2e
def test_churn_delivers_every_message_while_users_join_and_leave(tmp_path: Path) -> None:
    """(f): members on /ws/chat/ and on /ws/ (users with tokens) get every message once, in
    order, also while other users join and leave the room; every churn user that joined
    left, none was refused."""
    results = run(
        tmp_path,
        "churn.py",
        *("--members", "20", "--messages", "10", "--joins", "20", "--stay", "0.2"),
        *("--churn-users", "20", "--warmup", "0.5", "--client-procs", "2"),
        *("--phase-timeout", "30", "--time-limit", "100"),
    )
    assert [r["target"] for r in results] == ["chat", "mux", "churn"]
    for r in results:
        where = r["target"]
        assert r["deliveries"] == 20 * 10, where
        assert (r["lost"], r["duplicates"], r["out_of_order"], r["wrong_text"]) == (0, 0, 0, 0)
        assert (r["acked"], r["other_frames"], r["timed_out"]) == (10, 0, False), where
    assert [r["member_auth"] for r in results] == ["guests", "users", "users"]
    churn = results[2]
    assert churn["churn_scheduled"] > 0, churn
    assert churn["churn_failed"] == 0, churn["churn_first_error"]
    assert churn["churn_joined"] == churn["churn_left"] == churn["churn_scheduled"], churn


@pytest.mark.e2e
def test_multiroom_opens_and_subscribes_every_socket(tmp_path: Path) -> None:
    """(g): one-room sockets and /ws/ sockets in 1, 3 and 4 rooms all open and subscribe;
    memory is measured."""
    results = run(
        tmp_path,
        "multiroom.py",
        *("--sockets", "30", "--rooms-per-socket", "3", "--goal-sockets", "20"),
        *("--goal-rooms", "4", "--rooms", "10", "--client-procs", "2", "--settle", "0.3"),
        *("--time-limit", "100"),
    )
    cases = [(r["group"], r["target"], r["sockets"]) for r in results]
    assert cases == [
        ("big", "chat x1", 30),
        ("big", "ws x3", 30),
        ("goal", "chat x1", 20),
        ("goal", "ws x1", 20),
        ("goal", "ws x4", 20),
    ]
    for r in results:
        assert (r["opened"], r["failed"]) == (r["sockets"], 0), r
        assert r["rss_after_kb"] > 0, r
