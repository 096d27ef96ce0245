"""Member clients spread over several processes, so that the clients are not the bottleneck.

A :class:`MemberPool` starts ``procs`` client processes (``multiprocessing``, spawn) and
gives each an equal share of the members. Every process runs its own event loop (uvloop
when installed), opens its members when told to, stamps each frame it receives with
``time.monotonic()`` and, only after a phase is over, parses its frames and sends back
compact per-member records. On Linux ``time.monotonic()`` is ``CLOCK_MONOTONIC``, one
clock for the whole host, so receipt times taken in a client process and send times taken
in the benchmark's own process are comparable.

Two client libraries (``client``): ``picows`` (the default) reads each frame in a
callback called straight from the socket's ``data_received``, with no task switch per
frame, about four times cheaper per frame than ``websockets``' ``async for`` reader, so
that the member processes stay well below the server's cost per delivery; ``websockets``
is kept to show the difference (``fanout.py --client websockets``).

Three dialects: ``v1`` (roomcast.v1 and the bare baseline: a ``joined`` frame after the
handshake, message frames with ``"type":"message"`` and a ``seq``), ``seed`` (the
tutorial: nothing after the handshake, message frames ``{"message": TEXT}`` only) and
``mux`` (the multi-room socket ``/ws/``: a ``connected`` frame after the handshake, then
one ``subscribe`` per room of the member, each answered by ``joined``; message frames
carry ``"room"``; ``presence``, ``join``, ``leave`` and ``presence_count`` frames are
recorded apart). A member may carry a token (sent as ``Authorization: Bearer``).

:class:`ChurnDriver` is one more process: users who join a room on ``/ws/`` at a fixed
rate and leave it a fixed time later (scenario (f), ``churn.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

#: Clients opening at once per process: enough to fill the server's accept queue without
#: overflowing it (the server's listen backlog is 100 for uvicorn, 50 for daphne).
CONNECT_CONCURRENCY = 50
#: Seconds to open one connection (and get its ``joined`` frame, in dialect v1).
OPEN_TIMEOUT_SECS = 30.0
SUBPROTOCOL = "roomcast.v1"
#: The client libraries a member can use (see the module's docstring).
CLIENTS = ("picows", "websockets")
#: The dialects (see the module's docstring).
DIALECTS = ("v1", "seed", "mux")
#: Frames about who is in a room (dialect mux), recorded apart from message frames; a
#: record keeps the index in this tuple.
PRESENCE_TYPES = ("presence", "join", "leave", "presence_count")


@dataclass(frozen=True)
class Spec:
    """One member to open: its side (a label), URL, token (or None: a guest) and the
    rooms it subscribes to (dialect mux only)."""

    side: str
    url: str
    token: str | None = None
    rooms: tuple[str, ...] = ()


def _headers(dialect: str, token: str | None) -> dict[str, str]:
    headers = {"Sec-WebSocket-Protocol": SUBPROTOCOL} if dialect != "seed" else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def subscribe_frame(room: str) -> str:
    """A ``/ws/`` socket's subscribe frame for ``room`` (no ``since``)."""
    return json.dumps({"type": "subscribe", "room": room})


class _Subscribing:
    """The opening of a dialect-mux socket: ``connected``, then a ``joined`` per room.

    :meth:`feed` takes each frame until :attr:`done`; it returns the subscribe frames to
    send (after ``connected``) and raises on anything that refuses the member."""

    __slots__ = ("connected", "rooms", "waiting")

    def __init__(self, rooms: tuple[str, ...]) -> None:
        self.rooms = rooms
        self.waiting = set(rooms)
        self.connected = False

    @property
    def done(self) -> bool:
        return self.connected and not self.waiting

    def feed(self, text: str) -> list[str]:
        frame = json.loads(text)
        kind = frame.get("type") if isinstance(frame, dict) else None
        if not self.connected:
            if kind != "connected":
                raise RuntimeError(f"expected a connected frame first, got {text[:200]}")
            self.connected = True
            return [subscribe_frame(room) for room in self.rooms]
        if kind == "joined":
            self.waiting.discard(frame.get("room"))
        elif kind in ("unsubscribed", "error"):
            raise RuntimeError(f"subscribe refused: {text[:200]}")
        return []


