"""Who may join, read and post, on a real ``roomcast serve`` process: the access matrix.

{anonymous, member, non-member, staff, expired token, forged token, token in URL,
deactivated user} x {join, ?since replay, history frame, post, HTTP history} for a
private room, and the same actions for a read-only room (posts refused for members
without the right, allowed for staff, room admins and holders of the permission). Each
cell is its own test, with its own connection, and compares what happened, as one short
string ("ok", "4403 not allowed in this room", "forbidden", "404 not_found"), with what
the table says.

Users, rooms, messages and tokens are made with ``roomcast manage shell`` against the
server's own data dir (its SQLite database and SECRET_KEY), as an operator would.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.e2e.conftest import ServerProcess

pytestmark = pytest.mark.e2e

#: Messages stored in each room before the matrix runs.
STORED = 3

SETUP = """
import json, time
from django.contrib.auth.models import Permission, User
from django.core import signing
from django.test import Client
from roomcast import auth, rooms
from roomcast.stream import store_message

def user(name, **extra):
    return User.objects.create_user(name, **extra)

mia, nora, sam, dee, ada, pete = (
    user("mia"), user("nora"), user("sam", is_staff=True), user("dee"), user("ada"), user("pete")
)
pete.user_permissions.add(Permission.objects.get(codename="post_in_read_only"))
rooms.create_room("vault", visibility="private")
rooms.add_members("vault", [mia, dee])
rooms.create_room("board", visibility="read_only")
rooms.add_members("board", [mia])
rooms.add_members("board", [ada], role="admin")
for room in ("vault", "board"):
    for i in range(1, STORED + 1):
        store_message(room, f"{room} {i}", kind="system")
tokens = {name: auth.issue_token(u) for name, u in
          dict(mia=mia, nora=nora, sam=sam, dee=dee, ada=ada, pete=pete).items()}
expired = {"u": mia.pk, "e": int(time.time()) - 60, "h": auth._fingerprint(mia)}
tokens["expired"] = signing.dumps(expired, salt=auth._SALT, compress=False)
dee.is_active = False  # after its token was issued
dee.save()
client = Client()
client.force_login(mia)
tokens["mia_session"] = client.cookies["sessionid"].value
print(json.dumps(tokens))
""".replace("STORED", str(STORED))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One server for the whole matrix, with its users, rooms and tokens."""
    data_dir: Path = tmp_path_factory.mktemp("matrix")
    server = ServerProcess(data_dir, {}).start()
    try:
        result = server.cli("manage", "shell", "--no-imports", "-c", SETUP)
        assert result.returncode == 0, result.stderr
        tokens = json.loads(result.stdout.strip().splitlines()[-1])
        forged = tokens["mia"][:-4] + ("AAAA" if not tokens["mia"].endswith("AAAA") else "BBBB")
        tokens["forged"] = forged
        yield {"server": server, "tokens": tokens}
    finally:
        server.stop()
        print(server.log()[-8000:])


# -- who: how each identity connects --------------------------------------------------------


def credentials(site: dict[str, Any], who: str) -> tuple[dict[str, str], str]:
    """``(headers, query)`` a client of identity ``who`` connects with."""
    tokens = site["tokens"]
    bearer = {
        "member": "mia",
        "non-member": "nora",
        "staff": "sam",
        "expired token": "expired",
        "forged token": "forged",
        "deactivated user": "dee",
        "room admin": "ada",
        "permission holder": "pete",
    }
    if who in bearer:
        return {"Authorization": f"Bearer {tokens[bearer[who]]}"}, ""
    if who == "member (session)":
        return {"Cookie": f"sessionid={tokens['mia_session']}"}, ""
    if who == "token in URL":
        return {}, "token=" + urllib.parse.quote(tokens["mia"])
    assert who == "anonymous", who
    return {}, ""


# -- what: one action, its outcome as a short string ----------------------------------------


async def socket_outcome(site: dict[str, Any], who: str, room: str, action: str) -> str:
    """Connect as ``who`` and do ``action``: "ok", an error code, or "CODE reason"."""
    server: ServerProcess = site["server"]
    headers, query = credentials(site, who)
    since = action == "since"
    params = "&".join(p for p in (query, "since=1" if since else "") if p)
    url = server.ws_url(room) + (f"?{params}" if params else "")
    ws = await websockets.connect(
        url, subprotocols=["roomcast.v1"], additional_headers=headers, open_timeout=10
    )
    try:
        return await _act(ws, action)
    except ConnectionClosed as exc:
        close = exc.rcvd
        return f"{close.code} {close.reason}" if close else "closed without a close frame"
    finally:
        await ws.close()


async def _recv(ws: Any) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(ws.recv(), 10)))


async def _act(ws: Any, action: str) -> str:
    joined = await _recv(ws)
    assert joined["type"] == "joined", joined
    last = joined["seq"]
    first = 2 if action == "since" else 1
    catch_up = [await _recv(ws) for _ in range(last - first + 1)]
    assert [m["seq"] for m in catch_up] == list(range(first, last + 1)), catch_up
    if action == "since":
        assert joined["recovered"] is True, joined
    if action == "history":
        await ws.send(json.dumps({"type": "history", "before": last + 1, "limit": 100}))
        page = await _recv(ws)
        if page["type"] == "error":
            return str(page["code"])
        assert [m["seq"] for m in page["messages"]] == list(range(1, last + 1)), page
    if action == "post":
        await ws.send(json.dumps({"type": "message", "message": "hello", "client_id": "m-1"}))
        while (frame := await _recv(ws))["type"] not in ("ack", "error"):
            assert frame["type"] == "message", frame
        if frame["type"] == "error":
            assert frame["client_id"] == "m-1", frame
            return str(frame["code"])
    # Still open: a ping gets its pong.
    await ws.send(json.dumps({"type": "ping"}))
    while (frame := await _recv(ws))["type"] != "pong":
        pass
    return "ok"


