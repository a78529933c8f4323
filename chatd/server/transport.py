"""The two transports as one small interface: receive bytes, send bytes, close."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Generator
from typing import Any, cast

import trio
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

from chatd.protocol import ErrorCode, Framing, ProtocolError
from chatd.protocol.limits import MAX_HELLO_SIZE

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

    def send_nowait(self, data: bytes) -> int:
        """Write what the socket takes now, without waiting: the number of bytes written (0
        when it would block, or for TLS, which only `send` writes). The caller makes sure
        no `send` is running. ClosedResourceError / BrokenResourceError as `send` would."""
        stream = self.stream
        if type(stream) is not trio.SocketStream:
            return 0
        fd = stream.socket.fileno()
        if fd == -1:
            raise trio.ClosedResourceError("socket was already closed")
        try:
            return os.write(fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


def between_messages(ws: WSConnection) -> bool:
    """Whether wsproto's connection holds nothing now: open, no event, no byte of a frame, no
    message begun; a new one would do the same from here. (Its internals, looked up
    defensively: should they change, the answer is no and the connection is kept.)"""
    proto = getattr(ws, "_proto", None)
    frames = getattr(proto, "_frame_decoder", None)
    message = getattr(proto, "_message_decoder", None)
    try:
        return (ws.state is ConnectionState.OPEN and not ws._events
                and frames is not None and not len(frames.buffer) and frames.header is None
                and message is not None and message.opcode is None)
    except (AttributeError, TypeError):
        return False


# Builds the frames sent (unmasked binary messages: no state of a connection's in them)
FRAMES = WSConnection(ConnectionType.SERVER)


class WebSocketTransport(trio.abc.AsyncResource):
    """WebSocket after its handshake (chatd.server.websocket.handshake): one binary message is
    one frame. wsproto parses and builds the WebSocket frames; this drives it from the
    session's own pump: no task, channel or buffer per connection, a message's bytes are
    gathered only while it is being read. Between messages wsproto's connection object is
    let go (ws is None: open, nothing pending) and made again at the next read, so an idle
    connection holds none of it. Pings are answered, a close is answered."""

    framing = Framing.MESSAGE
    coalesce = False
    __slots__ = ("stream", "ws", "max_message", "close_code", "_sending", "_turn")

    def __init__(self, stream: trio.abc.Stream, ws: WSConnection | None = None) -> None:
        self.stream = stream
        self.ws = ws
        self.max_message = MAX_HELLO_SIZE
        self.close_code: int = CloseReason.NORMAL_CLOSURE  # sent by aclose
        self._sending = False
        self._turn: trio.Event | None = None  # exists while a send waits for another

    def limit(self, max_frame: int) -> None:
        """The largest message this connection takes from now on (small until Welcome)."""
        self.max_message = max_frame

    def receive(self, max_bytes: int = RECEIVE_SIZE) -> Awaitable[bytes | bytearray]:
        """The next binary message; b"" once the connection is closed (the peer's close is
        answered). ProtocolError for a text, empty or oversized message. (Not a coroutine:
        see Receiving.)"""
        return Receiving(self, max_bytes)

    def send_nowait(self, data: bytes) -> int:
        """(Messages are written by `send` only: see StreamTransport.send_nowait.)"""
        return 0

    def _feed(self, data: bytes | bytearray) -> WSConnection:
        """Bytes read (b"": the end) to wsproto's connection, made again if it was let go."""
        ws = self.ws
        if ws is None:
            ws = self.ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(cast(bytes, data) or None)
        return ws

    async def send(self, data: bytes) -> None:
        try:
            frame = (self.ws or FRAMES).send(BytesMessage(data))
        except LocalProtocolError:
            raise trio.BrokenResourceError("websocket closed") from None
        await self._send(frame)

    async def _send(self, data: bytes) -> None:
        """The writer (frames) and the reader (pongs) take turns on the stream."""
        while self._sending:
            if self._turn is None:
                self._turn = trio.Event()
            await self._turn.wait()
        self._sending = True
        try:
            await self.stream.send_all(data)
        finally:
            self._sending = False
            if self._turn is not None:
                self._turn.set()
                self._turn = None

    async def aclose(self) -> None:
        """Send a close (if none was) and wait a moment for the peer's, then close."""
        ws = self.ws
        if ws is None:
            ws = self.ws = WSConnection(ConnectionType.SERVER)
        with trio.move_on_after(1):
            try:
                if ws.state is ConnectionState.OPEN:
                    await self._send(ws.send(CloseConnection(self.close_code)))
                while ws.state is ConnectionState.LOCAL_CLOSING:  # what comes is dropped
                    ws.receive_data(cast(bytes, await self.stream.receive_some(RECEIVE_SIZE))
                                    or None)
                    for _ in ws.events():
                        pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError,
                    LocalProtocolError):
                pass
        await trio.aclose_forcefully(self.stream)


