"""HTTP side: the chat pages (the seed's index and room) and the HTTP push API.

The push API is the same operations as :mod:`roomcast.push`, for code that is not
Python or not on a machine with Redis access (``roomcast push`` uses it)::

    POST /api/rooms/<room>/messages    {"message": TEXT}   -> 201 {"room", "seq"}
    GET  /api/rooms/<room>/messages?before=SEQ&limit=N     -> 200 {"messages", "has_more"}
    POST /api/rooms/<room>/disconnect  {"reason": TEXT, "user_id": ID}   -> 202

Each needs ``Authorization: Bearer KEY`` with a key from ``ROOMCAST['API_KEYS']``.
"""

from __future__ import annotations

import hmac
import json
from typing import Any
from urllib.parse import quote

from channels.db import database_sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.templatetags.static import static
from django.urls import get_script_prefix, reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from . import push, services
from .conf import roomcast_settings
from .models import Room
from .protocol import ProtocolError, codec

#: The room socket's path under the site's script prefix: the route of
#: ``roomcast.routing.websocket_urlpatterns``. WebSocket routes are not in Django's URLconf,
#: so the pages cannot reverse it; tests/test_pages.py keeps the two in step.
SOCKET_PATH = "ws/chat/{room}/"

#: Stands for the room name in the room page's URL given to the index page's form.
_ROOM_PLACEHOLDER = "__room__"


def _index_page(rooms: list[str], error: str | None = None) -> dict[str, Any]:
    """The index page's context: its form builds room URLs from ``roomUrl`` (the part
    before and after the name), wherever the project includes roomcast.urls."""
    before, _, after = reverse("roomcast:room", args=[_ROOM_PLACEHOLDER]).rpartition(
        _ROOM_PLACEHOLDER
    )
    return {"rooms": rooms, "error": error, "page": {"roomUrl": [before, after]}}


def index(request: HttpRequest) -> HttpResponse:
    """Pick a room: a name box and the busiest rooms."""
    rooms = Room.objects.order_by("-last_seq").values_list("name", flat=True)[:20]
    return render(request, "roomcast/index.html", _index_page(list(rooms)))


def room(request: HttpRequest, room_name: str) -> HttpResponse:
    """The room page. Its script reads ``page``: the client's URL, the socket's path
    (under the script prefix, so a site mounted below a path works) and MAX_FRAME_BYTES."""
    try:
        name = codec.validate_room_name(room_name, max_chars=roomcast_settings.ROOM_NAME_MAX_CHARS)
    except ProtocolError as exc:
        return render(request, "roomcast/index.html", _index_page([], exc.detail), status=400)
    page = {
        "room": name,
        "clientUrl": static("roomcast/roomcast.js"),
        "socketPath": get_script_prefix() + SOCKET_PATH.format(room=quote(name, safe="")),
        "maxFrameBytes": roomcast_settings.MAX_FRAME_BYTES,
    }
    return render(request, "roomcast/room.html", {"room_name": name, "page": page})


def _error(status: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse({"error": code, "detail": detail}, status=status)


def _authorized(request: HttpRequest) -> JsonResponse | None:
    keys = roomcast_settings.API_KEYS
    if not keys:
        return _error(403, "api_disabled", "The push API is off: set ROOMCAST['API_KEYS'].")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not any(
        hmac.compare_digest(given.encode(), key.encode()) for key in keys
    ):
        response = _error(401, "unauthorized", "Send Authorization: Bearer <API key>.")
        response["WWW-Authenticate"] = "Bearer"
        return response
    return None


def _room_name(room_name: str) -> str:
    return codec.validate_room_name(room_name, max_chars=roomcast_settings.ROOM_NAME_MAX_CHARS)


def _json_body(request: HttpRequest) -> dict[str, Any]:
    if not request.body:
        return {}
    try:
        body = json.loads(request.body)
    except ValueError as exc:
        raise ProtocolError(f"The body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise ProtocolError("The body must be a JSON object.")
    return body


@csrf_exempt
@require_http_methods(["GET", "POST"])
async def api_messages(request: HttpRequest, room_name: str) -> HttpResponse:
    """POST: push a message to the room. GET: a page of its history."""
    if (denied := _authorized(request)) is not None:
        return denied
    try:
        name = _room_name(room_name)
        if request.method == "GET":
            return await _history(request, name)
        frame = codec.parse_frame(
            request.body.decode("utf-8", "replace"), max_bytes=roomcast_settings.MAX_FRAME_BYTES
        )
        if frame["type"] != "message":
            raise ProtocolError('Send {"message": TEXT}.')
    except ProtocolError as exc:
        return _error(413 if exc.code == "frame_too_large" else 400, exc.code, exc.detail)
    stored = await push.asend_to_room(name, frame["message"])
    return JsonResponse({"room": stored.room, "seq": stored.seq}, status=201)


async def _history(request: HttpRequest, room: str) -> HttpResponse:
    try:
        before = int(request.GET["before"]) if "before" in request.GET else None
        limit = min(int(request.GET.get("limit", 50)), codec.HISTORY_PAGE_MAX)
    except ValueError:
        raise ProtocolError("before and limit must be integers.") from None
    if limit < 1 or (before is not None and before < 1):
        raise ProtocolError("before and limit must be positive.")
    frames, has_more = await database_sync_to_async(services.read_history)(room, before, limit)
    body = (
        '{"messages":['
        + ",".join(frames)
        + '],"has_more":'
        + ("true" if has_more else "false")
        + "}"
    )
    return HttpResponse(body, content_type="application/json")


@csrf_exempt
@require_http_methods(["POST"])
async def api_disconnect(request: HttpRequest, room_name: str) -> HttpResponse:
    """Close the room's sockets in every process (only one user's with ``user_id``)."""
    if (denied := _authorized(request)) is not None:
        return denied
    try:
        name = _room_name(room_name)
        body = _json_body(request)
        user_id = body.get("user_id")
        reason = body.get("reason", "")
        if user_id is not None and (not isinstance(user_id, int) or isinstance(user_id, bool)):
            raise ProtocolError("user_id must be an integer.")
        if not isinstance(reason, str) or len(reason) > 120:
            raise ProtocolError("reason must be a string of at most 120 characters.")
    except ProtocolError as exc:
        return _error(400, exc.code, exc.detail)
    await push.adisconnect(name, user_id=user_id, reason=reason)
    return JsonResponse({"room": name}, status=202)
