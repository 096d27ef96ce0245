"""Hostile input to the HTTP side (room page, push API) and one rule for room names everywhere.

Django's sync test client (WSGI) is used for the paths: it decodes percent-encoded UTF-8
the way a server does, where the async one decodes it as Latin-1.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roomcast import hub, push
from roomcast.models import Message, Room
from roomcast.protocol import CloseCode, InvalidRoomNameError, validate_room_name
from roomcast.routing import websocket_application
from roomcast.testing import RoomCommunicator

pytestmark = pytest.mark.django_db(transaction=True)

API_KEY = "test-api-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def post(path: str, body: bytes | str, **headers: str):
    """POST ``body`` as JSON with the API key."""
    return Client().post(path, body, content_type="application/json", headers={**AUTH, **headers})


def assert_refused(response, status: int, code: str) -> dict:
    """A JSON error with ``status`` and ``code``; returns the body."""
    assert response.status_code == status, response.content[:300]
    body = response.json()
    assert body["error"] == code, body
    return body


@pytest.mark.parametrize("path", ["/api/rooms/lobby/messages", "/api/rooms/lobby/disconnect"])
@pytest.mark.parametrize(
    "body",
    [
        "[" * 2000,  # the finding: a RecursionError, answered with 500
        '{"message": "x", "extra": ' + "[" * 5000 + "]" * 5000 + "}",
        '{"reason": "x", "extra": ' + '{"a":' * 2000 + "1" + "}" * 2001,
    ],
)
def test_deeply_nested_bodies_are_400_invalid_json(path, body):
    """Bodies nested past the JSON parser's depth are a 400, like any bad JSON."""
    detail = assert_refused(post(path, body), 400, "invalid_json")["detail"]
    assert "nested too deeply" in detail
    assert Message.objects.count() == 0


@pytest.mark.parametrize("path", ["/api/rooms/lobby/messages", "/api/rooms/lobby/disconnect"])
@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"message": "caf\xe9"}', 400, "invalid_json"),  # Latin-1, not UTF-8
        (b"\xff\xfe{\x00}\x00", 400, "invalid_json"),  # UTF-16
        ("[1, 2]", 400, "invalid_frame"),
        ("1" * 5000, 400, "invalid_json"),  # over int()'s digit limit
        ('{"message": "' + "x" * 20000 + '"}', 413, "frame_too_large"),
    ],
)
def test_bad_bodies_get_json_errors(path, body, status, code):
    """Bodies that are not UTF-8 JSON objects of the allowed size get a named error."""
    assert_refused(post(path, body), status, code)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"user_id": 10**30}, "user_id"),  # msgpack (the Redis layers) cannot carry it
        ({"user_id": "7"}, "user_id"),
        ({"user_id": True}, "user_id"),
        ({"reason": "é" * 62}, "123 bytes"),  # 124 bytes: over a close frame's limit
        ({"reason": 5}, "reason"),
        ({"reason": "\ud800"}, "lone surrogate"),
        ({"reason": "a\x00"}, "NUL"),
    ],
)
def test_disconnect_body_fields_are_bounded(body, fragment):
    """user_id and reason must fit where they go: a layer message, a close frame."""
    detail = assert_refused(
        post("/api/rooms/lobby/disconnect", json.dumps(body)), 400, "invalid_frame"
    )
    assert fragment in detail["detail"]


def test_disconnect_reason_up_to_123_bytes_is_accepted():
    """The longest reason a close frame carries is accepted."""
    response = post("/api/rooms/lobby/disconnect", json.dumps({"reason": "é" * 61 + "x"}))
    assert response.status_code == 202, response.content


@pytest.mark.parametrize(
    "query",
    [
        "before=abc",
        "before=0",
        "before=-1",
        "limit=0",
        "limit=%D9%A1",  # ARABIC-INDIC DIGIT ONE: int() reads it as 1
        "limit=1_0",
        "limit=+3",
        "limit=%205",
        "limit=",
        "before=" + "9" * 19,  # over 64 bits
        "before=" + "9" * 5000,  # over int()'s digit limit
        "limit=%FF",
    ],
)
def test_history_query_parameters_are_strict(query):
    """before and limit are ASCII digits within 64 bits; anything else is 400 invalid_query."""
    response = Client().get(f"/api/rooms/lobby/messages?{query}", headers=AUTH)
    detail = assert_refused(response, 400, "invalid_query")["detail"]
    assert query.split("=")[0] in detail


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["before", "limit", "x"]), st.text(max_size=30), min_size=1, max_size=3
    )
)
def test_any_history_query_is_a_page_or_a_400(params):
    """Any values of the history parameters get a page (200) or a 400, never a 500."""
    query = "&".join(
        f"{quote(k)}={quote(v.encode('utf-8', 'surrogatepass'))}" for k, v in params.items()
    )
    response = Client().get(f"/api/rooms/lobby/messages?{query}", headers=AUTH)
    assert response.status_code in (200, 400), (query, response.content[:300])
    if response.status_code == 200:
        assert set(response.json()) == {"messages", "has_more"}


