"""The two transports as one small interface: receive bytes, send bytes, close."""

from __future__ import annotations

from collections.abc import Awaitable

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from chatd.protocol import ErrorCode, Framing, ProtocolError

RECEIVE_SIZE = 65536
HELLO_RECEIVE_SIZE = 4100  # before Welcome: a Hello and its length prefix at most


class StreamTransport:
    """TCP (or TLS over TCP): a byte stream, frames carry a length prefix."""

    framing = Framing.STREAM
    coalesce = True  # several frames may go out in one write
    __slots__ = ("stream",)

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream

    def limit(self, max_frame: int) -> None:
        """(The stream's frames are limited by the protocol Connection.)"""

    def receive(self, max_bytes: int) -> Awaitable[bytes | bytearray]:
        """Bytes, b"" at the end; BrokenResourceError if the peer reset. Not a coroutine of
        its own: the stream's, so an idle connection holds no extra frame for it."""
        return self.stream.receive_some(max_bytes)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


class WebSocketTransport:
    """WebSocket: one binary message is one frame."""

    framing = Framing.MESSAGE
    coalesce = False
    __slots__ = ("ws",)

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws

    def limit(self, max_frame: int) -> None:
        """The largest message this connection takes from now on (small until Welcome).
        trio-websocket reads its per-connection limit at every message; it has no public
        setter for it."""
        self.ws._max_message_size = max_frame

    async def receive(self, max_bytes: int = RECEIVE_SIZE) -> bytes:
        try:
            msg = await self.ws.get_message()
        except ConnectionClosed:
            return b""
        if isinstance(msg, str):
            raise ProtocolError(ErrorCode.MALFORMED, "text messages are not frames: send binary")
        if not msg:
            raise ProtocolError(ErrorCode.MALFORMED, "empty frame")
        return msg

    async def send(self, data: bytes) -> None:
        try:
            await self.ws.send_message(data)
        except ConnectionClosed:
            raise trio.BrokenResourceError("websocket closed") from None

    async def aclose(self) -> None:
        with trio.move_on_after(1):
            await self.ws.aclose()
