"""HTTP side of the web app: log in and out, enter as a guest, the rooms page, create a room.

Layer: transport (HTTP), beside :mod:`roomcast.views` (the seed tutorial's ``/chat/``
pages and the HTTP API, left as they were). Reads rooms through the models and
:mod:`roomcast.rooms`, decides access with :mod:`roomcast.access`; never touches a
socket. The page itself is ``templates/roomcast/app.html`` and its script
``static/roomcast/app.js``, which talks to the server over one ``/ws/`` socket
(``connection.js``): messages, history pages, presence, typing, edits, read cursors.

Routes (``roomcast.urls``; the names are ``roomcast:<name>``)::

    GET  login/            login        Django's login form (username, password), the
                                        guest form beside it while ALLOW_ANONYMOUS is on
    POST logout/           logout       log out (the user's sockets on that session close)
    POST guest/            guest        enter as a guest named "guest-<name>-<4 hex>"
    GET  rooms/            rooms        the sidebar and a list of rooms
    POST rooms/            rooms        create a room ({name, visibility}), then open it
    GET  rooms/<room>/     app-room     the sidebar and the room

The seed tutorial's pages (``chat/``, ``chat/<room>/``) keep their element ids and
behaviour: the app lives beside them, not in their place (docs/protocol.md, "The web
app").
"""

from __future__ import annotations

import secrets
import unicodedata
from typing import Any
from urllib.parse import quote

from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import LoginView, LogoutView
from django.db import router, transaction
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.urls import get_script_prefix, reverse, reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST

from . import access, fanout
from . import rooms as rooms_api
from .conf import roomcast_settings
from .models import Room, RoomMember
from .protocol import ProtocolError, codec
from .security import GUEST_NAME_SESSION_KEY, is_guest_name
from .views import _room_name

#: The multi-room socket's path under the site's script prefix: the route of
#: ``roomcast.routing.websocket_urlpatterns`` (not in Django's URLconf, so not reversible;
#: tests/test_pages.py keeps the two in step).
MUX_SOCKET_PATH = "ws/"

#: Rooms the sidebar lists (public and read-only rooms, busiest first, then the user's
#: private ones). Each listed room is a subscription on the page's socket, for its unread
#: and online counts; the server allows MAX_SUBSCRIPTIONS (100) per socket, and the room
#: being read needs one too.
SIDEBAR_ROOMS = 50

#: Longest name a guest may choose: "guest-" + name + "-" + 4 hex digits stays within
#: the 32 characters the room socket accepts from the session (security.is_guest_name).
GUEST_NAME_MAX_CHARS = 20
#: Hex digits after a guest's chosen name, so that two guests who both choose "sam"
#: are not one person on the page (the name is for reading; guests have no account).
GUEST_NAME_SUFFIX_HEX = 4


class RoomcastLoginView(LoginView):
    """Django's login form (``username``, ``password``) in the app's look, with the guest
    form beside it while anonymous access is on. After login: ``next``, else the rooms."""

    template_name = "roomcast/login.html"
    redirect_authenticated_user = True

    def get_default_redirect_url(self) -> str:
        """The rooms, whatever LOGIN_REDIRECT_URL says (the project's own pages' default)."""
        return reverse("roomcast:rooms")

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        context = super().get_context_data(**kwargs)
        context["allow_guests"] = bool(roomcast_settings.ALLOW_ANONYMOUS)
        context["guest_name_max"] = GUEST_NAME_MAX_CHARS
        return context


login = RoomcastLoginView.as_view()
#: POST only (Django 5): a link cannot log anyone out. The sockets that came with the
#: session are closed by roomcast.revocation (4403 "logged out").
logout = LogoutView.as_view(next_page=reverse_lazy("roomcast:login"))