@FUZZ
@given(st.binary(max_size=300))
def test_any_post_body_is_stored_or_a_named_error(body):
    """Any bytes POSTed to the push API: 201, or a JSON error with 400/413."""
    response = post("/api/rooms/fuzz/messages", body)
    assert response.status_code in (201, 400, 413), (body, response.content[:300])
    assert "error" in response.json() or response.status_code == 201


@FUZZ
@given(st.text(max_size=40))
def test_any_authorization_header_is_401_or_passes(value):
    """Any Authorization header value (Latin-1, as HTTP carries it) is 401 unless it is
    the key, never a 500."""
    header = (
        value.encode("latin-1", "replace").decode("latin-1").replace("\r", "").replace("\n", "")
    )
    response = Client().get("/api/rooms/lobby/messages", headers={"Authorization": header})
    assert response.status_code in (200, 401)


# -- one rule for room names: socket, room page, API, push ------------------------------------

BAD_NAMES = [
    "\u202eabc",
    "lob\u200bby",
    "lobby\ufe0f",
    "\u2066x\u2069",
    "a\u00adb",
    "\ufffd",
    "x" * 201,
]


def _page_and_api(quoted: str) -> tuple:
    client = Client()
    page = client.get(f"/chat/{quoted}/")
    api = client.post(
        f"/api/rooms/{quoted}/messages",
        {"message": "x"},
        content_type="application/json",
        headers=AUTH,
    )
    history = client.get(f"/api/rooms/{quoted}/messages", headers=AUTH)
    disconnect = client.post(f"/api/rooms/{quoted}/disconnect", headers=AUTH)
    return page, api, history, disconnect


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_every_entry_point_refuses_a_bad_name_with_the_same_reason(name):
    """The room socket (4400), the room page and the API (400) and push
    (InvalidRoomNameError) refuse a name with the reason validate_room_name gives."""
    with pytest.raises(InvalidRoomNameError) as info:
        validate_room_name(name, max_chars=200)
    reason = info.value.detail
    app = websocket_application()
    communicator = RoomCommunicator(app, name)
    connected, _ = await communicator.connect()
    assert connected
    closed = await communicator.receive_output()
    assert (closed["code"], closed["reason"]) == (CloseCode.BAD_REQUEST, reason)
    page, api, history, disconnect = await asyncio.to_thread(_page_and_api, quote(name))
    assert page.status_code == 400 and reason in page.content.decode()
    for response in (api, history, disconnect):
        assert response.status_code == 400
        assert response.json() == {"error": "invalid_room", "detail": reason}
    with pytest.raises(InvalidRoomNameError) as pushed:
        await push.asend_to_room(name, "x")
    assert pushed.value.detail == reason
    assert await Room.objects.acount() == 0
    if (running := hub.running_hub()) is not None:
        await running.close()


@pytest.mark.parametrize("escaped", ["%FF", "%FE", "caf%E9", "%ED%A0%80"])
@pytest.mark.parametrize("uri_key", ["RAW_URI", "REQUEST_URI"])
def test_http_paths_that_are_not_utf8_are_refused_under_wsgi(escaped, uri_key):
    """Under WSGI Django keeps undecodable %XX as text (/chat/%FF/ would be a room named
    "%FF"); the request URI a WSGI server passes on (gunicorn RAW_URI, uWSGI REQUEST_URI)
    is checked instead: 400 with the socket's reason. Over ASGI: tests/e2e."""
    client = Client()
    page = client.get(f"/chat/{escaped}/", **{uri_key: f"/chat/{escaped}/?x=1"})
    assert page.status_code == 400 and "not UTF-8" in page.content.decode()
    path = f"/api/rooms/{escaped}/messages"
    api = client.post(
        path,
        {"message": "x"},
        content_type="application/json",
        headers=AUTH,
        **{uri_key: path},
    )
    assert_refused(api, 400, "invalid_room")
    assert Room.objects.count() == 0
    # A literal "%FF" in a room name is a name like any other (sent as %25FF).
    assert client.get("/chat/%25FF/", **{uri_key: "/chat/%25FF/"}).status_code == 200


def test_room_page_shows_canonical_name_of_look_alike_spaces():
    """A no-break space in the URL is the same room as a space."""
    response = Client().get("/chat/a%C2%A0b/")
    assert response.status_code == 200
    assert response.context["room_name"] == "a b"
