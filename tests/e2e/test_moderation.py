"""Moderation in the Django admin, on real processes: two ``roomcast serve`` through Redis
and PostgreSQL, the admin used over HTTP on one of them, as a moderator would.

bob has sockets on both processes (one-room sockets and a ``/ws/`` socket); alice is in
the same room. The admin's room list counts who is connected on both processes. A room
ban made in the admin closes bob's sockets of that room at once on both processes (his
``/ws/`` subscription ends with ``unsubscribed`` 4403, its other room goes on) and
refuses his new joins; a site ban then closes every socket he has left, on both, and
refuses his connects, while alice goes on; when the bans' end times pass he is let back
in, with nothing run at that time.
"""

from __future__ import annotations

import asyncio
import datetime
import http.cookiejar
import json
import re
import time
import urllib.parse
import urllib.request
import uuid
from typing import Any

import pytest
import websockets

from tests.e2e.test_revocation import shell

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgres]

#: How soon a ban must reach a socket on either process (the revocation promise).
BAN_SECS = 1.0
#: How long the site ban lasts: long enough for its checks on a busy machine.
SITE_BAN_SECS = 12
#: How long the room list may take to count a socket of the other process (presence
#: reaches Redis after a batch, PRESENCE_BATCH_SECS).
PRESENCE_WAIT_SECS = 10.0


class AdminSession:
    """The Django admin over HTTP, logged in as a superuser (a cookie jar, CSRF tokens)."""

    def __init__(self, server: Any) -> None:
        self.base = server.http_url
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def _csrf(self) -> str:
        return next(c.value for c in self.jar if c.name == "csrftoken")

    def get(self, path: str, **query: str) -> str:
        url = self.base + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        with self.opener.open(url, timeout=30) as response:
            return str(response.read().decode())

    def post(self, path: str, data: dict[str, str]) -> tuple[str, str]:
        """POST a form (its page read first for the CSRF cookie); the final URL after
        redirects, and the page."""
        self.get(path)
        body = urllib.parse.urlencode({**data, "csrfmiddlewaretoken": self._csrf()}).encode()
        with self.opener.open(self.base + path, body, timeout=30) as response:
            return response.geturl(), str(response.read().decode())

    def login(self, username: str, password: str) -> None:
        url, page = self.post(
            "/admin/login/", {"username": username, "password": password, "next": "/admin/"}
        )
        assert url.endswith("/admin/"), page[:500]

    def add_ban(self, data: dict[str, str]) -> None:
        url, page = self.post("/admin/roomcast/ban/add/", data)
        assert url.endswith("/admin/roomcast/ban/") and "was added successfully" in page, (
            re.findall(r'<ul class="errorlist[^>]*>.*?</ul>', page, re.S) or page[:1000]
        )

    def connected(self, room: str) -> str:
        """The room list's "connected now" cell of ``room`` (searched by name)."""
        page = self.get("/admin/roomcast/room/", q=room)
        cells = re.findall(r'<td class="field-connected">([^<]*)</td>', page)
        assert len(cells) == 1, page[:1000]
        return cells[0]


async def ws(server: Any, path: str, token: str) -> Any:
    return await websockets.connect(
        f"ws://127.0.0.1:{server.port}{path}",
        subprotocols=["roomcast.v1"],
        additional_headers={"Authorization": f"Bearer {token}"},
        open_timeout=10,
    )


async def next_of(socket: Any, *kinds: str, timeout: float = 10) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await socket.recv())
            if frame["type"] in kinds:
                return dict(frame)


async def closed(socket: Any) -> tuple[int, str, float]:
    """The server's close of ``socket``: code, reason, and when it arrived (time.time());
    frames before it are skipped (presence, typing of others)."""
    try:
        async with asyncio.timeout(30):
            while True:
                await socket.recv()
    except websockets.ConnectionClosed as exc:
        assert exc.rcvd is not None, "closed without a close frame"
        return exc.rcvd.code, exc.rcvd.reason, time.time()
    raise AssertionError("unreachable")


async def joined(socket: Any) -> None:
    frame = await next_of(socket, "joined")
    assert frame["type"] == "joined", frame


async def subscribe(socket: Any, room: str) -> None:
    await socket.send(json.dumps({"type": "subscribe", "room": room}))
    frame = await next_of(socket, "joined", "unsubscribed")
    assert frame["type"] == "joined" and frame["room"] == room, frame


async def posts(socket: Any, room: str | None, client_id: str) -> None:
    """Posting still works: the frame's ack comes back."""
    frame: dict[str, Any] = {"type": "message", "message": "still here", "client_id": client_id}
    if room is not None:
        frame["room"] = room
    await socket.send(json.dumps(frame))
    ack = await next_of(socket, "ack", "error")
    assert ack["type"] == "ack", ack


async def refused(server: Any, path: str, token: str) -> tuple[int, str]:
    """Connect, and the close the server sends (any frame before it but ``connected``
    fails)."""
    socket = await ws(server, path, token)
    try:
        async with asyncio.timeout(10):
            while True:
                frame = json.loads(await socket.recv())
                assert frame["type"] == "connected", frame
    except websockets.ConnectionClosed as exc:
        assert exc.rcvd is not None
        return exc.rcvd.code, exc.rcvd.reason
    finally:
        await socket.close()


