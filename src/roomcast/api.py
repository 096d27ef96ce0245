"""HTTP management API: connection tokens, and rooms (visibility, members) over HTTP.

Layer: HTTP views, beside the push API of :mod:`roomcast.views` (whose API-key check,
body reader and error answers these reuse, so both APIs answer a bad request alike)::

    POST   /api/tokens                  {"user": NAME, "ttl": SECS}      201 TOKEN
    POST   /api/rooms                   {"name": ROOM, "visibility": V}  201 ROOM
    GET    /api/rooms/<room>                                             200 ROOM
    PATCH  /api/rooms/<room>            {"visibility": V}                200 ROOM
    POST   /api/rooms/<room>/members    {"users": [NAME], "role": R}     200 ROOM + "added"
    DELETE /api/rooms/<room>/members/<user>                              200 ROOM + "removed"
    POST   /api/users/<user>/messages   {"message": TEXT} | {"data": X}  201 {"user", "seq"}
    GET    /api/users/<user>/rooms                                       200 {"user", "rooms", ...}

``TOKEN`` is ``{"token", "user", "expires_at"}`` (Unix time, whole seconds); ``ROOM``
is ``{"name", "visibility", "members": [{"user", "role"}], "message_count", "last_seq"}``,
what ``roomcast room show --json`` prints. Each call needs
``Authorization: Bearer KEY`` with a key from ``ROOMCAST['API_KEYS']``: an API key is
the site's full trust (it mints tokens for any user), for a project's backend, never for
a browser (``GET /api/users/<user>/rooms`` also takes that user's own token or session).
Changes go through :mod:`roomcast.rooms`, so one that takes rights away
closes the sockets that lost them (``access_changed``).

Every bad input is a 400 (413 for a body over ``MAX_FRAME_BYTES``) with ``{"error",
"detail"}``; an unknown room or user a 404, a room that exists already or an inactive
user a 409. Nothing a client sends reaches a traceback.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from . import access, auth, cursors, push, revocation, rooms
from .conf import roomcast_settings
from .models import Room, RoomMember
from .protocol import InvalidFrameError, ProtocolError, codec
from .views import USERNAME_MAX_CHARS as _USERNAME_MAX_CHARS
from .views import _authorized, _error, _json_body, _reader, _response_for, _room_name

__all__ = [
    "TOKEN_TTL_MAX_SECS",
    "USERNAME_MAX_CHARS",
    "USERS_PER_REQUEST_MAX",
    "parse_ttl",
    "room_detail",
    "room_json",
    "room_member",
    "room_members",
    "rooms_create",
    "tokens",
    "user_messages",
    "user_rooms",
]

#: Longest token lifetime the API and ``roomcast token`` issue, in seconds (30 days). A
#: token cannot be revoked on its own (only by deactivating its user or changing their
#: password), so a long-lived one is a standing credential: clients should fetch fresh
#: ones (roomcast.js's getToken) rather than hold one for months.
TOKEN_TTL_MAX_SECS = 30 * 24 * 60 * 60

#: Longest username accepted in a request, in characters: Django's default user model
#: allows 150, custom ones that log in by e-mail address 254.
USERNAME_MAX_CHARS = _USERNAME_MAX_CHARS  # the same bound as the push API's disconnect

#: Most users one members request names: each is a query in one transaction (the body
#: limit, MAX_FRAME_BYTES, already keeps a request to about this many short names).
USERS_PER_REQUEST_MAX = 1000


class _NotFound(Exception):
    """A 404 with a code and detail (no room, no user)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.detail = code, detail


def room_json(info: rooms.RoomInfo) -> dict[str, Any]:
    """A room as the API answers it (and ``roomcast room show --json`` prints it)."""
    return {
        "name": info.name,
        "visibility": info.visibility,
        "members": [{"user": user, "role": role} for user, role in info.members],
        "message_count": info.message_count,
        "last_seq": info.last_seq,
    }


def parse_ttl(value: object, what: str = '"ttl"') -> float:
    """A token lifetime: a number of seconds from 1 to :data:`TOKEN_TTL_MAX_SECS`.

    Raises:
        InvalidFrameError: anything else (a string, a bool, NaN, infinity, out of range).
    """
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or (isinstance(value, float) and not math.isfinite(value))
        or not 1 <= value <= TOKEN_TTL_MAX_SECS  # an int of any size compares exactly
    ):
        raise InvalidFrameError(
            f"{what} must be a number of seconds from 1 to {TOKEN_TTL_MAX_SECS} (30 days)."
        )
    return float(value)


