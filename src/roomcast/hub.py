"""The per-process hub: one channel-layer subscription per room per process, local fan-out.

Layer: fan-out (delivery). Imports asyncio, ``connection`` and ``protocol``; never
models or services: the database reaches the hub only through the :class:`Loader` the
services layer hands it, and the consumer only through :class:`Member`. Presence is a
``roomcast.presence.Tracker`` the services layer sets as ``hub.presence``.

How a message travels. The publisher stores it (seq N), encodes its frame once and sends
one layer message to the room's group. In each process that has members in the room, the
hub is in that group with one channel of its own for the room (so the seed's raw
``group_send`` events, which name no room, still arrive somewhere that knows the room).
The hub checks N against the room's position: a duplicate is dropped, a gap (the layer
lost something: Redis restarted, a layer queue overflowed) is filled from the database
before anything newer is delivered, and the frame is appended to each member's buffer.

Members join in two steps. A joining member is registered first and *holds* live frames
while the services layer reads its catch-up (history, or the replay after ``since=``)
from the database; then it sends the catch-up, then the held frames it has not already
been sent. Because the room's stream position is read after the hub joined the group,
and the member's read comes after that, the two together cover every seq with no gap
and no duplicate (docs/design.md walks through the argument).

Members are subscriptions (``roomcast.connection``): a member is one socket's place in
one room, and writes into its connection's one bounded buffer, whose overflow policy
(1013, reconnect with ``since``) is written there. The hub's own bounds:

* The frames a member holds while joining count against its connection's frame bound.
* The layer's own queues are bounded by the layer's ``capacity``; what they drop shows up
  here as a gap and is read back from the database.

The control group. Besides its rooms, every hub joins :data:`CONTROL_GROUP` once, with
one channel of its own, whether or not it has members anywhere: messages that concern
sockets wherever they are (re-check access in a room or for a user, close a user's
sockets) go there, one layer message per change for the whole cluster. The hub keeps an
index of its members by user for them, and hands each control message to the handler
registered for its type (:func:`register_control`; ``roomcast.revocation`` registers
the access ones): the hub knows sockets, not rights.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from . import metrics
from .connection import CatchUp, Connection, Member, Send
from .protocol import CloseCode
from .protocol.codec import close_reason, encode, is_v1_only, message_event
from .protocol.room_names import is_user_room

logger = logging.getLogger(__name__)

__all__ = ["CONTROL_GROUP", "NODE", "CatchUp", "Connection", "Hub", "Member", "Send"]

#: This process's name among the processes of a cluster (random, per start): it tells
#: apart the sender of an ephemeral event (typing) and the owner of presence entries.
NODE = secrets.token_hex(6)

#: Close codes below 3000 that a server may send (RFC 6455 7.4.1; 1005, 1006 and 1015
#: are never sent on the wire).
_SENDABLE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)

#: Messages read from the database per query while filling a gap.
FILL_BATCH_SIZE = 500
#: Seconds between re-adding the hub's channels to their groups: layers expire group
#: membership (channels' ``group_expiry``, a day by default), and the in-memory layer
#: drops a channel from its groups when one of its messages expires.
GROUP_REFRESH_SECS = 300.0
#: Most rooms kept subscribed with no member (see ``linger_secs``); past it, the room
#: that has been empty longest is unsubscribed at once. A lingering room costs one layer
#: channel and group membership, a receive task and its recent frames (at most
#: ``recent_count``): about 30 KB with 50 frames of 500 bytes.
LINGER_MAX_ROOMS = 1000
#: Rooms per query when the hub checks its rooms' positions against the database.
POSITION_CHECK_BATCH = 500
#: Longest wait between retries when the layer or the database fails.
MAX_RETRY_SECS = 5.0
#: The group every hub joins once, for messages about sockets in any room (revocation).
#: Not a room's group: those all start with ``fanout.GROUP_PREFIX`` ("chat_").
CONTROL_GROUP = "roomcast.control"

#: A control message's handler: called on the hub's loop with the hub and the message.
ControlHandler = Callable[["Hub", dict[str, Any]], None]
_control_handlers: dict[str, ControlHandler] = {}


def register_control(kind: str, handler: ControlHandler) -> None:
    """Hand control messages of type ``kind`` (dotted, e.g. ``"access.recheck"``) to
    ``handler(hub, message)`` in every hub of the process. The handler must not block:
    work that waits goes in a task (:meth:`Hub.start_task`)."""
    _control_handlers[kind.replace(".", "_")] = handler


class Loader(Protocol):
    """Database reads the hub needs; implemented by ``services``."""

    async def latest(self, room: str, count: int) -> tuple[int, list[tuple[int, str]]]:
        """The room's last seq (0 if none) and its latest ``count`` frames, ascending."""
        ...

    async def last_seqs(self, rooms: list[str]) -> dict[str, int]:
        """``{room: last seq}`` for those of ``rooms`` that exist."""
        ...

    async def frames_after(
        self, room: str, after: int, upto: int, limit: int
    ) -> list[tuple[int, str]]:
        """Encoded frames of the room's messages with ``after < seq <= upto``, ascending."""
        ...