def default_procs() -> int:
    """One client process per CPU this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


def add_member_arguments(parser: argparse.ArgumentParser, procs_help: str) -> None:
    """``--client`` and ``--client-procs``, for scripts whose members live in a MemberPool."""
    parser.add_argument(
        "--client",
        choices=CLIENTS,
        default="picows",
        help="members' WebSocket library (default picows; websockets costs ~4x per frame)",
    )
    parser.add_argument(
        "--client-procs",
        type=int,
        default=default_procs(),
        help=f"{procs_help} (default: CPUs available, {default_procs()})",
    )


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop when installed (as ``roomcast serve`` runs), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


async def open_ws(
    url: str, dialect: str, *, token: str | None = None, rooms: tuple[str, ...] = ()
) -> tuple[Any, dict[str, Any]]:
    """Open one connection; in dialect v1 also read its ``joined`` frame; in dialect mux
    its ``connected`` frame, then subscribe to ``rooms`` and read until each is joined
    (other frames meanwhile, such as a room's catch-up, are dropped); ``token``: sent as
    ``Authorization: Bearer``. Returns the socket and the first frame read."""
    import websockets

    ws = await websockets.connect(
        url,
        subprotocols=[SUBPROTOCOL] if dialect != "seed" else None,  # type: ignore[list-item]
        additional_headers={"Authorization": f"Bearer {token}"} if token else None,
        compression=None,  # roomcast serve turns permessage-deflate off
        open_timeout=OPEN_TIMEOUT_SECS,
        ping_interval=None,
        close_timeout=5,
        max_size=2**20,
    )
    if dialect == "seed":
        return ws, {}
    if dialect == "mux":
        opening = _Subscribing(rooms)
        async with asyncio.timeout(OPEN_TIMEOUT_SECS):
            first = str(await ws.recv())
            for frame in opening.feed(first):
                await ws.send(frame)
            while not opening.done:
                opening.feed(str(await ws.recv()))
        return ws, json.loads(first)
    joined = json.loads(await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT_SECS))
    if joined.get("type") != "joined":
        raise RuntimeError(f"expected a joined frame first, got {joined!r}")
    return ws, joined


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


async def recv_conn(conn: Connection) -> Any:
    """``conn.recv()`` without blocking the event loop while nothing has arrived."""
    loop = asyncio.get_running_loop()
    while not conn.poll():
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(conn.fileno(), _wake, ready)
        try:
            await ready
        finally:
            loop.remove_reader(conn.fileno())
            # add_reader made the socket non-blocking (uvloop does): a large send() on it
            # would then fail with EAGAIN instead of waiting for the reader.
            os.set_blocking(conn.fileno(), True)
    return conn.recv()


@dataclass
class MemberRecord:
    """What one member received in one phase: message indices, seqs, receipt times."""

    side: str
    closed: bool
    other_frames: int  # frames of the phase that are not message frames
    index: array[int]  # message number within the phase, in order of receipt
    seq: array[int]  # its seq (-1 in dialect seed)
    received: array[float]  # time.monotonic() at receipt
    # Dialect mux: presence frames of the phase, their receipt times and kinds (an index
    # in PRESENCE_TYPES).
    presence_received: array[float] = field(default_factory=lambda: array("d"))
    presence_kind: array[int] = field(default_factory=lambda: array("b"))


@dataclass
class OpenStats:
    """How the opening of one process's members went."""

    started: float  # monotonic, first connect
    finished: float  # monotonic, last connection open (and joined)
    opened: int
    failed: int
    first_error: str


# -- the parent's side --------------------------------------------------------------------------


class MemberPool:
    """``procs`` client processes holding the members of one target.

    After :meth:`start`, call :meth:`open`, then per phase :meth:`arm`, publish,
    :meth:`wait_done`, :meth:`collect`; you must call :meth:`stop` at the end (also on error).
    """

    def __init__(
        self,
        urls: list[tuple[str, str]] | list[Spec],
        dialect: str,
        procs: int,
        client: str = "picows",
    ) -> None:
        if client not in CLIENTS:
            raise ValueError(f"client must be one of {', '.join(CLIENTS)}, not {client!r}")
        if dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, not {dialect!r}")
        # One Spec per member; (side, url) pairs are guests without rooms.
        self.specs = [u if isinstance(u, Spec) else Spec(u[0], u[1]) for u in urls]
        self.dialect = dialect
        self.client = client
        self.nprocs = max(1, min(procs, len(urls)))
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.conns: list[Connection] = []
        self._ready = False

    def start(self) -> None:
        """Spawn the client processes (they open nothing yet)."""
        ctx = multiprocessing.get_context("spawn")
        for i in range(self.nprocs):
            share = self.specs[i :: self.nprocs]
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker,
                args=(child, share, self.dialect, self.client),
                name=f"bench-clients-{i}",
            )
            proc.daemon = True  # never outlives the benchmark
            proc.start()
            child.close()
            self.processes.append(proc)
            self.conns.append(parent)

    @property
    def pids(self) -> list[int]:
        """Process ids of the client processes (for CPU accounting)."""
        return [p.pid for p in self.processes if p.pid is not None]

    async def _all(self, command: tuple[Any, ...], expect: str, timeout: float) -> list[Any]:
        for conn in self.conns:
            conn.send(command)
        async with asyncio.timeout(timeout):
            replies = await asyncio.gather(*(recv_conn(c) for c in self.conns))
        for reply in replies:
            if reply[0] != expect:
                raise RuntimeError(f"client process: expected {expect}, got {reply!r}")
        return [reply[1] for reply in replies]

    async def ready(self) -> None:
        """Wait until every client process has started and waits for orders."""
        if not self._ready:
            await self._all(("hello",), "hello", 60)
            self._ready = True

    async def open(self, timeout: float) -> list[OpenStats]:
        """Open every member, all processes starting together; their stats."""
        await self.ready()
        return await self._all(("open",), "opened", timeout)

    async def arm(self, tag: str, count: int) -> None:
        """From now, each member must receive ``count`` frames containing ``tag``."""
        await self._all(("arm", tag, count), "armed", 30)

    async def wait_done(self, timeout: float) -> bool:
        """Whether every member got its ``count`` frames within ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                for reply in await asyncio.gather(*(recv_conn(c) for c in self.conns)):
                    if reply[0] != "done":
                        raise RuntimeError(f"client process: expected done, got {reply!r}")
        except TimeoutError:
            for conn in self.conns:
                conn.send(("give_up",))  # it answers done, which collect() skips
            return False
        return True

    async def collect(self, tag: str) -> list[MemberRecord]:
        """Every member's records of the phase ``tag`` (its frames parsed now)."""
        for conn in self.conns:
            conn.send(("collect", tag))
        records: list[MemberRecord] = []
        async with asyncio.timeout(120):
            for conn in self.conns:
                while True:
                    reply = await recv_conn(conn)
                    if reply[0] == "records":
                        records += reply[1]
                        break
                    if reply[0] != "done":  # a late done of a phase given up on
                        raise RuntimeError(f"client process: expected records, got {reply!r}")
        return records

    async def stop(self) -> None:
        """Close every member and end the processes (killed if they do not end in 30 s)."""
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("close",))
        deadline = time.monotonic() + 30
        for proc in self.processes:
            await asyncio.to_thread(proc.join, max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
            proc.join(5)
        for conn in self.conns:
            conn.close()
        self.processes, self.conns = [], []


# -- a client process -------------------------------------------------------------------------


class _Member:
    """One member on ``websockets``: a task per member reads with ``async for``."""

    __slots__ = ("count", "frames", "side", "ws")

    def __init__(self, side: str, ws: Any) -> None:
        self.side = side
        self.ws = ws
        self.frames: list[tuple[float, str]] = []
        self.count = 0

    @property
    def closed(self) -> bool:
        return self.ws.close_code is not None

    async def close(self) -> None:
        await self.ws.close()

    def abort(self) -> None:
        self.ws.transport.abort()


class _State:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.tag = "\0"  # matches nothing until armed
        self.target = 0
        self.remaining = 0
        self.cursors: list[int] = []

    def member_done(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.conn.send(("done", None))


async def _read(member: _Member, state: _State) -> None:
    # Only a timestamp and a substring test here: parsing waits until the phase is over.
    from websockets.exceptions import ConnectionClosed

    frames = member.frames
    with contextlib.suppress(ConnectionClosed):
        async for raw in member.ws:
            frames.append((time.monotonic(), raw))
            if state.tag in raw:
                member.count += 1
                if member.count == state.target:
                    state.member_done()


def _picows_member_class() -> type:
    # Imported here: only the member processes need picows.
    from picows import WSCloseCode, WSListener, WSMsgType, WSTransport

    class PicowsMember(WSListener):  # type: ignore[misc]
        """One member on picows: ``on_ws_frame`` stamps each text frame as it is parsed."""

        def __init__(
            self, side: str, state: _State, dialect: str, rooms: tuple[str, ...] = ()
        ) -> None:
            super().__init__()
            self.side = side
            self.state = state
            self.frames: list[tuple[float, str]] = []
            self.count = 0
            self.closed = False
            self.transport: WSTransport | None = None
            # In dialect v1 the first frame must be ``joined``: opening waits for it; in
            # dialect mux, ``connected`` and then a ``joined`` per room (``opening``).
            self.joined: asyncio.Future[str] | None = (
                asyncio.get_running_loop().create_future() if dialect != "seed" else None
            )
            self.opening = _Subscribing(rooms) if dialect == "mux" else None
            self.opened_at = self.connected_at = math.nan  # dialect mux: when they came
            self._partial: list[str] = []

        def on_ws_connected(self, transport: WSTransport) -> None:
            self.transport = transport
            self.opened_at = time.monotonic()  # the handshake done

        def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
            received = time.monotonic()
            kind = frame.msg_type
            if kind == WSMsgType.CLOSE:
                self.closed = True
                code = frame.get_close_code()  # NO_INFO (1005) must not go on the wire
                transport.send_close(WSCloseCode.OK if code == WSCloseCode.NO_INFO else code)
                transport.disconnect()
                return
            if kind == WSMsgType.PING:
                transport.send(WSMsgType.PONG, frame.get_payload_as_bytes())
                return
            if kind not in (WSMsgType.TEXT, WSMsgType.CONTINUATION):
                return
            text = frame.get_payload_as_utf8_text()
            if not frame.fin or self._partial:  # a fragmented message: join its frames
                self._partial.append(text)
                if not frame.fin:
                    return
                text, self._partial = "".join(self._partial), []
            if self.joined is not None and not self.joined.done():
                self._opening_frame(transport, text)
                return
            self.frames.append((received, text))
            state = self.state
            if state.tag in text:
                self.count += 1
                if self.count == state.target:
                    state.member_done()

        def _opening_frame(self, transport: WSTransport, text: str) -> None:
            assert self.joined is not None
            if self.opening is None:
                self.joined.set_result(text)
                return
            try:  # dialect mux: a room's catch-up meanwhile is not kept
                for out in self.opening.feed(text):
                    self.connected_at = time.monotonic()  # feed answers connected alone
                    transport.send(WSMsgType.TEXT, out.encode())
            except Exception as exc:
                self.joined.set_exception(exc)
                return
            if self.opening.done:
                self.joined.set_result("")

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            self.closed = True
            if self.joined is not None and not self.joined.done():
                self.joined.set_exception(ConnectionError("closed before the joined frame"))

        async def close(self) -> None:
            if self.transport is not None and not self.closed:
                self.transport.send_close(WSCloseCode.OK)
                await self.transport.wait_disconnected()

        def abort(self) -> None:
            if self.transport is not None:
                self.transport.disconnect(graceful=False)

    return PicowsMember


async def _open_picows(member_class: type, spec: Spec, dialect: str, state: _State) -> Any:
    """Open one member within OPEN_TIMEOUT_SECS (joined frames included); a member that
    does not get there is aborted."""
    from picows import ws_connect

    deadline = asyncio.get_running_loop().time() + OPEN_TIMEOUT_SECS
    async with asyncio.timeout_at(deadline):
        _, member = await ws_connect(
            lambda: member_class(spec.side, state, dialect, spec.rooms),
            spec.url,
            websocket_handshake_timeout=OPEN_TIMEOUT_SECS,
            enable_auto_pong=False,  # on_ws_frame answers pings
            max_frame_size=2**20,
            extra_headers=_headers(dialect, spec.token) or None,
        )
    try:
        async with asyncio.timeout_at(deadline):
            first = await member.joined if member.joined is not None else ""
        if dialect == "v1" and json.loads(first).get("type") != "joined":
            raise RuntimeError(f"expected a joined frame first, got {first[:200]}")
    except BaseException:
        member.abort()
        raise
    return member


async def _open_all(
    specs: list[Spec],
    dialect: str,
    client: str,
    state: _State,
    tasks: set[asyncio.Task[None]],
) -> tuple[list[Any], OpenStats]:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    members: list[Any] = []
    errors: list[str] = []
    picows_member = _picows_member_class() if client == "picows" else None

    async def one(spec: Spec) -> None:
        async with gate:
            try:
                if picows_member is not None:
                    members.append(await _open_picows(picows_member, spec, dialect, state))
                    return
                ws, _ = await open_ws(spec.url, dialect, token=spec.token, rooms=spec.rooms)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return
        member = _Member(spec.side, ws)
        members.append(member)
        task = asyncio.create_task(_read(member, state))
        tasks.add(task)

    started = time.monotonic()
    await asyncio.gather(*(one(spec) for spec in specs))
    stats = OpenStats(
        started, time.monotonic(), len(members), len(errors), errors[0] if errors else ""
    )
    return members, stats


def _records(members: list[Any], state: _State, tag: str, dialect: str) -> list[MemberRecord]:
    prefix = f"{tag}#"
    out = []
    for member, cursor in zip(members, state.cursors, strict=True):
        rec = MemberRecord(member.side, member.closed, 0, array("i"), array("q"), array("d"))
        for received, raw in member.frames[cursor:]:
            frame = json.loads(raw)
            if dialect == "mux" and frame.get("type") in PRESENCE_TYPES:
                rec.presence_received.append(received)
                rec.presence_kind.append(PRESENCE_TYPES.index(frame["type"]))
                continue
            if dialect != "seed" and frame.get("type") != "message":
                rec.other_frames += 1
                continue
            text = frame.get("message")
            if not isinstance(text, str) or not text.startswith(prefix):
                if dialect == "seed" and not isinstance(text, str):
                    rec.other_frames += 1
                continue  # a straggler of an earlier phase
            rec.index.append(int(text[len(prefix) :].split(" ", 1)[0]))
            rec.seq.append(int(frame.get("seq", -1)))
            rec.received.append(received)
        out.append(rec)
        member.frames.clear()  # parsed (synchronously: nothing arrived meanwhile)
    state.cursors = [0] * len(members)
    return out


async def _serve(conn: Connection, specs: list[Spec], dialect: str, client: str) -> None:
    state = _State(conn)
    tasks: set[asyncio.Task[None]] = set()
    members: list[Any] = []
    try:
        while True:
            command = await recv_conn(conn)
            if command[0] == "hello":
                conn.send(("hello", None))
            elif command[0] == "open":
                members, stats = await _open_all(specs, dialect, client, state, tasks)
                state.cursors = [0] * len(members)
                conn.send(("opened", stats))
            elif command[0] == "arm":
                _, state.tag, state.target = command
                state.cursors = [len(m.frames) for m in members]
                for member in members:
                    member.count = 0
                state.remaining = len(members)
                conn.send(("armed", None))
                if not members:
                    conn.send(("done", None))
            elif command[0] == "give_up":
                state.tag = "\0"
                conn.send(("done", None))
            elif command[0] == "collect":
                conn.send(("records", _records(members, state, command[1], dialect)))
            elif command[0] == "close":
                break
    finally:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(20):
                await asyncio.gather(*(m.close() for m in members), return_exceptions=True)
        for member in members:
            member.abort()
        for task in tasks:
            task.cancel()


def _worker(conn: Connection, specs: list[Spec], dialect: str, client: str) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = len(specs) + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_serve(conn, specs, dialect, client))


# -- churn: users joining and leaving a room ---------------------------------------------------

#: Seconds a leaving churner waits for the server's answer to its close frame.
CHURN_CLOSE_TIMEOUT_SECS = 10.0
#: Seconds ``ChurnDriver.finish`` waits for the churners to leave before aborting them.
CHURN_FINISH_TIMEOUT_SECS = 45.0


@dataclass
class ChurnJoin:
    """One scheduled join of a churn user: times (``time.monotonic()``; NaN: did not
    happen) and the error that stopped it."""

    scheduled: float
    joined: float  # its joined frame received
    left: float  # its socket closed (the server answered the close)
    error: str
    opened: float = math.nan  # its handshake done
    connected: float = math.nan  # its connected frame received (it subscribes then)
    leaving: float = math.nan  # its close frame sent


@dataclass
class ChurnStats:
    """What the churn process did between :meth:`ChurnDriver.begin` and ``finish``."""

    joins: list[ChurnJoin]
    skipped: int  # scheduled joins not attempted: no free user, or max_live reached
    frames: int  # frames the churners received (the room's messages, presence...)


class ChurnDriver:
    """One process of users who join ``room`` on ``/ws/`` and leave it again.

    Join ``i`` is scheduled at ``begin + i / rate`` (open loop: it does not wait for the
    joins before it); a churner takes a free token (each token is another user: one user
    is never in the room twice at once), connects with it, subscribes and, ``stay``
    seconds after its scheduled time (or at once when later), closes its socket: the
    leave. Bounds: at most ``max_joins`` joins and ``max_live`` churners at once (a join
    past either is counted as skipped); :meth:`finish` makes every churner leave within
    CHURN_FINISH_TIMEOUT_SECS. Call :meth:`stop` at the end (also on error).
    """

    def __init__(
        self,
        url: str,
        room: str,
        tokens: list[str],
        *,
        rate: float,
        stay: float,
        max_joins: int,
        max_live: int,
    ) -> None:
        if rate <= 0 or stay < 0 or not tokens:
            raise ValueError("a churn needs a positive rate, stay >= 0 and tokens")
        self.args = (url, room, tokens, rate, stay, max_joins, max_live)
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        """The churn process's id (for CPU accounting)."""
        return self.process.pid if self.process is not None else None

    async def start(self) -> None:
        """Spawn the process; return once it waits for :meth:`begin`."""
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_churn_worker, args=(child, *self.args), name="bench-churn", daemon=True
        )
        self.process.start()
        child.close()
        self.conn = parent
        async with asyncio.timeout(60):
            reply = await recv_conn(parent)
        if reply[0] != "hello":
            raise RuntimeError(f"churn process: expected hello, got {reply!r}")

    def begin(self) -> None:
        """Start the joins now."""
        assert self.conn is not None
        self.conn.send(("begin",))

    async def finish(self) -> ChurnStats:
        """Stop scheduling joins, make every churner leave; what happened."""
        assert self.conn is not None
        self.conn.send(("finish",))
        async with asyncio.timeout(CHURN_FINISH_TIMEOUT_SECS + OPEN_TIMEOUT_SECS + 30):
            reply = await recv_conn(self.conn)
        if reply[0] != "finished":
            raise RuntimeError(f"churn process: expected finished, got {reply!r}")
        stats: ChurnStats = reply[1]
        return stats

    async def stop(self) -> None:
        """End the process (killed if it does not end in 10 s)."""
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.send(("close",))
        if self.process is not None:
            await asyncio.to_thread(self.process.join, 10)
            if self.process.is_alive():
                self.process.kill()
            self.process.join(5)
        if self.conn is not None:
            self.conn.close()
        self.process, self.conn = None, None


