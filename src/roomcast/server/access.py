"""One access line per HTTP request that reaches Django, with its user and room.

Layer: server (standalone site). ``roomcast serve --access-log`` writes it on the
``roomcast.access`` logger, beside the WebSocket session lines (``roomcast.socket_log``),
at INFO; uvicorn's own request line, which knows neither the user nor the room, is then
kept at DEBUG (``server.logs``). Static files (``/static/...``, served before Django by
``ASGIStaticFilesHandler``) get only uvicorn's line.

The line: ``client - "METHOD path" status in seconds``, then ``room=... user=...`` in
the text format, or the fields ``client``, ``method``, ``path``, ``status``,
``duration_ms``, ``room`` and ``user`` in the JSON one. A token in the query is blanked.
The user is named only if the request's session was read anyway (by the view, or the
authentication middleware's lazy user once evaluated): logging never costs a database
read of its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

from roomcast.socket_log import access_logger

from .logs import redact_query

__all__ = ["AccessLogMiddleware"]

#: Longest path written (the client chose it).
PATH_MAX_CHARS = 300


class AccessLogMiddleware:
    """Django middleware (first in ``MIDDLEWARE``): log each request when it is answered."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self._async:
            return self._acall(request)
        started = time.monotonic()
        response = self.get_response(request)
        _log(request, response, started)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        started = time.monotonic()
        get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
        response = await get_response(request)
        _log(request, response, started)
        return response


def _log(request: HttpRequest, response: HttpResponseBase, started: float) -> None:
    if not access_logger.isEnabledFor(logging.INFO):
        return
    duration = time.monotonic() - started
    path = redact_query(request.get_full_path())[:PATH_MAX_CHARS]
    client = request.META.get("REMOTE_ADDR") or "-"
    fields: dict[str, Any] = {
        "client": client,
        "method": request.method,
        "path": path,
        "status": response.status_code,
        "duration_ms": round(duration * 1000),
    }
    match = request.resolver_match
    room = match.kwargs.get("room_name") if match is not None else None
    if room:
        fields["room"] = room
    user = getattr(request, "_cached_user", None)  # set once the lazy user was read
    if user is not None and user.is_authenticated:
        fields["user"] = user.get_username()
    access_logger.info(
        '%s - "%s %s" %d in %.3f s',
        client,
        request.method,
        path,
        response.status_code,
        duration,
        extra=fields,
    )
