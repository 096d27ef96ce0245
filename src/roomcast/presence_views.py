"""HTTP: who is in a room, ``GET /api/rooms/<room>/presence``.

Layer: transport (HTTP), beside :mod:`roomcast.views`, whose request reading it shares:
the same answers to keys, tokens and sessions as the history endpoint (``GET
/api/rooms/<room>/messages``) and the same room-name rule. Never touches a socket.

Who may ask: an API key (any room; one nobody is in is an empty list), a user's
connection token or a logged-in session (the rooms that user may ``read``: any other
room, existing or not, is 404 ``not_found``, so a private room's existence does not
leak). The answer is :func:`roomcast.presence.amembers`'s::

    {"room": "lobby", "users": [{"user": "alice", "connections": 2}], "count": 1,
     "anonymous": 3, "truncated": false}

503 ``presence_unavailable`` when Redis does not answer and this process has no view of
the room.
"""

from __future__ import annotations

from channels.db import database_sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_http_methods

from . import presence
from .protocol import ProtocolError
from .views import _error, _may_read, _not_readable, _reader, _response_for, _room_name


@require_http_methods(["GET"])
async def api_presence(request: HttpRequest, room_name: str) -> HttpResponse:
    """Who is in the room now, on every process."""
    try:
        reader = await _reader(request)
        if isinstance(reader, HttpResponse):
            return reader
        room = _room_name(request, room_name)
    except ProtocolError as exc:
        return _response_for(exc)
    if reader is not None and not await database_sync_to_async(_may_read)(reader, room):
        return _not_readable(room)
    try:
        body = await presence.amembers(room)
    except presence.PresenceUnavailableError as exc:
        return _error(503, "presence_unavailable", str(exc))
    return JsonResponse(body, json_dumps_params={"ensure_ascii": False})