def http_outcome(site: dict[str, Any], who: str, room: str) -> str:
    """GET the room's history over HTTP as ``who``: "STATUS" or "STATUS error-code"."""
    server: ServerProcess = site["server"]
    headers, query = credentials(site, who)
    url = f"{server.http_url}/api/rooms/{urllib.parse.quote(room)}/messages"
    request = urllib.request.Request(url + (f"?{query}" if query else ""), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.loads(response.read())
            assert len(body["messages"]) >= STORED, body
            return str(response.status)
    except urllib.error.HTTPError as exc:
        return f"{exc.code} {json.loads(exc.read())['error']}"


async def outcome(site: dict[str, Any], who: str, room: str, action: str) -> str:
    if action == "http":
        return await asyncio.to_thread(http_outcome, site, who, room)
    return await socket_outcome(site, who, room, action)


# -- the tables -----------------------------------------------------------------------------

ACTIONS = ("join", "since", "history", "post", "http")
REFUSED = "4403 not allowed in this room"
IN_URL = "4400 tokens go in the Authorization header or the first frame (auth), not the URL"

PRIVATE = {
    #                    join       ?since     history    post       HTTP history
    "anonymous": (REFUSED, REFUSED, REFUSED, REFUSED, "401 unauthorized"),
    "member": ("ok", "ok", "ok", "ok", "200"),
    "member (session)": ("ok", "ok", "ok", "ok", "200"),
    "non-member": (REFUSED, REFUSED, REFUSED, REFUSED, "404 not_found"),
    "staff": ("ok", "ok", "ok", "ok", "200"),
    "expired token": ("4401 token expired",) * 4 + ("401 token_expired",),
    "forged token": ("4401 invalid token",) * 4 + ("401 invalid_token",),
    "token in URL": (IN_URL,) * 4 + ("400 token_in_url",),
    "deactivated user": ("4401 inactive user",) * 4 + ("401 inactive_user",),
}

READ_ONLY = {
    "anonymous": ("ok", "ok", "ok", "forbidden", "401 unauthorized"),
    "member": ("ok", "ok", "ok", "forbidden", "200"),
    "non-member": ("ok", "ok", "ok", "forbidden", "200"),
    "room admin": ("ok", "ok", "ok", "ok", "200"),
    "permission holder": ("ok", "ok", "ok", "ok", "200"),
    "staff": ("ok", "ok", "ok", "ok", "200"),
    "expired token": ("4401 token expired",) * 4 + ("401 token_expired",),
    "token in URL": (IN_URL,) * 4 + ("400 token_in_url",),
}


def cells(table: dict[str, tuple[str, ...]]) -> list[Any]:
    return [
        pytest.param(who, action, expected, id=f"{who}-{action}")
        for who, row in table.items()
        for action, expected in zip(ACTIONS, row, strict=True)
    ]


@pytest.mark.parametrize(("who", "action", "expected"), cells(PRIVATE))
async def test_private_room(site, who, action, expected):
    """A private room: its members and staff only; everyone else a named refusal."""
    assert await outcome(site, who, "vault", action) == expected


@pytest.mark.parametrize(("who", "action", "expected"), cells(READ_ONLY))
async def test_read_only_room(site, who, action, expected):
    """A read-only room: everyone reads; staff, room admins and the permission post."""
    assert await outcome(site, who, "board", action) == expected


async def test_a_private_rooms_refusal_is_the_same_with_and_without_the_room(site):
    """Over HTTP, a non-member's answer for the private room is the one for a room that
    does not exist: 404, same body."""
    server: ServerProcess = site["server"]
    headers, _ = credentials(site, "non-member")
    bodies = []
    for room in ("vault", "no such room"):
        url = f"{server.http_url}/api/rooms/{urllib.parse.quote(room)}/messages"
        with pytest.raises(urllib.error.HTTPError) as info:
            await asyncio.to_thread(
                urllib.request.urlopen, urllib.request.Request(url, headers=headers), timeout=10
            )
        bodies.append((info.value.code, json.loads(info.value.read())["error"]))
    assert bodies == [(404, "not_found"), (404, "not_found")]


async def test_guests_post_under_distinct_names_in_history(site):
    """Two guests posting in a public room show as two guest names, live and over HTTP."""
    server: ServerProcess = site["server"]
    names = []
    for n in range(2):
        async with websockets.connect(
            server.ws_url("plaza"), subprotocols=["roomcast.v1"], open_timeout=10
        ) as ws:
            joined = await _recv(ws)
            for _ in range(joined["seq"]):
                await _recv(ws)
            await ws.send(json.dumps({"type": "message", "message": "hi", "client_id": f"g{n}"}))
            while (frame := await _recv(ws))["type"] != "message":
                pass
            names.append(frame["user"])
    assert names[0] != names[1] and all(name.startswith("guest-") for name in names)
    headers = {"Authorization": f"Bearer {site['tokens']['mia']}"}
    request = urllib.request.Request(f"{server.http_url}/api/rooms/plaza/messages", headers=headers)
    with await asyncio.to_thread(urllib.request.urlopen, request, timeout=10) as response:
        history = json.loads(response.read())["messages"]
    assert [m["user"] for m in history] == names
