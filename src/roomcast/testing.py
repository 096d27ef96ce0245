"""Test helpers shipped for users, like ``channels.testing``.

from roomcast.testing import RoomCommunicator

async def test_lobby():
    alice = RoomCommunicator(application, "lobby")
    await alice.join()
    await alice.say("hi")
    assert (await alice.receive_next("message"))["message"] == "hi"  # the ack may come first
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

# channels.testing's __init__ imports ChannelsLiveServerTestCase, which needs daphne even
# though only the communicator is used here: install ``roomcast[testing]``.
from channels.testing import WebsocketCommunicator

from .protocol import PROTOCOL_V1


class _Frames(WebsocketCommunicator):
    """Reading roomcast's frames, for both test clients."""

    async def receive_event(self, type: str | None = None, timeout: float = 5) -> dict[str, Any]:
        """The next frame, decoded; with ``type``, fail unless it is of that type."""
        output = await self.receive_output(timeout)
        if output["type"] == "websocket.close":
            raise AssertionError(
                f"expected a {type or 'any'!r} event, but the server closed the socket "
                f"with code {output.get('code')} ({output.get('reason', '')!r})"
            )
        frame: dict[str, Any] = json.loads(output["text"])
        if type is not None and frame.get("type") != type:
            raise AssertionError(f"expected a {type!r} event, got {frame!r}")
        return frame

    async def receive_next(self, type: str, timeout: float = 5) -> dict[str, Any]:
        """The next frame of ``type``, skipping frames of other types (an ``ack`` may come
        before or after its message; a joining member gets the room's history first)."""
        while True:
            frame = await self.receive_event(None, timeout)
            if frame.get("type") == type:
                return frame

    async def receive_messages(self, count: int, timeout: float = 5) -> list[dict[str, Any]]:
        """The next ``count`` frames, each of which must be a message."""
        return [await self.receive_event("message", timeout) for _ in range(count)]

    async def receive_close(self, timeout: float = 5) -> int:
        """Wait for the server's close and return its code (frames before it are skipped)."""
        while True:
            output = await self.receive_output(timeout)
            if output["type"] == "websocket.close":
                return int(output.get("code", 1000))


class RoomCommunicator(_Frames):
    """A WebSocket test client for one room, speaking roomcast.v1 (or the seed's dialect)."""

    def __init__(
        self,
        application: Any,
        room: str,
        *,
        since: int | None = None,
        v1: bool = True,
        headers: list[tuple[bytes, bytes]] | None = None,
        token: str | None = None,
    ) -> None:
        """``token``: a connection token (``roomcast.auth.issue_token``), sent as the
        handshake's ``Authorization: Bearer`` header."""
        if token is not None:
            headers = [*(headers or []), (b"authorization", f"Bearer {token}".encode())]
        path = f"/ws/chat/{quote(room, safe='')}/"
        if since is not None:
            path += f"?since={since}"
        super().__init__(
            application, path, headers=headers, subprotocols=[PROTOCOL_V1] if v1 else None
        )
        self.room = room
        self.v1 = v1

    async def join(self, timeout: float = 5) -> dict[str, Any] | None:
        """Connect; for v1 return the ``joined`` event. Fails if the server refused."""
        connected, _ = await self.connect(timeout)
        if not connected:
            raise AssertionError(f"the server refused the connection to room {self.room!r}")
        return await self.receive_event("joined", timeout) if self.v1 else None

    async def say(self, text: str, *, client_id: str | None = None) -> None:
        """Send a chat message."""
        frame: dict[str, Any] = {"message": text}
        if client_id is not None:
            frame.update(type="message", client_id=client_id)
        await self.send_to(text_data=json.dumps(frame))


class MuxCommunicator(_Frames):
    """A WebSocket test client for the multi-room socket ``/ws/`` (roomcast.v1)."""

    def __init__(
        self,
        application: Any,
        *,
        since: int | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        token: str | None = None,
    ) -> None:
        """``since``: the user channel's position; ``token``: a connection token, sent
        as the handshake's ``Authorization: Bearer`` header."""
        if token is not None:
            headers = [*(headers or []), (b"authorization", f"Bearer {token}".encode())]
        path = "/ws/" if since is None else f"/ws/?since={since}"
        super().__init__(application, path, headers=headers, subprotocols=[PROTOCOL_V1])

    async def open(self, timeout: float = 5) -> dict[str, Any]:
        """Connect and return the ``connected`` event."""
        connected, _ = await self.connect(timeout)
        if not connected:
            raise AssertionError("the server refused the connection to /ws/")
        return await self.receive_event("connected", timeout)

    async def send_frame(self, **frame: Any) -> None:
        """Send one frame, given as keyword arguments (``type="subscribe", room="a"``)."""
        await self.send_to(text_data=json.dumps(frame))

    async def subscribe(
        self, room: str, *, since: int | None = None, timeout: float = 5
    ) -> dict[str, Any]:
        """Subscribe to ``room`` and return its ``joined`` event (fails on ``unsubscribed``)."""
        frame: dict[str, Any] = {"type": "subscribe", "room": room}
        if since is not None:
            frame["since"] = since
        await self.send_frame(**frame)
        while True:
            event = await self.receive_event(None, timeout)
            if event.get("room") != room:
                continue
            if event["type"] == "joined":
                return event
            if event["type"] in ("unsubscribed", "error"):
                raise AssertionError(f"subscribing to {room!r} was refused: {event!r}")

    async def say(self, room: str, text: str, *, client_id: str | None = None) -> None:
        """Send a chat message to ``room``."""
        frame: dict[str, Any] = {"type": "message", "room": room, "message": text}
        if client_id is not None:
            frame["client_id"] = client_id
        await self.send_frame(**frame)