def _next_url(request: HttpRequest, default: str) -> str:
    """``next`` from the form or query when it is a path on this site, else ``default``."""
    wanted = request.POST.get("next") or request.GET.get("next") or ""
    if wanted and url_has_allowed_host_and_scheme(
        wanted, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return wanted
    return default


def guest_name(chosen: str) -> str | None:
    """The guest name for what a visitor typed: ``guest-<name>-<hex>``, a new
    ``guest-xxxxxx`` for nothing typed, None for a name the rule refuses (letters, digits,
    ``-``, ``_`` and ``.``; at most :data:`GUEST_NAME_MAX_CHARS` characters)."""
    name = unicodedata.normalize("NFC", chosen.strip())
    if not name:
        return access.anonymous().name
    if len(name) > GUEST_NAME_MAX_CHARS or not all(c.isalnum() or c in "-_." for c in name):
        return None
    return f"guest-{name}-{secrets.token_hex(GUEST_NAME_SUFFIX_HEX // 2)}"


@require_POST
def guest(request: HttpRequest) -> HttpResponse:
    """Enter as a guest: the name is kept in the session, where the room socket reads it
    (``security.identity_from_session``). Refused while ALLOW_ANONYMOUS is off."""
    if not roomcast_settings.ALLOW_ANONYMOUS:
        return _login_page(request, "This site does not take guests: log in.", status=403)
    name = guest_name(str(request.POST.get("name", "")))
    if name is None:
        return _login_page(
            request,
            f"A guest name is 1 to {GUEST_NAME_MAX_CHARS} letters, digits, '-', '_' or '.'.",
            status=400,
        )
    request.session[GUEST_NAME_SESSION_KEY] = name
    return HttpResponseRedirect(_next_url(request, reverse("roomcast:rooms")))


def _login_page(request: HttpRequest, error: str, status: int) -> HttpResponse:
    """The login page again, with the guest form's error."""
    context = {
        "form": AuthenticationForm(request),
        "next": _next_url(request, ""),
        "allow_guests": bool(roomcast_settings.ALLOW_ANONYMOUS),
        "guest_name_max": GUEST_NAME_MAX_CHARS,
        "guest_error": error,
    }
    return render(request, "roomcast/login.html", context, status=status)


def _visitor(request: HttpRequest) -> tuple[access.Identity, bool] | None:
    """Who looks at the app (and whether they are a user), or None for someone who has
    neither logged in nor entered as a guest."""
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        session = getattr(request, "session", None)
        key = session.session_key if session is not None else None
        return access.identity_for(user, session_key=key), True
    session = getattr(request, "session", None)
    name = session.get(GUEST_NAME_SESSION_KEY) if session is not None else None
    # The socket's own rule: a name it would not take would be another guest there.
    if is_guest_name(name):
        return access.anonymous(name), False
    return None


def _to_login(request: HttpRequest) -> HttpResponse:
    return redirect(f"{reverse('roomcast:login')}?next={quote(request.get_full_path())}")


def sidebar_rooms(identity: access.Identity) -> list[dict[str, Any]]:
    """The rooms ``identity`` may see, for the sidebar: public and read-only rooms,
    private rooms they belong to (all rooms for staff); the busiest
    :data:`SIDEBAR_ROOMS` of them, by name; each ``{"name", "visibility", "lastSeq"}``."""
    rooms = Room.objects.exclude(name__startswith=fanout.USER_STREAM_PREFIX)
    if not (identity.is_staff or identity.is_superuser):
        visible = Q(visibility__in=(Room.Visibility.PUBLIC, Room.Visibility.READ_ONLY))
        if identity.user_id is not None:
            visible |= Q(memberships__user_id=identity.user_id)
        rooms = rooms.filter(visible).distinct()
    rows = list(
        rooms.order_by("-last_seq", "name").values_list("name", "visibility", "last_seq")[
            :SIDEBAR_ROOMS
        ]
    )
    if roomcast_settings.ACCESS_POLICY:  # the project's rules decide, room by room
        rows = [row for row in rows if access.check(identity, row[0], "join")]
    rows.sort(key=lambda row: row[0].casefold())
    return [{"name": n, "visibility": v, "lastSeq": s} for n, v, s in rows]


def _app_page(identity: access.Identity, is_user: bool, room: str | None) -> dict[str, Any]:
    """The context of the app page; ``page`` is what app.js reads (json_script)."""
    rooms = sidebar_rooms(identity)
    if room is not None and room not in {r["name"] for r in rooms}:
        # A room nobody has used yet, or past the sidebar's limit: listed while open.
        row = Room.objects.filter(name=room).values_list("visibility", "last_seq").first()
        visibility, last_seq = row if row else (Room.Visibility.PUBLIC, 0)
        rooms.append({"name": room, "visibility": visibility, "lastSeq": last_seq})
    before, _, after = reverse("roomcast:app-room", args=["__room__"]).rpartition("__room__")
    asked: tuple[access.Action, ...] = ("moderate", "post") if is_user else ("post",)
    allowed = access.check_many(identity, room, asked) if room is not None else {}
    page = {
        "room": room,
        "user": identity.name,
        "isUser": is_user,
        "isModerator": bool(is_user and allowed.get("moderate")),
        "mayPost": bool(allowed.get("post")),
        "rooms": rooms,
        "roomUrl": [before, after],
        "socketPath": get_script_prefix() + MUX_SOCKET_PATH,
        "connectionUrl": static("roomcast/connection.js"),
        "maxFrameBytes": roomcast_settings.MAX_FRAME_BYTES,
        "editWindowSecs": roomcast_settings.EDIT_WINDOW_SECS,
        "typingIntervalSecs": roomcast_settings.TYPING_INTERVAL_SECS,
    }
    return {
        "page": page,
        "room_name": room,
        "rooms": rooms,
        "visitor": identity.name,
        "is_user": is_user,
        "may_create_private": is_user,
    }


@require_http_methods(["GET", "POST"])
def rooms(request: HttpRequest) -> HttpResponse:
    """GET: the app without a room open. POST ``{name, visibility}``: create a room and
    open it (a public room that exists is opened; a private one is made with the creator
    as its admin)."""
    visitor = _visitor(request)
    if visitor is None:
        return _to_login(request)
    identity, is_user = visitor
    if request.method == "GET":
        return render(request, "roomcast/app.html", _app_page(identity, is_user, None))
    try:
        name = _create_room(request, identity, is_user)
    except _CreateRefusedError as exc:
        context = _app_page(identity, is_user, None)
        context["create_error"] = exc.detail
        return render(request, "roomcast/app.html", context, status=exc.status)
    return redirect("roomcast:app-room", room_name=name)


class _CreateRefusedError(Exception):
    """The create-room form's input was refused: ``detail`` says why, with ``status``."""

    def __init__(self, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


def _create_room(request: HttpRequest, identity: access.Identity, is_user: bool) -> str:
    """Make the room of the form (unless it is public and exists); returns its name.

    Raises:
        _CreateRefusedError: a bad name or visibility, a guest asking for a private room,
            a private room whose name is taken.
    """
    try:
        name = codec.validate_room_name(
            str(request.POST.get("name", "")), max_chars=roomcast_settings.ROOM_NAME_MAX_CHARS
        )
    except ProtocolError as exc:
        raise _CreateRefusedError(exc.detail) from None
    visibility = str(request.POST.get("visibility", Room.Visibility.PUBLIC))
    if visibility not in (Room.Visibility.PUBLIC, Room.Visibility.PRIVATE):
        raise _CreateRefusedError("A new room is public or private.")
    if visibility == Room.Visibility.PRIVATE:
        if not is_user:
            raise _CreateRefusedError("Log in to make a private room.", 403)
        try:
            with transaction.atomic(using=router.db_for_write(Room)):
                rooms_api.create_room(name, visibility=visibility)
                rooms_api.add_members(name, [identity.user_id], role=RoomMember.Role.ADMIN)
        except rooms_api.RoomExistsError:
            raise _CreateRefusedError(
                f"A room named {name!r} exists already: pick another name.", 409
            ) from None
        return name
    try:
        rooms_api.create_room(name)
    except rooms_api.RoomExistsError:
        pass  # open it: the socket says whether this visitor may join
    return name


def app_room(request: HttpRequest, room_name: str) -> HttpResponse:
    """The app with ``room`` open. A name in another form than the canonical one
    (decomposed accents, doubled spaces) redirects to the canonical URL."""
    visitor = _visitor(request)
    if visitor is None:
        return _to_login(request)
    identity, is_user = visitor
    try:
        name = _room_name(request, room_name)
    except ProtocolError as exc:
        context = _app_page(identity, is_user, None)
        context["create_error"] = exc.detail
        return render(request, "roomcast/app.html", context, status=400)
    if name != room_name:
        return redirect("roomcast:app-room", room_name=name)
    return render(request, "roomcast/app.html", _app_page(identity, is_user, name))
