"""Writing a frame serialised once straight to the sockets of uvicorn's websockets-sansio.

Layer: delivery (used by ``hub.Member``). A server frame is not masked (RFC 6455 5.1), so
a message's WebSocket frame is the same bytes for every member of a room. Going through
ASGI, each member's send builds a dict and a coroutine, encodes the text to UTF-8 and has
``websockets`` build and serialise a frame: about two thirds of the server's CPU per
delivery (py-spy, 1,000 members flat out). ``websockets``' own ``broadcast()`` serialises
once and writes the bytes to every connection's transport; this does the same for
sockets served by uvicorn's ``WebSocketsSansIOProtocol`` or a subclass that keeps its
``send`` (``roomcast serve``'s, ``server.lean_ws``).

A direct write happens only where the ASGI send would write at once: the handshake is
done, the connection is OPEN (no close sent or received), the transport is writable
(uvicorn's own flow-control flag) and no extension (permessage-deflate) was negotiated.
Anywhere else, or under another server or a wrapped ``send``, the member goes through the
ASGI send as before. The frame bytes go whole and in order into the same transport
uvicorn writes pings and closes to, so frames never interleave.
"""

from __future__ import annotations

from typing import Any

try:  # uvicorn and websockets come with roomcast[server]; without them, no direct path
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets.frames import Frame, Opcode
    from websockets.protocol import State
except ImportError:  # pragma: no cover
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]

__all__ = ["COALESCE_MAX_BYTES", "protocol_of", "try_write", "try_write_many"]

#: Most bytes of frames joined into one write by :func:`try_write_many`. Frames written
#: one call each let the transport's flow control (uvicorn's ``writable``, cleared past
#: its high-water mark) stop the next one; joined, a whole catch-up could land in the
#: transport's buffer at once. So: one call per this many bytes, flow control checked
#: before each, which keeps the overshoot past the high-water mark within one call.
COALESCE_MAX_BYTES = 64 * 1024


def protocol_of(send: Any) -> Any:
    """The uvicorn protocol behind an ASGI ``send``, if frames can be written to it
    directly; else None."""
    protocol = getattr(send, "__self__", None)
    if (
        WebSocketsSansIOProtocol is None
        or not isinstance(protocol, WebSocketsSansIOProtocol)
        # the stock send(), or one that says it writes frames as the stock one does
        # (server.lean_ws's): a subclass that changes it may do more than write a frame
        or not _writes_like_stock(getattr(send, "__func__", None))
        or protocol.conn.extensions  # permessage-deflate: each socket compresses its own
    ):
        return None
    return protocol


def _writes_like_stock(func: Any) -> bool:
    return func is WebSocketsSansIOProtocol.send or getattr(func, "direct_write_safe", False)


#: Frames written directly (a test reads it to see that the direct path is taken), and
#: the write calls of :func:`try_write_many` (each carrying one frame or more).
written = 0
joined_writes = 0

# The last frame serialised, with its text: the hub hands the same str to every member of
# a room, so one message is encoded once however many members it reaches. One tuple,
# replaced whole, so that hubs on loops in other threads never pair a text with another's
# frame.
_last: tuple[str, bytes] = ("", b"\x81\x00")


def _takes_writes(protocol: Any) -> bool:
    """Whether a frame written to ``protocol``'s transport now goes out as the ASGI send
    would write it: the socket is open, no close sent or received, and writable."""
    return (
        not protocol.disconnected
        and protocol.writable.is_set()
        and protocol.conn.state is State.OPEN
    )


def _encoded(text: str, cache: dict[str, bytes] | None) -> bytes:
    """``text`` as an unmasked text frame: from ``cache`` (the frames of one pass of the
    loop, see ``connection._Flusher``) or the last one serialised, else serialised now."""
    global _last
    if cache is not None:
        data = cache.get(text)
        if data is None:
            data = cache[text] = _serialized(text)
        return data
    last = _last
    if last[0] is not text:
        last = _last = (text, _serialized(text))
    return last[1]


def _serialized(text: str) -> bytes:
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False)


def try_write(protocol: Any, text: str, cache: dict[str, bytes] | None = None) -> bool:
    """Write ``text`` as one text frame if the socket takes it now; False if the caller
    must use the ASGI send instead (and learn from it why, e.g. the socket is gone)."""
    global written
    if not _takes_writes(protocol):
        return False
    protocol.transport.write(_encoded(text, cache))
    written += 1
    return True


def try_write_many(protocol: Any, texts: list[str], cache: dict[str, bytes] | None = None) -> int:
    """Write the first of ``texts`` as text frames in one write call, as many as fit in
    :data:`COALESCE_MAX_BYTES` (at least one), if the socket takes them now; return how
    many were written (0: use the ASGI send, as for :func:`try_write`).

    For frames waiting on one socket (a join's catch-up, the frames one pass of the loop
    gave it, a buffer that built up): one system call instead of one each. A 50-message
    catch-up took 50 ``send`` calls. ``cache``: frames serialised once for every socket
    (see :func:`_encoded`); without it, each text is serialised here.
    """
    global written, joined_writes
    if not _takes_writes(protocol):
        return 0
    parts: list[bytes] = []
    size = 0
    for text in texts:
        data = _serialized(text) if cache is None else _encoded(text, cache)
        parts.append(data)
        size += len(data)
        if size >= COALESCE_MAX_BYTES:
            break
    protocol.transport.write(b"".join(parts))
    written += len(parts)
    joined_writes += 1
    return len(parts)
