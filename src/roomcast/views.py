"""HTTP side: the chat pages (the seed's index and room) and the HTTP push API.

The push API is the same operations as :mod:`roomcast.push`, for code that is not
Python or not on a machine with Redis access (``roomcast push`` uses it)::

    POST /api/rooms/<room>/messages    {"message": TEXT}   -> 201 {"room", "seq"}
    GET  /api/rooms/<room>/messages?before=SEQ&limit=N     -> 200 {"messages", "has_more"}
    POST /api/rooms/<room>/disconnect  {"reason": TEXT, "user_id": ID}   -> 202
    PATCH  /api/rooms/<room>/messages/<seq>  {"message": TEXT}  -> 200 {"room", "seq", "target"}
    DELETE /api/rooms/<room>/messages/<seq>                     -> 200 {"room", "seq", "target"}

Each takes ``Authorization: Bearer KEY`` with a key from ``ROOMCAST['API_KEYS']`` (full
access). Editing and deleting a message also take a user's token or session, acting as
that user (``roomcast.edits``: the author within the edit window, or a moderator); a
refusal is 403 ``forbidden``, no such message 404 ``not_found``. Reading history also
takes a user's connection token in the same header (``roomcast.auth``), or the session
of a logged-in user: then only rooms that user may read, and any other room, existing
or not, is a 404 (a private room's existence does not leak). A token in the URL
(``?token=``) is refused with 400 ``token_in_url``.

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
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.templatetags.static import static
from django.urls import get_script_prefix, reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from . import access, auth, edits, fanout, push, services
from . import rooms as rooms_api
from .conf import roomcast_settings
from .exceptions import MessageNotFoundError, PermissionDeniedError
from .models import Room
from .protocol import (
    FrameTooLargeError,
    InvalidFrameError,
    InvalidJSONError,
    ProtocolError,
    TokenInURLError,
    codec,
)
from .security import GUEST_NAME_SESSION_KEY

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


#: Longest username the APIs take: an email address (user models that log in by email).
USERNAME_MAX_CHARS = 254

#: Rooms the index page lists, busiest first.
INDEX_ROOMS = 20


def index(request: HttpRequest) -> HttpResponse:
    """Pick a room: a name box and the busiest rooms the visitor may join (a private
    room's name is not shown to those outside it)."""
    user = getattr(request, "user", None)
    # Users' own channels (user/<id>) are stored as rooms but are nobody's chat room.
    rooms = Room.objects.exclude(name__startswith=fanout.USER_STREAM_PREFIX).order_by("-last_seq")
    if not (user is not None and user.is_authenticated and (user.is_staff or user.is_superuser)):
        visible = Q(visibility__in=(Room.Visibility.PUBLIC, Room.Visibility.READ_ONLY))
        if user is not None and user.is_authenticated:
            visible |= Q(memberships__user=user)
        rooms = rooms.filter(visible).distinct()
    names = list(rooms.values_list("name", flat=True)[:INDEX_ROOMS])
    if roomcast_settings.ACCESS_POLICY:  # the project's rules decide, room by room
        identity = access.identity_for(user)
        names = [name for name in names if access.check(identity, name, "join")]
    return render(request, "roomcast/index.html", _index_page(names))


def room(request: HttpRequest, room_name: str) -> HttpResponse:
    """The room page. Its script reads ``page``: the client's URL, the socket's path
    (under the script prefix, so a site mounted below a path works) and MAX_FRAME_BYTES."""
    try:
        name = _room_name(request, room_name)
    except ProtocolError as exc:
        return render(request, "roomcast/index.html", _index_page([], exc.detail), status=400)
    _keep_guest_name(request)
    page = {
        "room": name,
        "clientUrl": static("roomcast/roomcast.js"),
        "socketPath": get_script_prefix() + SOCKET_PATH.format(room=quote(name, safe="")),
        "maxFrameBytes": roomcast_settings.MAX_FRAME_BYTES,
    }
    return render(request, "roomcast/room.html", {"room_name": name, "page": page})


def _keep_guest_name(request: HttpRequest) -> None:
    """Give a visitor who is not logged in a guest name in the session, once: the room
    socket reads it from there (``security.identity_from_session``), so the guest is one
    name across reloads and tabs. Without Django's session middleware, each socket is a
    new guest."""
    session = getattr(request, "session", None)
    user = getattr(request, "user", None)
    if session is None or (user is not None and user.is_authenticated):
        return
    if not isinstance(session.get(GUEST_NAME_SESSION_KEY), str):
        session[GUEST_NAME_SESSION_KEY] = access.anonymous().name


def _error(status: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse({"error": code, "detail": detail}, status=status)


def _authorized(
    request: HttpRequest, *, off: str = "The push API is off: set ROOMCAST['API_KEYS']."
) -> JsonResponse | None:
    """None if the request brings an API key; else the 401 to answer (``off``: the 403's
    detail when no API key is set)."""
    keys = roomcast_settings.API_KEYS
    if not keys:
        return _error(403, "api_disabled", off)
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not _is_api_key(given):
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
    if request.method == "GET":
        return await _get_messages(request, room_name)
    if (denied := _authorized(request)) is not None:
        return denied
    try:
        name = _room_name(request, room_name)
        frame = codec.parse_frame(_body_text(request), max_bytes=roomcast_settings.MAX_FRAME_BYTES)
        if frame["type"] != "message":
            raise InvalidFrameError('Send {"message": TEXT}.')
    except ProtocolError as exc:
        return _response_for(exc)
    stored = await push.asend_to_room(name, frame["message"])
    return JsonResponse({"room": stored.room, "seq": stored.seq}, status=201)


def _is_api_key(given: str) -> bool:
    # Every key compared, in constant time: how many match or where is not given away.
    found = False
    for key in roomcast_settings.API_KEYS:
        found |= hmac.compare_digest(given.encode(), key.encode())
    return found


async def _reader(request: HttpRequest) -> access.Identity | JsonResponse | None:
    """Who reads: None for an API key (full access), the identity of a user's token or
    logged-in session, or the error response for anything else.

    Raises:
        TokenInURLError: the query has a token (``?token=``): they go in the header.
    """
    if any(name in request.GET for name in codec.TOKEN_QUERY_PARAMETERS):
        raise TokenInURLError()
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() == "bearer" and given:
        if _is_api_key(given):
            return None
        try:
            user, expires_at = await database_sync_to_async(auth.verify_token)(given)
        except auth.TokenError as exc:
            response = _error(401, exc.code, str(exc))
            response["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            return response
        return access.identity_for(user, via="token", expires_at=expires_at)
    if hasattr(request, "auser"):  # Django's AuthenticationMiddleware is installed
        user = await request.auser()
        if user.is_authenticated:
            session = getattr(request, "session", None)
            key = session.session_key if session is not None else None
            return access.identity_for(user, via="session", session_key=key)
    if not roomcast_settings.API_KEYS:
        return _error(
            403, "api_disabled", "Log in, send a user's token, or set ROOMCAST['API_KEYS']."
        )
    response = _error(
        401, "unauthorized", "Send Authorization: Bearer <API key or a user's token>, or log in."
    )
    response["WWW-Authenticate"] = "Bearer"
    return response


def _may_read(reader: access.Identity | None, room: str) -> bool:
    """Whether ``reader`` (from :func:`_reader`) may read ``room``: an API key (None) any
    room, a user a room that exists and that they may ``read``."""
    if reader is None:
        return True
    return Room.objects.filter(name=room).exists() and access.check(reader, room, "read")


def _not_readable(room: str) -> JsonResponse:
    """The answer to a user about a room they may not read: one answer for "no such
    room" and "not yours to read", so a private room's existence does not leak."""
    return _error(404, "not_found", f"No room {room!r} that you may read.")


def _readable_history(
    reader: access.Identity | None, room: str, before: int | None, limit: int
) -> tuple[list[str], bool] | None:
    """:func:`services.read_history` if ``reader`` may read ``room`` (:func:`_may_read`)."""
    if not _may_read(reader, room):
        return None
    return services.read_history(room, before, limit)


async def _get_messages(request: HttpRequest, room_name: str) -> HttpResponse:
    try:
        reader = await _reader(request)
        if isinstance(reader, HttpResponse):
            return reader
        room = _room_name(request, room_name)
        before = limit = None
        if "before" in request.GET:
            before = codec.parse_query_int(request.GET["before"], name="before", minimum=1)
        if "limit" in request.GET:
            limit = codec.parse_query_int(request.GET["limit"], name="limit", minimum=1)
    except ProtocolError as exc:
        return _response_for(exc)
    limit = min(limit or codec.HISTORY_PAGE_DEFAULT, codec.HISTORY_PAGE_MAX)
    page = await database_sync_to_async(_readable_history)(reader, room, before, limit)
    if page is None:
        return _not_readable(room)
    frames, has_more = page
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
    """Close the room's sockets in every process (only one user's, with ``user_id`` or
    ``user``, a username: 404 if there is no such user)."""
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
        username = body.get("user")
        if username is not None:
            if user_id is not None:
                raise InvalidFrameError('Give "user" (a username) or "user_id", not both.')
            if not isinstance(username, str) or not 0 < len(username) <= USERNAME_MAX_CHARS:
                raise InvalidFrameError(
                    f'"user" must be a username (1 to {USERNAME_MAX_CHARS} characters).'
                )
            codec.check_text(username, "user")
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
    if username is not None:
        user_id = await database_sync_to_async(_user_id_of)(username)
        if user_id is None:
            return _error(404, "not_found", f"No user {username!r}.")
    await push.adisconnect(name, user_id=user_id, reason=reason)
    return JsonResponse({"room": name}, status=202)


def _user_id_of(username: str) -> int | None:
    try:
        return int(rooms_api.get_user(username).pk)
    except rooms_api.UserNotFoundError:
        return None


@csrf_exempt
@require_http_methods(["PATCH", "DELETE"])
async def api_message(request: HttpRequest, room_name: str, seq: str) -> HttpResponse:
    """PATCH ``{"message": TEXT}``: edit message ``seq``. DELETE: delete it.

    With an API key the site acts (always allowed); with a user's token or session,
    that user (the author within ``EDIT_WINDOW_SECS``, or a moderator). The change is a
    stream event with its own seq: ``200 {"room", "seq": EVENT_SEQ, "target": seq}``.
    A room the user may not read answers 404 like a message that does not exist.
    """
    try:
        actor = await _reader(request)
        if isinstance(actor, HttpResponse):
            return actor
        room = _room_name(request, room_name)
        target = codec.parse_query_int(
            seq, name="the message's seq", minimum=1, error=InvalidFrameError
        )
        text = None
        if request.method == "PATCH":
            body = _json_body(request)
            text = body.get("message")
            if not isinstance(text, str):
                raise InvalidFrameError('Send {"message": TEXT}, the new text.')
        client_id = request.headers.get("Idempotency-Key", "")
        if actor is not None and not await database_sync_to_async(access.check)(
            actor, room, "read"
        ):
            raise MessageNotFoundError(f"No message {target} in a room {room!r} you may read.")
        if text is not None:
            change = await edits.aedit_message(room, target, text, by=actor, client_id=client_id)
        else:
            change = await edits.adelete_message(room, target, by=actor, client_id=client_id)
    except ProtocolError as exc:
        return _response_for(exc)
    except MessageNotFoundError as exc:
        return _error(404, exc.code, exc.detail)
    except PermissionDeniedError as exc:
        return _error(403, exc.code, exc.detail)
    return JsonResponse({"room": change.room, "seq": change.seq, "target": change.target})