async def test_bans_made_in_the_admin_close_sockets_on_every_process_and_end_by_themselves(
    cluster,
):
    a, b = cluster(2)
    suffix = uuid.uuid4().hex[:6]
    lobby, cafe = f"lobby {suffix}", f"café {suffix}"
    made = json.loads(
        await asyncio.to_thread(
            shell,
            a,
            "import json\n"
            "from django.contrib.auth import get_user_model\n"
            "from roomcast import auth, rooms\n"
            "User = get_user_model()\n"
            f"User.objects.create_superuser('root{suffix}', None, 'pw-{suffix}')\n"
            f"bob = User.objects.create_user('bob{suffix}')\n"
            f"alice = User.objects.create_user('alice{suffix}')\n"
            f"room = rooms.create_room({lobby!r})\n"
            "print(json.dumps({'bob': bob.pk, 'room': room.pk,\n"
            "    'bob_token': auth.issue_token(bob, ttl=600),\n"
            "    'alice_token': auth.issue_token(alice, ttl=600)}))",
        )
    )
    bob_token, alice_token = made["bob_token"], made["alice_token"]
    chat = f"/ws/chat/{urllib.parse.quote(lobby, safe='')}/"
    cafe_chat = f"/ws/chat/{urllib.parse.quote(cafe, safe='')}/"
    opened: list[Any] = []
    try:
        bob_lobby = [await ws(server, chat, bob_token) for server in (a, b)]
        bob_cafe = await ws(a, cafe_chat, bob_token)
        bob_mux = await ws(b, "/ws/", bob_token)
        alice = await ws(b, chat, alice_token)
        opened += [*bob_lobby, bob_cafe, bob_mux, alice]
        for socket in (*bob_lobby, bob_cafe, alice):
            await joined(socket)
        await next_of(bob_mux, "connected")
        await subscribe(bob_mux, lobby)
        await subscribe(bob_mux, cafe)

        admin = AdminSession(a)
        await asyncio.to_thread(admin.login, f"root{suffix}", f"pw-{suffix}")
        # bob (on a and b) and alice (on b): two users, counted on process a's admin.
        deadline = time.monotonic() + PRESENCE_WAIT_SECS
        while (count := await asyncio.to_thread(admin.connected, lobby)) != "2":
            assert time.monotonic() < deadline, f"connected now: {count!r}, expected 2"
            await asyncio.sleep(0.2)

        # A room ban, in the admin of process a.
        waits = [asyncio.ensure_future(closed(socket)) for socket in bob_lobby]
        unsubscribed = asyncio.ensure_future(next_of(bob_mux, "unsubscribed"))
        form = {"user": str(made["bob"]), "room": str(made["room"]), "duration": "3600"}
        form.update(reason="flooding", until_0="", until_1="")
        started = time.time()
        await asyncio.to_thread(admin.add_ban, form)
        for code, reason, at in await asyncio.gather(*waits):
            assert code == 4403 and reason.startswith("banned from this room until "), reason
            print(f"room ban: socket closed {at - started:.3f} s after the admin POST began")
            assert at - started < BAN_SECS + 1, f"closed {at - started:.3f} s after the POST"
        frame = await unsubscribed
        assert (frame["room"], frame["code"]) == (lobby, 4403)
        assert frame["reason"].startswith("banned from this room until ")
        await posts(bob_mux, cafe, "m-1")  # the /ws/ socket's other room goes on
        await posts(bob_cafe, None, "c-1")
        await posts(alice, None, "a-1")
        for server in (a, b):
            code, reason = await refused(server, chat, bob_token)
            assert code == 4403 and reason.startswith("banned from this room until "), reason

        # A site ban that ends by itself in SITE_BAN_SECS.
        until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=SITE_BAN_SECS)
        waits = [asyncio.ensure_future(closed(socket)) for socket in (bob_cafe, bob_mux)]
        form = {"user": str(made["bob"]), "room": "", "duration": "", "reason": ""}
        form.update(until_0=f"{until:%Y-%m-%d}", until_1=f"{until:%H:%M:%S}")
        await asyncio.to_thread(admin.add_ban, form)
        for code, reason, _ in await asyncio.gather(*waits):
            assert code == 4403 and reason.startswith("banned from this site until "), reason
        for server in (a, b):
            code, reason = await refused(server, cafe_chat, bob_token)
            assert code == 4401 and reason.startswith("banned from this site until "), reason
        await posts(alice, None, "a-2")

        # The room ban's end is moved to now behind roomcast's back (an update: no
        # signal, nothing published); the site ban ends with its time.
        await asyncio.to_thread(
            shell,
            a,
            "from django.utils import timezone\n"
            "from roomcast.models import Ban\n"
            f"print(Ban.objects.filter(room__isnull=False, user__pk={made['bob']})"
            ".update(until=timezone.now()))",
        )
        await asyncio.sleep(max(0.0, until.timestamp() + 1 - time.time()))  # the clock
        for server in (a, b):
            back = await ws(server, chat, bob_token)
            opened.append(back)
            await joined(back)
            await posts(back, None, f"back-{server.port}")
    finally:
        for socket in opened:
            socket.transport.abort()
    entries = await asyncio.to_thread(
        shell,
        b,
        "from django.contrib.admin.models import LogEntry\n"
        "print(sorted((e.content_type.model, e.action_flag) for e in LogEntry.objects.all()))",
    )
    assert entries == "[('ban', 1), ('ban', 1)]", entries