async def _churn(
    conn: Connection,
    url: str,
    room: str,
    tokens: list[str],
    rate: float,
    stay: float,
    max_joins: int,
    max_live: int,
) -> None:
    from collections import deque

    member_class = _picows_member_class()
    state = _State(conn)  # never armed: the churners only count their frames
    free = deque(range(len(tokens)))
    finishing = asyncio.Event()
    joins: list[ChurnJoin] = []
    live: set[asyncio.Task[None]] = set()
    skipped = frames = 0

    async def churner(user: int, record: ChurnJoin) -> None:
        nonlocal frames
        member = None
        try:
            spec = Spec("churn", url, tokens[user], (room,))
            member = await _open_picows(member_class, spec, "mux", state)
            record.joined = time.monotonic()
            record.opened, record.connected = member.opened_at, member.connected_at
            wait = record.scheduled + stay - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(finishing.wait(), wait)
            record.leaving = time.monotonic()
            async with asyncio.timeout(CHURN_CLOSE_TIMEOUT_SECS):
                await member.close()
            record.left = time.monotonic()
        except Exception as exc:
            record.error = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            if member is not None:
                frames += len(member.frames)
                member.abort()
            free.append(user)

    async def schedule(t0: float) -> None:
        nonlocal skipped
        for i in range(max_joins):
            scheduled = t0 + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
            if not free or len(live) >= max_live:
                skipped += 1
                continue
            record = ChurnJoin(scheduled, math.nan, math.nan, "")
            joins.append(record)
            task = asyncio.create_task(churner(free.popleft(), record))
            live.add(task)
            task.add_done_callback(live.discard)

    conn.send(("hello", None))
    scheduler: asyncio.Task[None] | None = None
    try:
        while True:
            command = await recv_conn(conn)
            if command[0] == "begin":
                scheduler = asyncio.create_task(schedule(time.monotonic()))
            elif command[0] == "finish":
                if scheduler is not None:
                    scheduler.cancel()
                finishing.set()
                if live:
                    await asyncio.wait(set(live), timeout=CHURN_FINISH_TIMEOUT_SECS)
                conn.send(("finished", ChurnStats(joins, skipped, frames)))
            elif command[0] == "close":
                break
    finally:
        for task in list(live):
            task.cancel()


def _churn_worker(conn: Connection, *args: Any) -> None:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_churn(conn, *args))
