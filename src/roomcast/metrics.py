"""roomcast's Prometheus metrics: every metric object, in one place.

Call sites import this module and call ``inc()``/``dec()``/``set()``/``observe()`` on
the objects below, never branching: without prometheus-client installed each is a
:class:`_Noop` that does nothing, and ``GET /metrics`` answers 501 saying what to
install (:func:`exposition`). Importing this module does no I/O and reads no settings.

Cost. The hot paths pay one call per message per room, never one per member or per
frame written: the hub adds the number of its local members to ``deliveries`` once per
message (a loop over members stays free of metric calls), the writer thread counts a
batch once.

Several processes (``roomcast serve --workers N``). prometheus-client's multiprocess
mode: when ``PROMETHEUS_MULTIPROC_DIR`` is set before prometheus_client is first
imported (``roomcast serve`` sets it to a per-run directory under the data dir, emptied
at start), each process writes its values to files there, and a scrape of any worker
sums them (:func:`exposition`). Gauges say how: ``livesum`` (the sum over processes
alive; a process that exits normally has its files removed by :func:`_process_exit`;
one killed with SIGKILL keeps its last values until the next start). Without the
variable (a project's own server, tests) the values live in this process only.

Layer: imports the standard library and prometheus_client (optional); nothing of
roomcast, so every layer may import it.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

#: What ``GET /metrics`` says when prometheus-client is missing.
MISSING = (
    "/metrics needs prometheus-client: pip install 'prometheus-client>=0.20' "
    "(or roomcast[server])\n"
)
#: Store latency buckets, in seconds: a batch commits in about a millisecond on
#: PostgreSQL (benchmarks/README); the top buckets catch lock waits
#: (STORE_LOCK_TIMEOUT_MS) and a saturated queue.
STORE_LATENCY_BUCKETS_SECS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
#: ``endpoint`` label of ``roomcast_connections`` for each consumer class.
ENDPOINTS = {"RoomConsumer": "room", "MuxConsumer": "ws"}


class _Noop:
    """Stands for a metric when prometheus-client is not installed."""

    def inc(self, amount: float = 1) -> None:
        """Do nothing."""

    def dec(self, amount: float = 1) -> None:
        """Do nothing."""

    def set(self, value: float) -> None:
        """Do nothing."""

    def observe(self, value: float) -> None:
        """Do nothing."""

    def labels(self, *args: Any, **kwargs: Any) -> _Noop:
        """This stand-in again."""
        return self


try:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
except ImportError:  # pragma: no cover - the dev environment installs it
    prometheus_client = None  # type: ignore[assignment]

MULTIPROCESS = prometheus_client is not None and bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
#: This process's metrics (not prometheus_client's global REGISTRY: a project's own
#: metrics stay out of roomcast's /metrics, and ours out of the project's).
REGISTRY: Any = CollectorRegistry(auto_describe=True) if prometheus_client is not None else None


def _counter(name: str, doc: str) -> Any:
    return Counter(name, doc, registry=REGISTRY) if REGISTRY is not None else _Noop()


def _gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Any:
    if REGISTRY is None:
        return _Noop()
    return Gauge(name, doc, labels, registry=REGISTRY, multiprocess_mode="livesum")


CONNECTIONS = _gauge(
    "roomcast_connections",
    "Open WebSocket connections, by endpoint: room (/ws/chat/<room>/) or ws (/ws/).",
    ["endpoint"],
)
SUBSCRIPTIONS = _gauge(
    "roomcast_subscriptions",
    "Room memberships in the hubs: one per room socket, one per /ws/ subscription "
    "(a logged-in /ws/ connection's own user stream included).",
)
MESSAGES_STORED = _counter("roomcast_messages_stored", "Messages committed by the writer threads.")
DELIVERIES = _counter(
    "roomcast_deliveries",
    "Stored messages handed to local members: each message counts its room's members "
    "in this process.",
)
STORE_LATENCY = (
    Histogram(
        "roomcast_store_latency_seconds",
        "Seconds from a post's arrival to the commit of its row.",
        registry=REGISTRY,
        buckets=STORE_LATENCY_BUCKETS_SECS,
    )
    if REGISTRY is not None
    else _Noop()
)
STORE_QUEUE = _gauge(
    "roomcast_store_queue", "Posts waiting for a writer thread (set as posts arrive and leave)."
)
GAP_FILLS = _counter(
    "roomcast_gap_fills", "Gaps in a room's seqs that a hub filled from the database."
)
SLOW_CLOSES = _counter(
    "roomcast_slow_client_closes", "Sockets closed with 1013 for not reading their frames."
)
PUBLISH_ERRORS = _counter(
    "roomcast_layer_publish_errors",
    "Stored messages the channel layer refused or timed out on (then republished).",
)
RATE_LIMITED = _counter("roomcast_rate_limited_posts", "Posts refused as over the rate limits.")
PRESENCE_USERS = _gauge(
    "roomcast_presence_users",
    "Users (and guests) present in rooms through this process's presence tracker: one per "
    "room and user, whatever their number of sockets.",
)

_connections = {cls: CONNECTIONS.labels(endpoint) for cls, endpoint in ENDPOINTS.items()}


def socket_opened(consumer: object) -> None:
    """Count a WebSocket connection of ``consumer`` (a consumer instance) as open."""
    gauge = _connections.get(type(consumer).__name__)
    if gauge is not None:
        gauge.inc()


def socket_closed(consumer: object) -> None:
    """Count ``consumer``'s connection as closed (after :func:`socket_opened`)."""
    gauge = _connections.get(type(consumer).__name__)
    if gauge is not None:
        gauge.dec()


def batch_stored(posts: Sequence[Any], results: Sequence[object]) -> None:
    """Count a writer batch: each stored post (``results`` holds its StoredMessage, or
    an exception for one that failed) and its latency from ``post.created_at``."""
    if REGISTRY is None:
        return
    now = datetime.now(UTC)
    stored = 0
    for post, result in zip(posts, results, strict=False):
        if not isinstance(result, BaseException):
            stored += 1
            STORE_LATENCY.observe(max(0.0, (now - post.created_at).total_seconds()))
    if stored:
        MESSAGES_STORED.inc(stored)


def exposition() -> tuple[bytes, str] | None:
    """The metrics in Prometheus's text format and its content type; None without
    prometheus-client. In multiprocess mode, the sum of every process's files."""
    if prometheus_client is None:
        return None
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    if MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def _process_exit() -> None:
    """Drop this process's live gauges from the multiprocess directory."""
    from prometheus_client import multiprocess

    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and os.path.isdir(directory):
        multiprocess.mark_process_dead(os.getpid(), directory)  # type: ignore[no-untyped-call]


if MULTIPROCESS:
    # uvicorn's workers are spawned processes, which run atexit handlers on exit.
    atexit.register(_process_exit)
