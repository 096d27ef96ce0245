"""A test double of the ``/ws/`` endpoint, for roomcast.client's unit tests.

A real WebSocket server (websockets' asyncio server on a free port) that speaks the
frames of docs/protocol.md, "One socket, many rooms: `/ws/`", from an in-memory store
that outlives the server, so a test can stop it (1012, as ``roomcast serve`` does),
change the rooms meanwhile and start it again on the same port. It also does on demand
what a real server does rarely: refuse a post with ``busy``, lose the connection after
storing a post and before its ack, end one room's subscription with 4403, expire a token
(4501). The client's behaviour against the real server is tested end to end in
tests/e2e/test_client_e2e.py; the tests at the end of this file check the double itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from tests.conftest import free_port

#: The double's REPLAY_LIMIT and HISTORY_COUNT, small so that tests reach them.
REPLAY_LIMIT = 5
HISTORY_COUNT = 3
TS = "2026-11-29T10:00:00.000Z"


@dataclass
class Socket:
    """One client socket of the double."""

    ws: ServerConnection
    user: str
    token: str | None
    guest: bool
    rooms: set[str] = field(default_factory=set)

    async def send(self, frame: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(json.dumps(frame))


@dataclass
class Hub:
    """The double's state: rooms, user streams, tokens, sockets; and the test's levers."""

    rooms: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    user_streams: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # token -> username
    forbidden: set[tuple[str, str]] = field(default_factory=set)  # (user, room)
    read_seqs: dict[tuple[str, str], int] = field(default_factory=dict)
    sockets: list[Socket] = field(default_factory=list)
    #: Every frame received, with the socket's user: (user, frame).
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: Error codes to answer the next posts with (busy, rate_limited, forbidden), in order.
    refuse_posts: list[str] = field(default_factory=list)
    #: Drop the connection after storing the next N posts, before their acks.
    drop_after_store: int = 0
    #: Error codes for the next history / presence / typing frames.
    refuse_history: list[str] = field(default_factory=list)
    refuse_typing: bool = False
    #: Answers for the next subscribes: "rate_limited" (an error) or a close code (an
    #: unsubscribed frame, e.g. 1011).
    refuse_subscribes: list[str | int] = field(default_factory=list)
    #: Tokens handed out when the test asks, and how many connections each opened.
    connects: int = 0
    guests: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # -- levers -----------------------------------------------------------------------

    def store(self, room: str, text: str, *, user: str | None = "bot", **extra: Any) -> int:
        """Store a message (as another client would have); returns its seq."""
        stream = self.rooms.setdefault(room, [])
        frame = {
            "type": "message",
            "room": room,
            "seq": len(stream) + 1,
            "message": text,
            "kind": "chat" if user else "system",
            "user": user,
            "ts": TS,
            **extra,
        }
        stream.append(frame)
        return int(frame["seq"])

    async def post(self, room: str, text: str, *, user: str | None = "bot") -> int:
        """Store a message and deliver it to the room's subscribers."""
        seq = self.store(room, text, user=user)
        await self.broadcast(room, self.rooms[room][-1])
        return seq

    async def broadcast(
        self, room: str, frame: dict[str, Any], *, skip: Socket | None = None
    ) -> None:
        for socket in list(self.sockets):
            if room in socket.rooms and socket is not skip:
                await socket.send(frame)

    async def send_to_user(self, user: str, text: str) -> int:
        stream = self.user_streams.setdefault(user, [])
        frame = {"type": "user_message", "seq": len(stream) + 1, "message": text, "ts": TS}
        stream.append(frame)
        for socket in list(self.sockets):
            if socket.user == user and not socket.guest:
                await socket.send(frame)
        return int(frame["seq"])

    async def revoke(self, user: str, room: str) -> None:
        """Take ``room`` away from ``user``: their subscriptions end with 4403."""
        self.forbidden.add((user, room))
        for socket in list(self.sockets):
            if socket.user == user and room in socket.rooms:
                socket.rooms.discard(room)
                await socket.send(
                    {
                        "type": "unsubscribed",
                        "room": room,
                        "code": 4403,
                        "reason": "not allowed in this room any more",
                    }
                )

    async def close_all(self, code: int, reason: str = "", *, token: str | None = None) -> None:
        """Close every socket (or those of ``token``) with ``code``."""
        for socket in list(self.sockets):
            if token is None or socket.token == token:
                await socket.ws.close(code, reason)

    def frames(self, kind: str) -> list[dict[str, Any]]:
        """The frames of type ``kind`` received so far."""
        return [frame for _, frame in self.received if frame.get("type") == kind]

    # -- the protocol -----------------------------------------------------------------

    def catch_up(
        self, stream: list[dict[str, Any]], since: int | None
    ) -> tuple[int, list[dict[str, Any]], bool | None]:
        last = len(stream)
        if since is not None and since <= last and last - since <= REPLAY_LIMIT:
            return last, stream[since:], True
        return last, stream[-HISTORY_COUNT:], (None if since is None else False)

    def unread(self, user: str, room: str) -> tuple[int, int]:
        read = self.read_seqs.get((user, room), 0)
        count = sum(
            1
            for frame in self.rooms.get(room, [])
            if frame["type"] == "message"
            and frame["seq"] > read
            and frame["user"] != user
            and not frame.get("deleted")
        )
        return read, count

    def presence(self, room: str) -> dict[str, Any]:
        users: dict[str, int] = {}
        anonymous = 0
        for socket in self.sockets:
            if room in socket.rooms:
                if socket.guest:
                    anonymous += 1
                else:
                    users[socket.user] = users.get(socket.user, 0) + 1
        return {
            "type": "presence",
            "room": room,
            "users": [{"user": u, "connections": n} for u, n in sorted(users.items())],
            "count": len(users),
            "anonymous": anonymous,
            "truncated": False,
        }

    async def handle(self, ws: ServerConnection) -> None:
        self.connects += 1
        request = ws.request
        assert request is not None
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
        since = int(query["since"][0]) if "since" in query else None
        header = request.headers.get("Authorization")
        token = None
        if header:
            token = header.removeprefix("Bearer ")
            if token not in self.tokens:
                await ws.close(4401, "invalid token")
                return
        user = self.tokens[token] if token else f"guest-{next(self.guests):06x}"
        socket = Socket(ws, user, token, guest=token is None)
        self.sockets.append(socket)
        try:
            if socket.guest:
                await socket.send({"type": "connected", "user": user})
            else:
                stream = self.user_streams.setdefault(user, [])
                last, frames, recovered = self.catch_up(stream, since)
                connected = {"type": "connected", "user": user, "user_seq": last}
                if recovered is not None:
                    connected["recovered"] = recovered
                await socket.send(connected)
                for frame in frames:
                    await socket.send(frame)
            async for text in ws:
                frame = json.loads(text)
                self.received.append((user, frame))
                await self.on_frame(socket, frame)
        except ConnectionClosed:
            pass
        finally:
            self.sockets.remove(socket)

    async def on_frame(self, socket: Socket, frame: dict[str, Any]) -> None:
        kind, room = frame.get("type"), frame.get("room")
        if kind == "ping":
            await socket.send({"type": "pong"})
            return
        if kind == "subscribe":
            await self.subscribe(socket, room, frame.get("since"))
            return
        if room not in socket.rooms:
            error = {"type": "error", "room": room, "code": "not_subscribed", "detail": "no"}
            if "client_id" in frame:
                error["client_id"] = frame["client_id"]
            await socket.send(error)
            return
        if kind == "unsubscribe":
            socket.rooms.discard(room)
            await socket.send(
                {"type": "unsubscribed", "room": room, "code": 1000, "reason": "unsubscribed"}
            )
        elif kind in ("message", "edit", "delete"):
            await self.on_post(socket, frame)
        elif kind == "history":
            if self.refuse_history:
                code = self.refuse_history.pop(0)
                await socket.send({"type": "error", "room": room, "code": code, "detail": "no"})
                return
            stream = self.rooms.get(room, [])
            before = frame.get("before") or len(stream) + 1
            older = [f for f in stream if f["seq"] < before]
            page = older[-frame.get("limit", 50) :]
            await socket.send(
                {
                    "type": "history",
                    "room": room,
                    "messages": page,
                    "has_more": len(older) > len(page),
                }
            )
        elif kind == "typing":
            if self.refuse_typing:
                await socket.send(
                    {"type": "error", "room": room, "code": "forbidden", "detail": "no typing"}
                )
                return
            await self.broadcast(
                room, {"type": "typing", "room": room, "user": socket.user}, skip=socket
            )
        elif kind == "presence":
            await socket.send(self.presence(room))
        elif kind == "read":
            key = (socket.user, room)
            self.read_seqs[key] = max(self.read_seqs.get(key, 0), frame["seq"])
            read, unread = self.unread(socket.user, room)
            for other in list(self.sockets):
                if other.user == socket.user and room in other.rooms:
                    await other.send(
                        {"type": "unread", "room": room, "read_seq": read, "unread": unread}
                    )

    async def subscribe(self, socket: Socket, room: str, since: int | None) -> None:
        if self.refuse_subscribes:
            answer = self.refuse_subscribes.pop(0)
            if isinstance(answer, int):
                frame = {"type": "unsubscribed", "room": room, "code": answer, "reason": "down"}
            else:
                frame = {"type": "error", "room": room, "code": answer, "detail": answer,
                         "retry_after": 0.05}  # fmt: skip
            await socket.send(frame)
            return
        if room in socket.rooms:
            await socket.send(
                {"type": "error", "room": room, "code": "already_subscribed", "detail": "again"}
            )
            return
        if (socket.user, room) in self.forbidden:
            await socket.send(
                {
                    "type": "unsubscribed",
                    "room": room,
                    "code": 4403,
                    "reason": "not allowed in this room",
                }
            )
            return
        stream = self.rooms.setdefault(room, [])
        last, frames, recovered = self.catch_up(stream, since)
        joined: dict[str, Any] = {"type": "joined", "room": room, "seq": last}
        if recovered is not None:
            joined["recovered"] = recovered
        if not socket.guest:
            joined["read_seq"], joined["unread"] = self.unread(socket.user, room)
        await socket.send(joined)
        for frame in frames:
            await socket.send(frame)
        socket.rooms.add(room)
        await socket.send(self.presence(room))
        if not socket.guest:
            await self.broadcast(
                room, {"type": "join", "room": room, "user": socket.user}, skip=socket
            )

    async def on_post(self, socket: Socket, frame: dict[str, Any]) -> None:
        room, client_id = frame["room"], frame["client_id"]
        if self.refuse_posts:
            code = self.refuse_posts.pop(0)
            error = {
                "type": "error",
                "room": room,
                "code": code,
                "detail": code,
                "client_id": client_id,
            }
            if code == "rate_limited":
                error["retry_after"] = 0.05
            await socket.send(error)
            return
        stream = self.rooms.setdefault(room, [])
        for stored in stream:
            if stored.get("client_id") == client_id:
                await socket.send(
                    {"type": "ack", "room": room, "client_id": client_id, "seq": stored["seq"]}
                )
                return
        seq = len(stream) + 1
        if frame["type"] == "message":
            event = {
                "type": "message",
                "room": room,
                "seq": seq,
                "message": frame["message"],
                "kind": "chat",
                "user": socket.user,
                "ts": TS,
                "client_id": client_id,
            }
        else:
            targets = [f for f in stream if f["seq"] == frame["seq"] and f["type"] == "message"]
            if not targets or targets[0].get("deleted"):
                await socket.send(
                    {"type": "error", "room": room, "code": "not_found", "detail": "no such",
                     "client_id": client_id}
                )  # fmt: skip
                return
            event = {"type": frame["type"], "room": room, "seq": seq, "target": frame["seq"],
                     "user": socket.user, "ts": TS, "client_id": client_id}  # fmt: skip
            if frame["type"] == "edit":
                event["message"] = targets[0]["message"] = frame["message"]
                targets[0]["edited"] = TS
            else:
                targets[0]["deleted"], targets[0]["message"] = True, ""
        stream.append(event)
        if self.drop_after_store:
            self.drop_after_store -= 1
            await socket.ws.close(1012, "service restart")
            return
        await socket.send({"type": "ack", "room": room, "client_id": client_id, "seq": seq})
        await self.broadcast(room, event)