class Receiving:
    """The awaitable of WebSocketTransport.receive, driven by hand: it runs the stream's
    receive_some (or the send of a pong or a close) and parses what came between their
    steps. An idle connection thus waits in the stream's coroutine and this small object,
    not in a coroutine frame of the transport's own (profiled: 272 bytes a connection)."""

    __slots__ = ("transport", "max_bytes", "inner", "message")

    def __init__(self, transport: WebSocketTransport, max_bytes: int) -> None:
        self.transport = transport
        self.max_bytes = max_bytes
        self.inner: Any = None  # the coroutine being run: a read, or a send
        self.message: bytearray | None = None  # a message in several frames or reads

    def __await__(self) -> Generator[Any, Any, bytes | bytearray]:
        return self

    def __iter__(self) -> Receiving:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def send(self, value: Any) -> Any:
        if self.inner is None:
            self._next(None)
            value = None
        return self._resume(self.inner.send, value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        exc = typ if val is None else val if tb is None else val.with_traceback(tb)
        if self.inner is None:
            raise exc
        return self._resume(self.inner.throw, exc)

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()

    def _resume(self, step: Any, arg: Any) -> Any:
        while True:
            try:
                return step(arg)
            except StopIteration as done:
                self._next(done.value)  # sets the next coroutine, or raises StopIteration
            step, arg = self.inner.send, None

    def _next(self, read: bytes | bytearray | None) -> None:
        """Parse what is there (after `read`: the bytes a read returned, None after a send);
        then run a send (a pong, a close) or a read next. StopIteration(message) when a
        message is whole, StopIteration(b"") once closed."""
        t = self.transport
        ws = t.ws if read is None else t._feed(read)
        if ws is not None:
            if ws.state is ConnectionState.CLOSED:
                raise StopIteration(b"")
            for event in ws.events():
                if isinstance(event, BytesMessage):
                    message = self.message
                    if message is None:  # (a message in one frame and one read: no copy)
                        data = event.data
                        if not event.message_finished:
                            self.message = data = bytearray(data)
                    else:
                        message += event.data
                        data = message
                    if len(data) > t.max_message:
                        t.close_code = CloseReason.MESSAGE_TOO_BIG
                        raise ProtocolError(ErrorCode.TOO_LARGE, f"message of more than"
                                            f" {t.max_message} bytes")
                    if event.message_finished:
                        if not data:
                            raise ProtocolError(ErrorCode.MALFORMED, "empty frame")
                        self.message = None
                        if between_messages(ws):
                            t.ws = None
                        raise StopIteration(data)
                elif isinstance(event, TextMessage):
                    t.close_code = CloseReason.UNSUPPORTED_DATA
                    raise ProtocolError(ErrorCode.MALFORMED,
                                        "text messages are not frames: send binary")
                elif isinstance(event, Ping):
                    self.inner = t._send(ws.send(event.response()))
                    return
                elif isinstance(event, CloseConnection):
                    if ws.state is ConnectionState.REMOTE_CLOSING:
                        self.inner = t._send(ws.send(event.response()))  # then CLOSED
                        return
                    if ws.state is ConnectionState.OPEN:  # a frame wsproto could not parse
                        t.close_code = event.code
                    raise StopIteration(b"")
            if self.message is None and between_messages(ws):
                t.ws = None  # (a ping, say, and nothing else: idle again)
        self.inner = t.stream.receive_some(self.max_bytes)
