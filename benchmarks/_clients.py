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

Two dialects: ``v1`` (roomcast.v1 and the bare baseline: a ``joined`` frame after the
handshake, message frames with ``"type":"message"`` and a ``seq``) and ``seed`` (the
tutorial: nothing after the handshake, message frames ``{"message": TEXT}`` only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
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


async def open_ws(url: str, dialect: str) -> tuple[Any, dict[str, Any]]:
    """Open one connection; in dialect v1 also read its ``joined`` frame."""
    import websockets

    ws = await websockets.connect(
        url,
        subprotocols=[SUBPROTOCOL] if dialect == "v1" else None,  # type: ignore[list-item]
        compression=None,  # roomcast serve turns permessage-deflate off
        open_timeout=OPEN_TIMEOUT_SECS,
        ping_interval=None,
        close_timeout=5,
        max_size=2**20,
    )
    if dialect != "v1":
        return ws, {}
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
        self, urls: list[tuple[str, str]], dialect: str, procs: int, client: str = "picows"
    ) -> None:
        if client not in CLIENTS:
            raise ValueError(f"client must be one of {', '.join(CLIENTS)}, not {client!r}")
        self.urls = urls  # (side, url), one per member
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
            share = self.urls[i :: self.nprocs]
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

        def __init__(self, side: str, state: _State, dialect: str) -> None:
            super().__init__()
            self.side = side
            self.state = state
            self.frames: list[tuple[float, str]] = []
            self.count = 0
            self.closed = False
            self.transport: WSTransport | None = None
            # In dialect v1 the first frame must be ``joined``: opening waits for it.
            self.joined: asyncio.Future[str] | None = (
                asyncio.get_running_loop().create_future() if dialect == "v1" else None
            )
            self._partial: list[str] = []

        def on_ws_connected(self, transport: WSTransport) -> None:
            self.transport = transport

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
                self.joined.set_result(text)
                return
            self.frames.append((received, text))
            state = self.state
            if state.tag in text:
                self.count += 1
                if self.count == state.target:
                    state.member_done()

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


async def _open_picows(member_class: type, url: str, side: str, dialect: str, state: _State) -> Any:
    from picows import ws_connect

    headers = {"Sec-WebSocket-Protocol": SUBPROTOCOL} if dialect == "v1" else None
    async with asyncio.timeout(OPEN_TIMEOUT_SECS):
        _, member = await ws_connect(
            lambda: member_class(side, state, dialect),
            url,
            websocket_handshake_timeout=OPEN_TIMEOUT_SECS,
            enable_auto_pong=False,  # on_ws_frame answers pings
            max_frame_size=2**20,
            extra_headers=headers,
        )
        if member.joined is not None:
            joined = json.loads(await member.joined)
            if joined.get("type") != "joined":
                member.abort()
                raise RuntimeError(f"expected a joined frame first, got {joined!r}")
    return member


async def _open_all(
    urls: list[tuple[str, str]],
    dialect: str,
    client: str,
    state: _State,
    tasks: set[asyncio.Task[None]],
) -> tuple[list[Any], OpenStats]:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    members: list[Any] = []
    errors: list[str] = []
    picows_member = _picows_member_class() if client == "picows" else None

    async def one(side: str, url: str) -> None:
        async with gate:
            try:
                if picows_member is not None:
                    members.append(await _open_picows(picows_member, url, side, dialect, state))
                    return
                ws, _ = await open_ws(url, dialect)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return
        member = _Member(side, ws)
        members.append(member)
        task = asyncio.create_task(_read(member, state))
        tasks.add(task)

    started = time.monotonic()
    await asyncio.gather(*(one(side, url) for side, url in urls))
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
            if dialect == "v1" and frame.get("type") != "message":
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


async def _serve(conn: Connection, urls: list[tuple[str, str]], dialect: str, client: str) -> None:
    state = _State(conn)
    tasks: set[asyncio.Task[None]] = set()
    members: list[Any] = []
    try:
        while True:
            command = await recv_conn(conn)
            if command[0] == "hello":
                conn.send(("hello", None))
            elif command[0] == "open":
                members, stats = await _open_all(urls, dialect, client, state, tasks)
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


def _worker(conn: Connection, urls: list[tuple[str, str]], dialect: str, client: str) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = len(urls) + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_serve(conn, urls, dialect, client))
