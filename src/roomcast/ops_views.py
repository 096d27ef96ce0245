"""What an operator's probes and Prometheus ask: ``/healthz``, ``/readyz``, ``/metrics``.

* ``GET /healthz``: 200 ``{"status": "ok"}`` while the process answers; no I/O.
* ``GET /readyz``: the database (``SELECT 1`` on a connection of its own) and the
  channel layer (a message sent to a private channel of this process and received back)
  are each given :data:`CHECK_TIMEOUT_SECS`; 200 ``{"status": "ok", "database": "ok",
  "channel_layer": "ok"}``, else 503 with ``"status": "unavailable"`` and each failed
  check's reason in its place. A check still running from an earlier probe (a database
  that hangs) is not started again: it answers "still waiting" at once, so probes never
  pile up threads.
* ``GET /metrics``: :mod:`roomcast.metrics` in Prometheus's text format. It needs
  ``Authorization: Bearer <API key>`` (counts tell who is active) unless
  ``ROOMCAST['METRICS_PUBLIC']``; 501 saying what to install without prometheus-client.

Layer: HTTP views, beside ``views.py``; imports conf, fanout, metrics and Django.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_safe

from . import fanout, metrics
from .conf import roomcast_settings
from .views import _authorized

#: Seconds each readiness check may take; past it the check fails with "timed out". A
#: load balancer's probe usually allows 5 s: both checks run at once and fit in it.
CHECK_TIMEOUT_SECS = 2.0
#: Longest reason reported for a failed check, in characters (the first line of the
#: error; the log is the place for the rest).
MAX_REASON_CHARS = 200


@require_safe
async def healthz(request: HttpRequest) -> JsonResponse:
    """200 while the process serves requests."""
    return JsonResponse({"status": "ok"})


@require_safe
async def readyz(request: HttpRequest) -> JsonResponse:
    """200 when the database and the channel layer answer in time, else 503 and why."""
    database, layer = await asyncio.gather(
        _bounded(_database_check.run()), _bounded(_layer_check())
    )
    ok = database == "ok" and layer == "ok"
    body = {"status": "ok" if ok else "unavailable", "database": database, "channel_layer": layer}
    return JsonResponse(body, status=200 if ok else 503)


@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The metrics, for Prometheus (see the module docstring for access)."""
    if not roomcast_settings.METRICS_PUBLIC:
        refused = _refused(request)
        if refused is not None:
            return refused
    exposed = metrics.exposition()
    if exposed is None:
        return HttpResponse(metrics.MISSING, status=501, content_type="text/plain; charset=utf-8")
    body, content_type = exposed
    return HttpResponse(body, content_type=content_type)


def _refused(request: HttpRequest) -> JsonResponse | None:
    return _authorized(
        request,
        off="/metrics needs an API key: set ROOMCAST['API_KEYS'], or "
        "ROOMCAST['METRICS_PUBLIC'] = True.",
    )


async def _bounded(check: Awaitable[str]) -> str:
    """``check``'s result, or why it failed, within CHECK_TIMEOUT_SECS; never raises."""
    try:
        return await asyncio.wait_for(check, CHECK_TIMEOUT_SECS)
    except TimeoutError:
        return f"timed out after {CHECK_TIMEOUT_SECS:g} s"
    except Exception as exc:
        return _reason(exc)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return reason[:MAX_REASON_CHARS]


class _ThreadCheck:
    """Runs a blocking check on a thread of its own, one at a time: a thread stuck in
    the database's connect is left to finish (threads cannot be cancelled), and the
    probes meanwhile answer at once instead of starting more."""

    def __init__(self, check: Callable[[], None]) -> None:
        self.check = check
        self.running = False
        self.lock = threading.Lock()

    async def run(self) -> str:
        with self.lock:
            if self.running:
                return "still waiting for the previous check (the database is not answering)"
            self.running = True
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()

        def target() -> None:
            try:
                self.check()
                result = "ok"
            except Exception as exc:
                result = _reason(exc)
            finally:
                with self.lock:
                    self.running = False
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, done, result)

        threading.Thread(target=target, name="roomcast-readyz", daemon=True).start()
        return await done


def _resolve(future: asyncio.Future[str], result: str) -> None:
    if not future.done():
        future.set_result(result)


def _select_one() -> None:
    """``SELECT 1`` on a connection opened (and closed) by this thread."""
    try:
        with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connections.close_all()  # this thread's connections only


_database_check = _ThreadCheck(_select_one)


class _Probe:
    """One event loop's layer check: its lock and its private channel per layer."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.channels: dict[int, str] = {}


_probes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Probe] = weakref.WeakKeyDictionary()


async def _layer_check() -> str:
    """Send a message to this process's probe channel and receive it back."""
    loop = asyncio.get_running_loop()
    probe = _probes.get(loop)
    if probe is None:
        probe = _probes[loop] = _Probe()
    layer: Any = fanout.get_layer()
    async with probe.lock:
        key = id(layer)
        channel = probe.channels.get(key)
        if channel is None:
            # new_channel subscribes it first on the pub/sub layer, so a send is not lost.
            channel = probe.channels[key] = await layer.new_channel("roomcast-probe.")
        token = secrets.token_hex(8)
        try:
            await layer.send(channel, {"type": "roomcast.probe", "token": token})
            while (await layer.receive(channel)).get("token") != token:
                pass  # an earlier probe's, received late: skip it
        except BaseException:
            # A receive cut off (timed out) may have unsubscribed the channel: next time,
            # a new one.
            probe.channels.pop(key, None)
            raise
    return "ok"
