"""Benchmark plumbing: private servers on loopback, CPU accounting, machine facts.

Nothing here measures fan-out; ``fanout.py`` does. Every process started here listens on
127.0.0.1 only and is stopped by :meth:`Processes.stop_all`, which the benchmark calls in
a ``finally``. Mirrors the test suite's fixtures (``tests/conftest.py``,
``tests/e2e/conftest.py``) without importing pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOMCAST = str(Path(sys.executable).with_name("roomcast"))
REPO = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Lifetime of the tokens of the users a benchmark creates: longer than any run.
TOKEN_TTL_SECS = 3 * 3600
#: Longest wait for the creation of a benchmark's users (thousands take seconds).
USERS_TIMEOUT_SECS = 300
#: Packages whose versions decide the numbers; recorded with every result.
PACKAGES = (
    "roomcast",
    "Django",
    "channels",
    "channels_redis",
    "redis",
    "uvicorn",
    "uvloop",
    "httptools",
    "websockets",
    "psycopg",
    "daphne",
    "Twisted",
)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Block until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout} s")


def _set_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed < 0:  # exactly -needed, soft and hard: a server that cannot raise it
        resource.setrlimit(resource.RLIMIT_NOFILE, (-needed, -needed))
    elif soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


def rss_kb(pid: int) -> int:
    """Resident memory of process ``pid`` now (VmRSS, in kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def pid_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` (all threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def raise_fd_limit(needed: int) -> int:
    """Raise this process's open-file soft limit to at least ``needed`` (up to the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


# -- processes ------------------------------------------------------------------------------


@dataclass
class Proc:
    """One child process with a name, a port and a log file."""

    name: str
    port: int
    popen: subprocess.Popen[bytes]
    log: Path

    def cpu_seconds(self) -> float:
        """User + system CPU seconds used so far (all threads), from /proc."""
        return pid_cpu_seconds(self.popen.pid)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the process's log."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@dataclass
class Processes:
    """Every child process of one benchmark run; :meth:`stop_all` ends them."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)
    logs: dict[str, list[str]] = field(default_factory=dict)  # "name:port" -> log lines

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        port: int,
        env: dict[str, str] | None = None,
        nofile: int | None = None,
    ) -> Proc:
        """Start ``argv`` and wait until it listens on ``port``; ``nofile``: its own
        open-file limit (raised in the child before exec, as ``ulimit -n`` would; a
        negative value sets both limits to exactly its absolute value)."""
        log = self.workdir / f"{name}-{port}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                argv,
                env={**os.environ, **(env or {})},
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches the benchmark, which stops them
                preexec_fn=(lambda: _set_nofile(nofile)) if nofile else None,
            )
        proc = Proc(name, port, popen, log)
        self.procs.append(proc)
        try:
            wait_for_port(port, popen)
        except Exception as exc:
            raise RuntimeError(f"{name} did not start: {exc}\n{proc.log_tail()}") from None
        return proc

    def roomcast(
        self,
        name: str,
        data_dir: Path,
        env: dict[str, str],
        *,
        nofile: int | None = None,
        binary: str = ROOMCAST,
    ) -> Proc:
        """``roomcast serve`` on a free port, its data dir and settings from ``env``;
        ``binary``: another build's ``roomcast`` (a checkout's ``.venv/bin/roomcast``)."""
        port = free_port()
        # Private, as roomcast serve wants its data dir (else it says so in its log).
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        env = {
            "ROOMCAST_DATA_DIR": str(data_dir),
            "ROOMCAST_LOG_LEVEL": "WARNING",
            # Every load client connects from 127.0.0.1: the per-address cap (1,000 by
            # default) would refuse scenarios (c) and (e).
            "ROOMCAST_MAX_CONNECTIONS_PER_ADDRESS": "0",
            # The same for room sockets (500 per address by default); and publishers
            # send as fast as they can, which the post rate limits (5/s per socket by
            # default) exist to stop: off, to measure the server, not the limit.
            "ROOMCAST_MAX_SOCKETS_PER_ADDRESS": "0",
            "ROOMCAST_POST_RATE_PER_SOCKET": "0",
            "ROOMCAST_POST_RATE_PER_USER": "0",
            **env,
        }
        os.environ.pop("DJANGO_SETTINGS_MODULE", None)
        argv = [binary, "serve", "--port", str(port), "--log-level", "warning"]
        return self.start(name, argv, port=port, env=env, nofile=nofile)

    def users(
        self,
        data_dir: Path,
        names: list[str],
        env: dict[str, str] | None = None,
        *,
        ttl: int = TOKEN_TTL_SECS,
        binary: str = ROOMCAST,
    ) -> list[str]:
        """Create the users ``names`` in the database of the ``roomcast serve`` that runs
        on ``data_dir`` (and ``env``), without passwords as ``roomcast user create`` does,
        and return a connection token for each, in order, as ``roomcast token NAME`` makes
        them (``roomcast.auth.issue_token``, the site's own secret key). One ``roomcast
        manage shell`` for all of them: a ``roomcast user create`` per user would take
        minutes for thousands."""
        script = (
            "import json, sys\n"
            "from django.contrib.auth import get_user_model\n"
            "from roomcast.auth import issue_token\n"
            "User = get_user_model()\n"
            "names = json.loads(sys.stdin.read())\n"
            "users = [User(username=n) for n in names]\n"
            "for u in users:\n"
            "    u.set_unusable_password()\n"
            "User.objects.bulk_create(users, batch_size=500)\n"
            "by = {u.username: u for u in User.objects.filter(username__in=names)}\n"
            f"print(json.dumps([issue_token(by[n], ttl={int(ttl)}) for n in names]))\n"
        )
        env = {"ROOMCAST_DATA_DIR": str(data_dir), "ROOMCAST_LOG_LEVEL": "WARNING", **(env or {})}
        os.environ.pop("DJANGO_SETTINGS_MODULE", None)
        proc = subprocess.run(
            [binary, "manage", "shell", "-c", script],
            input=json.dumps(names),
            env={**os.environ, **env},
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=USERS_TIMEOUT_SECS,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"creating {len(names)} users failed:\n{proc.stderr[-3000:]}")
        tokens = json.loads(proc.stdout.strip().splitlines()[-1])
        if len(tokens) != len(names):
            raise RuntimeError(f"asked for {len(names)} tokens, got {len(tokens)}")
        return [str(t) for t in tokens]

    def bare_uvicorn(self, name: str, ws: str = "lean", *, nofile: int | None = None) -> Proc:
        """``bare_asgi.py`` on uvicorn with the options ``roomcast serve`` uses: the floor.
        ``ws``: ``lean`` (roomcast serve's protocol class) or ``websockets-sansio``."""
        port = free_port()
        argv = [sys.executable, str(REPO / "benchmarks" / "bare_asgi.py"), str(port), ws]
        env = {"PYTHONPATH": str(REPO / "benchmarks")}
        return self.start(name, argv, port=port, env=env, nofile=nofile)

    def seed(self, name: str, redis: Proc, *, nofile: int | None = None) -> Proc:
        """The seed tutorial's project (``benchmarks/seed_project``) on daphne, its channel
        layer on ``redis``; its SQLite database (sessions, users) migrated first."""
        data_dir = self.workdir / f"{name}-data"
        data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            "SEED_REDIS_PORT": str(redis.port),
            "SEED_DATA_DIR": str(data_dir),
            "DJANGO_SETTINGS_MODULE": "benchmarks.seed_project.settings",
            "PYTHONPATH": str(REPO),
        }
        subprocess.run(
            [sys.executable, "-m", "django", "migrate", "-v", "0"],
            env={**os.environ, **env},
            cwd=self.workdir,
            check=True,
            timeout=120,
        )
        port = free_port()
        argv = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "-v", "0"]
        argv += ["benchmarks.seed_project.asgi:application"]
        return self.start(name, argv, port=port, env=env, nofile=nofile)

    def redis(self) -> Proc:
        """A private redis-server: no persistence, loopback only."""
        if shutil.which("redis-server") is None:
            raise SystemExit("redis-server is not installed: apt-get install -y redis-server")
        port = free_port()
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        return self.start("redis", argv, port=port)

    def stop(self, proc: Proc) -> None:
        """SIGTERM, then SIGKILL after 15 s."""
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
            try:
                proc.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        if proc in self.procs:
            self.procs.remove(proc)
            lines = proc.log.read_text(errors="replace").splitlines() if proc.log.exists() else []
            # Start-up banners are not news; the rest (warnings, tracebacks) is reported.
            self.logs[f"{proc.name}:{proc.port}"] = [line for line in lines if _is_news(line)]

    def stop_all(self) -> None:
        """Stop every process still running, newest first."""
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def _is_news(line: str) -> bool:
    """Whether a server log line is worth reporting (start-up banners are not)."""
    if not line.strip() or line.startswith(
        ("roomcast serving on ", "System check identified no issues")
    ):
        return False
    if "signal-handler" in line and "Received SIGTERM" in line:  # redis-server stopping
        return False
    if _REDIS_LOG.match(line):
        # Only redis-server's warnings, less the overcommit one: this Redis never saves.
        return "WARNING" in line and "overcommit" not in line
    return True


_REDIS_LOG = re.compile(r"\d+:[CMSX] \d")


# -- PostgreSQL -----------------------------------------------------------------------------


def create_database(server_url: str) -> str:
    """Create a database of this run's own on ``server_url``'s server; return its URL."""
    import psycopg

    name = f"roomcast_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0]
        raise SystemExit(
            f"PostgreSQL is not reachable at {server_url} ({first}): start it, or pass "
            "--postgres URL, or --scenarios embedded"
        ) from None
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"


def drop_database(server_url: str, database_url: str) -> None:
    """Drop the database ``create_database`` made."""
    import psycopg

    name = database_url.rpartition("/")[2]
    with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_version(server_url: str) -> str:
    """``server_version`` of the PostgreSQL server."""
    import psycopg

    with psycopg.connect(server_url, connect_timeout=5) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


# -- CPU accounting -------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """CPU counters at one instant."""

    wall: float
    client: float  # this process (the publisher), CPU s
    client_procs: dict[int, float]  # client process pid -> CPU s (the members)
    procs: dict[str, float]  # child name -> CPU s
    machine_busy: float  # all CPUs, s (user+nice+system+irq+softirq)
    machine_steal: float  # all CPUs, s taken by the hypervisor


def _machine() -> tuple[float, float]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


def sample(procs: list[Proc], client_pids: list[int] | None = None) -> Sample:
    """Read every CPU counter now."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    busy, steal = _machine()
    return Sample(
        wall=time.monotonic(),
        client=usage.ru_utime + usage.ru_stime,
        client_procs={pid: pid_cpu_seconds(pid) for pid in client_pids or []},
        procs={p.name: p.cpu_seconds() for p in procs},
        machine_busy=busy,
        machine_steal=steal,
    )


def cpu_between(a: Sample, b: Sample) -> dict[str, float]:
    """CPU use between two samples, in cores (CPU s per wall s)."""
    wall = max(b.wall - a.wall, 1e-9)
    out = {"client": (b.client - a.client) / wall}
    # The member processes: their sum, and the busiest (near 1.00: a saturated client).
    members = [(v - a.client_procs.get(pid, 0.0)) / wall for pid, v in b.client_procs.items()]
    out["members"] = sum(members)
    out["members_max"] = max(members, default=0.0)
    for name, value in b.procs.items():
        out[name] = (value - a.procs.get(name, 0.0)) / wall
    out["machine"] = (b.machine_busy - a.machine_busy) / wall
    out["steal"] = (b.machine_steal - a.machine_steal) / wall
    return out


# -- machine facts ----------------------------------------------------------------------------


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=10, cwd=REPO
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def source_digest() -> str:
    """A digest of roomcast's source files: ``roomcast serve`` runs them from src/, which
    can change during a run (an editable install)."""
    digest = hashlib.blake2b(digest_size=6)
    for path in sorted((REPO / "src").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def machine_facts(postgres_url: str | None) -> dict[str, str]:
    """What the numbers depend on: CPUs, memory, kernel, Python, package versions, commit."""
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    # --no-optional-locks: only read the repository, never refresh its index.
    commit = _run(["git", "--no-optional-locks", "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "--no-optional-locks", "status", "--porcelain", "--", "src"])
    facts = {
        "nproc": str(len(os.sched_getaffinity(0))),
        "CPU": _cpu_model(),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "load average at start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": ", ".join(f"{p} {_version(p)}" for p in PACKAGES),
        "redis-server": _run(["redis-server", "--version"]).split(" sha=")[0] or "not found",
        "commit": commit + (" (src/ has uncommitted changes)" if dirty else ""),
        "src/ digest at start": source_digest(),
    }
    if postgres_url:
        facts["PostgreSQL"] = postgres_version(postgres_url)
    return facts


# -- running a benchmark script ---------------------------------------------------------------

DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432/test"


def add_run_arguments(parser: argparse.ArgumentParser, *, postgres: bool = False) -> None:
    """The arguments every benchmark script takes (``--postgres`` where it uses one)."""
    parser.add_argument(
        "--time-limit", type=float, default=290.0, help="stop everything after this (default 290)"
    )
    if postgres:
        parser.add_argument(
            "--postgres",
            default=DEFAULT_POSTGRES,
            help="PostgreSQL server to create the run's database on (dropped at the end)",
        )
    parser.add_argument("--output", type=Path, help="also write the Markdown results here")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs")


def run_benchmark(
    script: str,
    args: argparse.Namespace,
    facts: dict[str, str],
    measure: Callable[[Processes], Awaitable[None]],
    results: list[Any],
    *,
    failed: Callable[[list[Any]], bool],
    report: Callable[[str, Processes], str],
) -> int:
    """Run ``measure`` within ``--time-limit``, stop every process it started (on an
    error, Ctrl-C or SIGTERM too), then print and write the report; 0 unless ``failed``.

    ``report(command, procs)`` turns ``results`` and ``facts`` into Markdown; the server
    logs stay in the run's directory when the run failed or ``--keep-logs`` asks."""
    from _clients import loop_factory

    command = " ".join([f".venv/bin/python benchmarks/{script}", *sys.argv[1:]])
    workdir = Path(tempfile.mkdtemp(prefix=f"roomcast-{Path(script).stem}-"))
    procs = Processes(workdir)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C: clean up
    timed_out = False
    run_failed = True  # until shown otherwise: keep the logs of a run that went wrong
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(asyncio.wait_for(measure(procs), args.time_limit))
    except TimeoutError:
        timed_out = True
        print(f"stopped: --time-limit {args.time_limit} s reached", file=sys.stderr)
    else:
        run_failed = failed(results)
    finally:
        procs.stop_all()
        if args.keep_logs or run_failed:
            print(f"server logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    facts["load average at end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    facts["src/ digest at end"] = source_digest()
    text = report(command, procs)
    if facts["src/ digest at end"] != facts["src/ digest at start"]:
        text += "\nsrc/ changed during the run: servers started later ran other code.\n"
    if timed_out:
        text += f"\nStopped by --time-limit {args.time_limit} s: the tables are incomplete.\n"
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    if args.json:
        data = {
            "command": command,
            "facts": facts,
            "failed": run_failed,
            "timed_out": timed_out,
            "results": [dataclasses.asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(data, indent=1))
    return 1 if run_failed else 0