class DoubleServer:
    """The double on a fixed port: :meth:`start`, :meth:`stop` (1012), start again."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.port = free_port()
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/"

    async def start(self) -> DoubleServer:
        def v1(_: ServerConnection, offered: Sequence[str]) -> Subprotocol | None:
            # Accepted when offered; a client that offers none is spoken to in v1 anyway.
            return Subprotocol("roomcast.v1") if "roomcast.v1" in offered else None

        self._server = await serve(self.hub.handle, "127.0.0.1", self.port, select_subprotocol=v1)
        return self

    async def stop(self, code: int = 1012, reason: str = "service restart") -> None:
        """Close every socket with ``code`` and stop listening."""
        if self._server is not None:
            await self.hub.close_all(code, reason)
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def token(self, user: str) -> str:
        """A token the double accepts, for ``user``."""
        token = f"tok-{user}-{len(self.hub.tokens)}"
        self.hub.tokens[token] = user
        return token


@contextlib.asynccontextmanager
async def running_double() -> AsyncIterator[DoubleServer]:
    """The double, started; stopped at the end (each test module's ``double`` fixture)."""
    server = await DoubleServer(Hub()).start()
    try:
        yield server
    finally:
        await server.stop(1001, "going away")


@pytest.fixture
async def double() -> AsyncIterator[DoubleServer]:
    async with running_double() as server:
        yield server


# -- the double's own tests: it answers as docs/protocol.md says ---------------------------


async def test_double_answers_subscribe_with_joined_catch_up_and_presence(double) -> None:
    """A subscribe is answered with joined (seq, recovered), the catch-up, then presence."""
    import websockets

    for n in range(4):
        double.hub.store("lobby", f"m{n}")
    token = double.token("alice")
    async with websockets.connect(
        double.url, additional_headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        assert json.loads(await ws.recv()) == {"type": "connected", "user": "alice", "user_seq": 0}
        await ws.send(json.dumps({"type": "subscribe", "room": "lobby", "since": 2}))
        joined = json.loads(await ws.recv())
        assert joined["seq"] == 4 and joined["recovered"] is True and joined["unread"] == 4
        assert [json.loads(await ws.recv())["seq"] for _ in range(2)] == [3, 4]
        assert json.loads(await ws.recv())["type"] == "presence"


async def test_double_refuses_a_bad_token_with_4401(double) -> None:
    """A token the double does not know closes the socket with 4401."""
    import websockets

    async with websockets.connect(
        double.url, additional_headers={"Authorization": "Bearer nope"}
    ) as ws:
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 4401


async def wait_for(predicate: Any, what: str, timeout: float = 10.0) -> None:
    """Wait until ``predicate()`` is true (polling the event loop), or fail naming ``what``."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110 - the client's state has no event to await
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