def _username(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= USERNAME_MAX_CHARS:
        raise InvalidFrameError(
            f"{what} must be a username: a string of 1 to {USERNAME_MAX_CHARS} characters."
        )
    codec.check_text(value, what)
    return value


def _visibility(value: object) -> str:
    choices = tuple(Room.Visibility.values)
    if not isinstance(value, str) or value.replace("-", "_") not in choices:
        raise InvalidFrameError(f'"visibility" must be one of {", ".join(choices)}.')
    return value.replace("-", "_")


def _user(name: str) -> Any:
    User = get_user_model()
    user = User._default_manager.filter(**{User.USERNAME_FIELD: name}).first()
    if user is None:
        raise _NotFound("user_not_found", f"No user {name!r}.")
    return user


def _info(name: str) -> rooms.RoomInfo:
    try:
        return rooms.room_info(name)
    except rooms.RoomNotFoundError:
        raise _NotFound("room_not_found", f"No room {name!r}.") from None


def _answer(view: Any) -> Any:
    """Run ``view`` after the API-key check, turning named errors into JSON answers."""

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if (denied := _authorized(request)) is not None:
            return denied
        try:
            response: HttpResponse = view(request, *args, **kwargs)
        except ProtocolError as exc:
            return _response_for(exc)
        except _NotFound as exc:
            return _error(404, exc.code, exc.detail)
        except rooms.UserNotFoundError as exc:
            return _error(404, "user_not_found", str(exc))
        except rooms.RoomNotFoundError as exc:
            return _error(404, "room_not_found", str(exc))
        return response

    return wrapped


@csrf_exempt
@require_http_methods(["POST"])
@_answer
def tokens(request: HttpRequest) -> HttpResponse:
    """Issue a connection token for a user: ``{"user": NAME, "ttl": SECS}``."""
    body = _json_body(request)
    name = _username(body.get("user"), '"user"')
    ttl = parse_ttl(body["ttl"]) if body.get("ttl") is not None else None
    user = _user(name)
    if not user.is_active:
        return _error(409, "inactive_user", f"User {name!r} is inactive: no token is issued.")
    if (ban := access.banned(user.pk)) is not None:  # roomcast.moderation
        return _error(403, "banned", f"User {name!r} is {revocation.ban_reason(ban)}.")
    token = auth.issue_token(user, ttl=ttl)
    _, expires_at, _ = auth.read_token(token)
    return JsonResponse(
        {"token": token, "user": user.get_username(), "expires_at": int(expires_at)}, status=201
    )


@csrf_exempt
@require_http_methods(["POST"])
@_answer
def rooms_create(request: HttpRequest) -> HttpResponse:
    """Create a room: ``{"name": ROOM, "visibility": "public"|"private"|"read_only"}``."""
    body = _json_body(request)
    name = body.get("name")
    if not isinstance(name, str):
        raise InvalidFrameError('"name" must be the room\'s name (a string).')
    name = codec.validate_room_name(name, max_chars=roomcast_settings.ROOM_NAME_MAX_CHARS)
    visibility = _visibility(body.get("visibility", Room.Visibility.PUBLIC))
    try:
        rooms.create_room(name, visibility=visibility)
    except rooms.RoomExistsError:
        return _error(409, "room_exists", f"Room {name!r} exists already.")
    return JsonResponse(room_json(_info(name)), status=201)


@csrf_exempt
@require_http_methods(["GET", "PATCH"])
@_answer
def room_detail(request: HttpRequest, room_name: str) -> HttpResponse:
    """GET: the room. PATCH ``{"visibility": V}``: make it public, private or read-only."""
    name = _room_name(request, room_name)
    if request.method == "PATCH":
        body = _json_body(request)
        if "visibility" not in body:
            raise InvalidFrameError('Send {"visibility": "public"|"private"|"read_only"}.')
        visibility = _visibility(body["visibility"])
        _info(name)  # 404 before anything changes
        rooms.set_visibility(name, visibility)
    return JsonResponse(room_json(_info(name)))


@csrf_exempt
@require_http_methods(["POST"])
@_answer
def room_members(request: HttpRequest, room_name: str) -> HttpResponse:
    """Add members: ``{"users": [NAME, ...], "role": "member"|"admin"}`` (an existing
    member's role is changed to ``role``)."""
    name = _room_name(request, room_name)
    body = _json_body(request)
    users = body.get("users")
    if not isinstance(users, list) or not 0 < len(users) <= USERS_PER_REQUEST_MAX:
        raise InvalidFrameError(
            f'"users" must be a list of 1 to {USERS_PER_REQUEST_MAX} usernames.'
        )
    names = [_username(user, '"users"') for user in users]
    role = body.get("role", RoomMember.Role.MEMBER)
    if role not in RoomMember.Role.values:
        raise InvalidFrameError(f'"role" must be one of {", ".join(RoomMember.Role.values)}.')
    _info(name)
    added = rooms.add_members(name, [_user(user) for user in names], role=role)
    return JsonResponse({**room_json(_info(name)), "added": added})


@csrf_exempt
@require_http_methods(["DELETE"])
@_answer
def room_member(request: HttpRequest, room_name: str, username: str) -> HttpResponse:
    """Remove a member (``removed`` is empty if the user was not one)."""
    name = _room_name(request, room_name)
    user = _user(_username(username, "the username"))
    _info(name)
    removed = rooms.remove_members(name, [user])
    return JsonResponse({**room_json(_info(name)), "removed": removed})


# -- a user's own channel and rooms ---------------------------------------------------------


@csrf_exempt
@require_http_methods(["POST"])
async def user_messages(request: HttpRequest, username: str) -> HttpResponse:
    """Send to a user's own channel (``push.send_to_user``): ``{"message": TEXT}`` or
    ``{"data": ANY_JSON}``; ``201 {"user", "seq"}`` (seq in the user's stream)."""
    if (denied := _authorized(request)) is not None:
        return denied
    try:
        name = _username(username, "the username")
        body = _json_body(request)
        if ("message" in body) == ("data" in body):
            raise InvalidFrameError('Send {"message": TEXT} or {"data": ANY_JSON}, one of them.')
        if "message" in body:
            payload = body["message"]
            if not isinstance(payload, str) or not payload.strip():
                raise InvalidFrameError('"message" must be a non-empty string.')
            codec.check_text(payload, "message")
        else:
            payload = body["data"]
    except ProtocolError as exc:
        return _response_for(exc)
    try:
        user = await database_sync_to_async(_user)(name)
        stored = await push.asend_to_user(user, payload, as_data="data" in body)
    except _NotFound as exc:
        return _error(404, exc.code, exc.detail)
    except ValueError as exc:  # data JSON cannot carry, or over MAX_FRAME_BYTES
        return _error(400, "invalid_frame", str(exc))
    return JsonResponse({"user": user.get_username(), "seq": stored.seq}, status=201)


@csrf_exempt
@require_http_methods(["GET"])
async def user_rooms(request: HttpRequest, username: str) -> HttpResponse:
    """The user's rooms (member of, or read) with unread counts: ``200 {"user",
    "rooms": [{"name", "visibility", "last_seq", "read_seq", "unread"}], "truncated"}``.

    An API key may ask about any user; a user's token or session only about that user
    (any other name is the 404 of a user that does not exist).
    """
    try:
        reader = await _reader(request)
        if isinstance(reader, HttpResponse):
            return reader
        name = _username(username, "the username")
    except ProtocolError as exc:
        return _response_for(exc)

    def listing() -> tuple[str, list[dict[str, Any]], bool] | None:
        if reader is None:
            try:
                identity = access.identity_for(_user(name))
            except _NotFound:
                return None
        elif reader.name != name:
            return None
        else:
            identity = reader
        listed, truncated = cursors.user_rooms(identity)
        return identity.name, listed, truncated

    found = await database_sync_to_async(listing)()
    if found is None:
        return _error(404, "user_not_found", f"No user {name!r} that you may ask about.")
    user, listed, truncated = found
    return JsonResponse({"user": user, "rooms": listed, "truncated": truncated})
