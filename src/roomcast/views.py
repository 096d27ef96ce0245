"""HTTP side: the chat pages (the seed's index and room) and the HTTP push API.

The push API is the same operations as :mod:`roomcast.push`, for code that is not
Python or not on a machine with Redis access (``roomcast push`` uses it)::

    POST /api/rooms/<room>/messages    {"message": TEXT}   -> 201 {"room", "seq"}
    GET  /api/rooms/<room>/messages?before=SEQ&limit=N     -> 200 {"messages", "has_more"}
    POST /api/rooms/<room>/disconnect  {"reason": TEXT, "user_id": ID}   -> 202

Each needs ``Authorization: Bearer KEY`` with a key from ``ROOMCAST['API_KEYS']``.

Every input is read through the protocol's functions (room names, JSON, integers), so a
request gets the same answer as the same thing sent over the room socket: bad input is a
400 (413 for a body over ``MAX_FRAME_BYTES``) with ``{"error": CODE, "detail": TEXT}``,
never a 500.
"""

from __future__ import annotations

import hmac
from typing import Any
from urllib.parse import quote

from channels.db import database_sync_to_async
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.templatetags.static import static
from django.urls import get_script_prefix, reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from . import push, services
from .conf import roomcast_settings
from .models import Room
from .protocol import FrameTooLargeError, InvalidFrameError, InvalidJSONError, ProtocolError, codec

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
        name = _room_name(request, room_name)
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


def _room_name(request: HttpRequest, room_name: str) -> str:
    """The canonical room name of the URL, by the same rule as the room socket's."""
    _check_path_encoding(request)
    return codec.validate_room_name(room_name, max_chars=roomcast_settings.ROOM_NAME_MAX_CHARS)


def _check_path_encoding(request: HttpRequest) -> None:
    """Refuse a path whose %XX escapes are not UTF-8, as the room socket does.

    ``request.path`` cannot tell: under ASGI it is the server's decoding (uvicorn turns
    every such byte into U+FFFD, which the name rule refuses), under WSGI Django keeps the
    bytes as ``%XX`` text, so ``/chat/%FF/`` would name a room called "%FF". The raw path
    is ASGI's ``raw_path`` (optional in the spec), or under WSGI the request line's URI
    where the server passes it on (gunicorn's ``RAW_URI``, uWSGI's and mod_wsgi's
    ``REQUEST_URI``); Django rewrites ``PATH_INFO`` to the decoded text.
    """
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict):
        raw_path = scope.get("raw_path")
        if isinstance(raw_path, bytes):
            codec.check_path_encoding(raw_path)
        return
    uri = request.META.get("RAW_URI") or request.META.get("REQUEST_URI")
    if isinstance(uri, str):
        # WSGI environ strings are bytes decoded as Latin-1 (PEP 3333).
        codec.check_path_encoding(uri.partition("?")[0].encode("latin-1", "replace"))


def _body_text(request: HttpRequest) -> str:
    """The request body as text, within ``MAX_FRAME_BYTES``, strictly UTF-8 (RFC 8259)."""
    max_bytes = roomcast_settings.MAX_FRAME_BYTES
    too_large = FrameTooLargeError(f"The body is limited to {max_bytes} bytes.")
    try:
        body = request.body
    except RequestDataTooBig:  # over DATA_UPLOAD_MAX_MEMORY_SIZE: Django refused to read it
        raise too_large from None
    if len(body) > max_bytes:
        raise too_large
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJSONError(f"The body is not UTF-8 text (byte {exc.start}).") from None


def _json_body(request: HttpRequest) -> dict[str, Any]:
    text = _body_text(request)
    if not text.strip():
        return {}
    body = codec.decode_json(text, what="body")
    if not isinstance(body, dict):
        raise InvalidFrameError("The body must be a JSON object.")
    return body


def _response_for(exc: ProtocolError) -> JsonResponse:
    return _error(413 if isinstance(exc, FrameTooLargeError) else 400, exc.code, exc.detail)


@csrf_exempt
@require_http_methods(["GET", "POST"])
async def api_messages(request: HttpRequest, room_name: str) -> HttpResponse:
    """POST: push a message to the room. GET: a page of its history."""
    if (denied := _authorized(request)) is not None:
        return denied
    try:
        name = _room_name(request, room_name)
        if request.method == "GET":
            return await _history(request, name)
        frame = codec.parse_frame(_body_text(request), max_bytes=roomcast_settings.MAX_FRAME_BYTES)
        if frame["type"] != "message":
            raise InvalidFrameError('Send {"message": TEXT}.')
    except ProtocolError as exc:
        return _response_for(exc)
    stored = await push.asend_to_room(name, frame["message"])
    return JsonResponse({"room": stored.room, "seq": stored.seq}, status=201)


async def _history(request: HttpRequest, room: str) -> HttpResponse:
    before = limit = None
    if "before" in request.GET:
        before = codec.parse_query_int(request.GET["before"], name="before", minimum=1)
    if "limit" in request.GET:
        limit = codec.parse_query_int(request.GET["limit"], name="limit", minimum=1)
    limit = min(limit or codec.HISTORY_PAGE_DEFAULT, codec.HISTORY_PAGE_MAX)
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
        name = _room_name(request, room_name)
        body = _json_body(request)
        user_id = body.get("user_id")
        reason = body.get("reason", "")
        if user_id is not None and not (
            isinstance(user_id, int)
            and not isinstance(user_id, bool)
            and abs(user_id) <= codec.SEQ_MAX
        ):
            raise InvalidFrameError("user_id must be an integer (a user's primary key).")
        if not isinstance(reason, str):
            raise InvalidFrameError("reason must be a string.")
        codec.check_text(reason, "reason")
        if len(reason.encode()) > codec.CLOSE_REASON_MAX_BYTES:
            raise InvalidFrameError(
                f"reason is limited to {codec.CLOSE_REASON_MAX_BYTES} bytes of UTF-8 "
                "(a WebSocket close frame's reason)."
            )
    except ProtocolError as exc:
        return _response_for(exc)
    await push.adisconnect(name, user_id=user_id, reason=reason)
    return JsonResponse({"room": name}, status=202)