class _Room:
    """The hub's state for one room with local members."""

    __slots__ = (
        "behind",
        "channel",
        "early",
        "filling",
        "group",
        "last_seq",
        "lock",
        "members",
        "name",
        "ready",
        "receiver",
        "recent",
        "target",
    )

    def __init__(self, name: str, group: str, recent_count: int) -> None:
        self.name = name
        # The room's latest frames, contiguous up to last_seq: most joins and short
        # reconnects are answered from here, without a database read (Centrifugo keeps
        # a room's recent history for the same reason).
        self.recent: deque[tuple[int, str]] = deque(maxlen=recent_count)
        self.group = group
        self.members: dict[Member, None] = {}  # insertion-ordered set
        self.channel: str | None = None
        self.receiver: asyncio.Task[None] | None = None
        self.ready = False  # subscribed and last_seq read from the database
        self.early: list[dict[str, Any]] = []  # layer messages that came before ready
        self.last_seq = 0  # the room stream's position in this process
        self.filling = False
        self.target = 0  # while filling: highest seq seen on the layer
        self.behind = 0  # the database's last_seq at the last position check, if ahead
        self.lock = asyncio.Lock()


class Hub:
    """Delivery for every room with members in this process (one hub per event loop)."""

    def __init__(
        self,
        layer: Any,
        loader: Loader,
        group_name: Callable[[str], str],
        *,
        position_check_secs: float = 5.0,
        recent_count: int = 50,
        linger_secs: float = 0.0,
    ) -> None:
        self.layer = layer
        self.recent_count = recent_count
        # How long a room stays subscribed, its recent frames kept current, after its
        # last member left (ROOM_LINGER_SECS): a socket that comes back within it (a
        # page load in a multi-page site, a reconnect, a user's own stream at every
        # connect) joins without a layer subscription or a database read. Room name ->
        # the timer that ends it, oldest first (at most LINGER_MAX_ROOMS).
        self.linger_secs = linger_secs
        self._lingering: dict[str, asyncio.TimerHandle] = {}
        self.loader = loader
        self._group_name = group_name
        self._rooms: dict[str, _Room] = {}
        # Members by user id (guests are not indexed), for messages about a user.
        self._users: dict[int, list[Member]] = {}
        # Control messages about access seen by this hub (see Member.rights_epoch).
        self.access_epoch = 0
        self._control_channel: str | None = None
        # Set once the hub is in the control group (revocations reach it from then on).
        self.control_joined = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        # Presence (roomcast.presence.Tracker, set by services): told of each member
        # that starts in a room and each that leaves, and handed the rooms' presence.*
        # layer messages. None: no presence (tests of the hub alone).
        self.presence: Any = None
        self._handlers: dict[str, Callable[[_Room, dict[str, Any]], None]] = {
            "room_message": self._on_message,
            "room_event": self._on_event,
            "room_typing": self._on_typing,
            "room_disconnect": self._on_disconnect,
            # The seed's "push from anywhere" events, sent straight to the room's group.
            "chat_system_message": self._on_seed_system_message,
            "chat_message": self._on_seed_message,
            "chat_force_disconnect": self._on_seed_force_disconnect,
        }
        self._spawn(self._refresh_groups())
        self._spawn(self._check_positions(position_check_secs))
        self._spawn(self._receive_control())

    # -- membership ----------------------------------------------------------------------

    async def join(self, member: Member, catch_up: Callable[[], Awaitable[CatchUp]]) -> None:
        """Add ``member`` to its room and start it with the catch-up ``catch_up()`` returns."""
        room = self._rooms.get(member.room)
        if room is None:
            room = self._rooms[member.room] = _Room(
                member.room, self._group_name(member.room), self.recent_count
            )
        room.members[member] = None  # from here on it holds live frames
        if (timer := self._lingering.pop(member.room, None)) is not None:
            timer.cancel()
        metrics.SUBSCRIPTIONS.inc()
        if member.user_id is not None:
            self._users.setdefault(member.user_id, []).append(member)
        if member.rights_epoch != self.access_epoch:
            # Access changed somewhere since this member's rights were checked, before
            # it was registered here to be found: check it again (roomcast.revocation).
            recheck = {"type": "access.recheck", "room": member.room, "user_id": member.user_id}
            self._run_control("access_recheck", recheck)
        try:
            await self._ensure_subscribed(room)
            result = await catch_up()
        except BaseException:
            self.leave(member)
            raise
        member.start(result)
        if self.presence is not None and not member.closed and not is_user_room(member.room):
            member.present = True
            self.presence.added(member)  # it sends the member's first presence frame

    def leave(self, member: Member) -> None:
        """Remove ``member``; the last member out unsubscribes the process from the room."""
        room = self._rooms.get(member.room)
        if room is None or room.members.pop(member, False) is False:
            return
        metrics.SUBSCRIPTIONS.dec()
        if member.present:
            member.present = False
            self.presence.removed(member)
        if member.user_id is not None and (same := self._users.get(member.user_id)):
            try:
                same.remove(member)
            except ValueError:
                pass
            if not same:
                del self._users[member.user_id]
        if not room.members:
            self._linger(room)

    def _linger(self, room: _Room) -> None:
        """Keep the room, now empty, subscribed for ``linger_secs``; then unsubscribe."""
        if self.linger_secs <= 0 or not room.ready:
            self._spawn(self._unsubscribe_if_empty(room))
            return
        # (Not lingering already: the member that just left took it out on joining.)
        loop = asyncio.get_running_loop()
        self._lingering[room.name] = loop.call_later(
            self.linger_secs, self._linger_over, room, context=contextvars.Context()
        )
        while len(self._lingering) > LINGER_MAX_ROOMS:
            oldest = next(iter(self._lingering))
            self._lingering.pop(oldest).cancel()
            if (other := self._rooms.get(oldest)) is not None:
                self._spawn(self._unsubscribe_if_empty(other))

    def _linger_over(self, room: _Room) -> None:
        self._lingering.pop(room.name, None)
        self._spawn(self._unsubscribe_if_empty(room))

    def dispatch(self, room: str, message: dict[str, Any]) -> None:
        """Handle a layer message for ``room`` now, as if it had come through the layer.

        For the in-memory layer, where the layer is this process: see ``fanout.publish``.
        A room still subscribing keeps it for when it is ready, like a layer message.
        """
        state = self._rooms.get(room)
        if state is None:
            return  # no local members: nobody to deliver to
        if state.ready:
            self._handle(state, message)
        else:
            state.early.append(message)

    def recent(
        self, room: str, since: int | None, *, replay_limit: int
    ) -> tuple[int, list[tuple[int, str]], bool | None] | None:
        """A joining member's catch-up from the room's recent frames, if they hold it.

        Returns ``(last_seq, frames, recovered)`` as ``services.read_catch_up`` would, or
        None when only the database can answer (the room is not subscribed, the history
        asked for is older than what is kept, or ``since`` is ahead of this process,
        e.g. a message still on its way here that the client saw from another process).
        Call it between :meth:`join`'s subscription and the member's start, with no
        await in between, so the frames and the live stream meet at ``last_seq``.
        """
        state = self._rooms.get(room)
        if state is None or not state.ready:
            return None
        last, recent = state.last_seq, state.recent
        if recent and recent[-1][0] != last:
            return None
        if since is None:
            wanted = min(self.recent_count, last)
            if len(recent) < wanted:
                return None
            return last, list(recent)[len(recent) - wanted :], None
        if since > last or last - since > replay_limit:
            return None
        first = recent[0][0] if recent else last + 1
        if since + 1 < first:
            return None
        return last, [item for item in recent if item[0] > since], True

    def members(self, room: str) -> list[Member]:
        """The local members of ``room``."""
        state = self._rooms.get(room)
        return list(state.members) if state else []

    def user_members(self, user_id: int) -> list[Member]:
        """The local members of user ``user_id``, in every room."""
        return list(self._users.get(user_id, ()))

    # -- control messages ------------------------------------------------------------------

    def control(self, message: dict[str, Any]) -> None:
        """Handle a control message now, as if it had come through the control group."""
        kind = str(message.get("type", "")).replace(".", "_")
        if kind.startswith("access_"):
            self.access_epoch += 1
        self._run_control(kind, message)

    def _run_control(self, kind: str, message: dict[str, Any]) -> None:
        handler = _control_handlers.get(kind)
        if handler is None:
            logger.warning("Ignoring control message of unknown type %r", kind)
            return
        try:
            handler(self, message)
        except Exception:
            logger.exception("Handling control message %r failed", message)

    def start_task(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        """Run ``coro`` as a task of the hub (cancelled by :meth:`close`)."""
        return self._spawn(coro)

    async def _receive_control(self) -> None:
        delay = 0.1
        while True:
            try:
                # The rooms' prefix, not one of its own: channels_redis' core layer
                # receives a process's channels of one prefix together, and a second
                # prefix's receive holds its lock while it waits, so room messages
                # stalled behind an idle control channel (found by the presence tests).
                channel = await self.layer.new_channel("roomcast.")
                await self.layer.group_add(CONTROL_GROUP, channel)
                break
            except Exception:
                logger.exception("Could not join the control group; retrying")
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_SECS)
        self._control_channel = channel
        self.control_joined.set()
        delay = 0.1
        while self._control_channel == channel:  # until close()
            try:
                message = await self.layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Channel layer receive failed for the control group; retrying")
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_SECS)
                continue
            delay = 0.1
            self.control(message)

    async def _ensure_subscribed(self, room: _Room) -> None:
        if room.ready:
            return
        async with room.lock:
            if room.ready:
                return
            room.early = []
            room.channel = await self.layer.new_channel("roomcast.")
            room.receiver = self._spawn(self._receive(room, room.channel))
            await self.layer.group_add(room.group, room.channel)
            # Read after joining the group: every seq up to this is in the database, every
            # later one will come through the channel (or be filled as a gap).
            room.last_seq, frames = await self.loader.latest(room.name, self.recent_count)
            room.recent.clear()
            room.recent.extend(frames)
            room.ready = True
            early, room.early = room.early, []
            for message in early:
                self._handle(room, message)

    async def _unsubscribe_if_empty(self, room: _Room) -> None:
        async with room.lock:
            if room.members or not room.ready:
                return
            room.ready = False
            channel, receiver = room.channel, room.receiver
            room.channel = room.receiver = None
            try:
                await self.layer.group_discard(room.group, channel)
            except Exception:
                logger.exception("Could not leave group %s", room.group)
            if receiver is not None:
                receiver.cancel()  # the pub/sub layer unsubscribes the channel on cancel
            if not room.members and self._rooms.get(room.name) is room:
                del self._rooms[room.name]

    # -- receiving -------------------------------------------------------------------------

    async def _receive(self, room: _Room, channel: str) -> None:
        delay = 0.1
        while True:
            try:
                message = await self.layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Channel layer receive failed for room %r; retrying", room.name)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_SECS)
                continue
            delay = 0.1
            if room.channel != channel:
                return  # unsubscribed while this message was on its way
            if room.ready:
                self._handle(room, message)
            else:
                room.early.append(message)

    def _handle(self, room: _Room, message: dict[str, Any]) -> None:
        kind = str(message.get("type", "")).replace(".", "_")
        handler = self._handlers.get(kind)
        if handler is None and kind.startswith("presence_") and self.presence is not None:
            try:
                self.presence.handle(room.name, message)
            except Exception:
                logger.exception("Presence message for room %r failed: %r", room.name, message)
            return
        if handler is None:
            logger.warning("Ignoring layer message of unknown type %r for room %r", kind, room.name)
            return
        try:
            handler(room, message)
        except (KeyError, TypeError, ValueError):
            logger.exception("Malformed layer message for room %r: %r", room.name, message)

    def _on_message(self, room: _Room, message: dict[str, Any]) -> None:
        seq = int(message["seq"])
        if room.filling:
            room.target = max(room.target, seq)
            return
        if seq <= room.last_seq:
            return  # a duplicate, or already filled from the database
        if seq > room.last_seq + 1:
            self._start_fill(room, seq)
            return
        room.last_seq = seq
        frame = message["frame"]
        room.recent.append((seq, frame))
        if message.get("v1_only"):
            # A stream event (an edit, a delete): seed-dialect sockets show every frame's
            # "message" as a new line, so they get the final state on their next join.
            # Each changed message's final frame takes the old one's place in the recent
            # frames: the target, and (for a delete) the earlier edits of it, emptied.
            changed = list(message.get("also_replace", ()))
            if replace := message.get("replace"):
                changed.append(replace)
            for target, final in changed:
                _replace_recent(room.recent, int(target), str(final))
            metrics.DELIVERIES.inc(len(room.members))  # seed members skip it: an upper bound
            for member in room.members:
                if member.connection.v1:
                    member.deliver(seq, frame)
            return
        metrics.DELIVERIES.inc(len(room.members))  # once per message, not per member
        for member in room.members:
            member.deliver(seq, frame)

    def _on_event(self, room: _Room, message: dict[str, Any]) -> None:
        frame = message["frame"]
        for member in room.members:
            member.deliver(None, frame)

    def _on_typing(self, room: _Room, message: dict[str, Any]) -> None:
        """A typing frame: to the /ws/ members of the room, never back to its sender (the
        same user on any socket, or, for a guest, the same socket)."""
        frame = message["frame"]
        user_id, origin = message.get("user_id"), message.get("origin")
        for member in room.members:
            if not member.live_state:
                continue
            connection = member.connection
            if user_id is not None and connection.user_id == user_id:
                continue
            if origin is not None and origin == connection_origin(connection):
                continue
            member.deliver(None, frame)

    def _on_disconnect(self, room: _Room, message: dict[str, Any]) -> None:
        code = int(message.get("code", CloseCode.DISCONNECTED))
        if code not in _SENDABLE_CODES and not 3000 <= code <= 4999:
            # A layer message from code of the project's own (a seed-style group_send)
            # may carry any number: one a server may not send (RFC 6455 7.4) becomes 4000.
            code = CloseCode.DISCONNECTED
        reason = close_reason(str(message.get("reason", "")))
        user_id = message.get("user_id")
        for member in list(room.members):
            if user_id is None or member.user_id == user_id:
                member.close(code, reason)

    def _on_seed_system_message(self, room: _Room, message: dict[str, Any]) -> None:
        self._seed_frame(room, str(message["text"]), "system")

    def _on_seed_message(self, room: _Room, message: dict[str, Any]) -> None:
        self._seed_frame(room, str(message["message"]), "chat")

    def _seed_frame(self, room: _Room, text: str, kind: str) -> None:
        # Raw group_send events bypass the stored stream: delivered live, not stored, no
        # seq. roomcast.push.send_to_room is the stored road.
        ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        event = message_event(room=room.name, text=text, kind=kind, user=None, ts=ts)  # type: ignore[arg-type]
        self._on_event(room, {"frame": encode(event)})

    def _on_seed_force_disconnect(self, room: _Room, message: dict[str, Any]) -> None:
        self._on_disconnect(
            room, {"code": CloseCode.DISCONNECTED, "reason": "disconnected by server"}
        )

    def _start_fill(self, room: _Room, target: int) -> None:
        metrics.GAP_FILLS.inc()
        room.filling = True
        room.target = target
        self._spawn(self._fill(room))

    async def _fill(self, room: _Room) -> None:
        """Deliver seqs ``last_seq+1 .. target`` from the database, then resume live."""
        delay = 0.1
        try:
            while room.last_seq < room.target and room.members:
                try:
                    rows = await self.loader.frames_after(
                        room.name, room.last_seq, room.target, FILL_BATCH_SIZE
                    )
                except Exception:
                    logger.exception("Filling a gap in room %r failed; retrying", room.name)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_RETRY_SECS)
                    continue
                if not rows:
                    logger.warning(
                        "Room %r: seqs %d..%d are not in the database; skipping them",
                        room.name,
                        room.last_seq + 1,
                        room.target,
                    )
                    room.last_seq = room.target
                    room.recent.clear()  # no longer contiguous: joins read the database
                    break
                room.recent.extend(rows)
                for seq, frame in rows:
                    room.last_seq = seq
                    seed_skips = is_v1_only(frame)
                    metrics.DELIVERIES.inc(len(room.members))
                    for member in room.members:
                        if not (seed_skips and not member.connection.v1):
                            member.deliver(seq, frame)
            if room.last_seq < room.target and not room.members:
                # A lingering room, nobody to deliver to: skip the gap instead of reading
                # it. Its recent frames are no longer contiguous, so joins read the
                # database until they are again.
                room.last_seq = room.target
                room.recent.clear()
        finally:
            room.filling = False

    async def _check_positions(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.check_positions()

    async def check_positions(self) -> None:
        """Fill the rooms whose stored stream is ahead of this process (every POSITION_CHECK_SECS).

        Pub/sub is at-most-once: a publish made while this process's subscription was down
        (Redis restarting) is gone, and if no later message arrives nothing exposes the
        gap. Like Centrifugo's periodic position check, compare each room with the
        database, one query per POSITION_CHECK_BATCH rooms, and fill what is missing.

        A message stored but still on its way through the layer is not missing: only seqs
        that were already stored at the previous check and have still not arrived are
        filled. So a lost message arrives between one and two intervals late, and a busy
        room is not read back from the database for nothing.
        """
        names = [name for name, room in self._rooms.items() if room.ready]
        for start in range(0, len(names), POSITION_CHECK_BATCH):
            batch = names[start : start + POSITION_CHECK_BATCH]
            try:
                stored = await self.loader.last_seqs(batch)
            except Exception:
                logger.exception("Checking room positions failed; retrying next time")
                break
            for name, last_seq in stored.items():
                room = self._rooms.get(name)
                if room is None or not room.ready:
                    continue  # (lingering rooms too: their recent frames answer joins)
                overdue, room.behind = room.behind, last_seq
                if last_seq <= room.last_seq:
                    room.behind = 0
                elif room.filling:
                    room.target = max(room.target, last_seq)
                elif overdue > room.last_seq:
                    logger.warning(
                        "Room %r: seqs %d..%d never arrived on the channel layer; "
                        "reading them from the database",
                        name,
                        room.last_seq + 1,
                        overdue,
                    )
                    self._start_fill(room, last_seq)
                    # And join the room's group again: a Redis that restarted empty lost
                    # the core layer's group members, and this process would hear of the
                    # room only from these checks until the next refresh (found by the
                    # shard tests, tests/e2e/test_shards_core.py). group_add is idempotent.
                    self._spawn(self._rejoin_group(room))

    async def _rejoin_group(self, room: _Room) -> None:
        """Add the room's channel to its group again (idempotent); a failure is logged."""
        channel = room.channel
        if not room.ready or channel is None:
            return
        try:
            await self.layer.group_add(room.group, channel)
        except Exception:
            logger.exception("Could not refresh group %s", room.group)

    async def _refresh_groups(self) -> None:
        while True:
            await asyncio.sleep(GROUP_REFRESH_SECS)
            if self._control_channel is not None:
                try:
                    await self.layer.group_add(CONTROL_GROUP, self._control_channel)
                except Exception:
                    logger.exception("Could not refresh group %s", CONTROL_GROUP)
            for room in list(self._rooms.values()):
                await self._rejoin_group(room)

    # -- lifecycle -------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        # In a context of its own: a task copies the context it is started from, which
        # is a socket's (the first member's join starts the room's receiver), and would
        # keep that socket's context variables (socket_log's session, and with it the
        # consumer) for the life of the room, and tag the hub's log records with it.
        if asyncio.iscoroutine(coro):
            task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
        else:
            task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Leave every group and stop the hub's tasks (server shutdown, tests)."""
        if self._control_channel is not None:
            try:
                await self.layer.group_discard(CONTROL_GROUP, self._control_channel)
            except Exception:
                logger.exception("Could not leave group %s", CONTROL_GROUP)
            self._control_channel = None
            self.control_joined.clear()
        for room in list(self._rooms.values()):
            if room.ready and room.channel:
                try:
                    await self.layer.group_discard(room.group, room.channel)
                except Exception:
                    logger.exception("Could not leave group %s", room.group)
        self._rooms.clear()
        self._users.clear()
        for timer in self._lingering.values():
            timer.cancel()
        self._lingering.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def connection_origin(connection: Connection) -> str:
    """A name for ``connection`` unique in the cluster (this process's NODE and the
    object's id), carried by its ephemeral events so they skip it on every process."""
    return f"{NODE}:{id(connection):x}"


def _replace_recent(recent: deque[tuple[int, str]], seq: int, frame: str) -> None:
    """Put ``frame`` in place of message ``seq``'s in a room's recent frames (contiguous
    and ascending), if they still hold it: an edited or deleted message's final state."""
    if recent and recent[0][0] <= seq <= recent[-1][0]:
        index = seq - recent[0][0]
        if recent[index][0] == seq:
            recent[index] = (seq, frame)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def get_hub(factory: Callable[[], Hub]) -> Hub:
    """The hub of the running event loop, made by ``factory()`` on first use."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = factory()
    return hub


def running_hub() -> Hub | None:
    """The hub of the running event loop, if one was made."""
    return _hubs.get(asyncio.get_running_loop())
