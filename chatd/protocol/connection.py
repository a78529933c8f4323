"""The sans-IO protocol connection: bytes in, frames out; frames in, bytes out.

Like h11 and wsproto it does no I/O: feed it what the transport received with
`receive_data()` (b"" for end of stream), pull frames with `next_event()` until it returns
NEED_DATA, and turn outgoing frames into bytes with `send()`. It enforces the framing, the
size limits and the allowed sequence of frames; every violation by the peer raises
ProtocolError carrying the code to report.
"""

from __future__ import annotations

import enum
from typing import Final

from .codec import decode_body, encode_body
from .errors import ErrorCode, LocalProtocolError, ProtocolError
from .frames import Error, Frame, Goodbye, Hello, Origin, Welcome
from .limits import (
    LENGTH_PREFIX_SIZE,
    MAX_CONTAINERS_FROM_CLIENT,
    MAX_CONTAINERS_FROM_SERVER,
    MAX_FRAME_SIZE,
    MAX_HELLO_SIZE,
    PROTOCOL_VERSION,
)


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class Framing(enum.Enum):
    STREAM = "stream"  # TCP: 4-byte big-endian length, then the msgpack body
    MESSAGE = "message"  # WebSocket: one binary message is one msgpack body


class State(enum.Enum):
    HANDSHAKE = "handshake"  # before Welcome: the client may send only Hello
    OPEN = "open"
    CLOSED = "closed"  # a Goodbye went either way, or the peer broke the protocol


class Signal(enum.Enum):
    NEED_DATA = "need-data"  # feed more bytes before asking again
    PEER_CLOSED = "peer-closed"  # the stream ended cleanly between frames


NEED_DATA: Final = Signal.NEED_DATA
PEER_CLOSED: Final = Signal.PEER_CLOSED

_EMPTY: Final = b""
_RECEIVES: Final = {Role.SERVER: Origin.CLIENT, Role.CLIENT: Origin.SERVER}
_CONTAINERS: Final = {Role.SERVER: MAX_CONTAINERS_FROM_CLIENT,
                      Role.CLIENT: MAX_CONTAINERS_FROM_SERVER}


class Connection:
    __slots__ = ("role", "framing", "max_frame_size", "state", "_buf", "_pos", "_msgs",
                 "_eof", "_error", "_hello_done", "_peer_goodbye")

    def __init__(self, role: Role, framing: Framing = Framing.STREAM,
                 max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self.role = role
        self.framing = framing
        self.max_frame_size = max_frame_size
        self.state = State.HANDSHAKE
        self._buf: bytes | bytearray = _EMPTY
        self._pos = 0
        self._msgs: list[bytes] | None = None
        self._eof = False
        self._error: ProtocolError | None = None
        self._hello_done = False  # server: Hello received; client: Hello sent
        self._peer_goodbye = False  # the peer said goodbye: it may send nothing more

    # ---- input ---------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes from the transport (or one whole WebSocket message); b"" means EOF."""
        if self._eof:
            raise LocalProtocolError("receive_data after end of stream")
        if not data:
            self._eof = True
        elif self.framing is Framing.MESSAGE:
            if self._msgs is None:
                self._msgs = []
            self._msgs.append(bytes(data))
        elif not self._buf:
            self._buf = bytearray(data)
        else:
            assert isinstance(self._buf, bytearray)  # only the empty buffer is bytes
            if self._pos:
                del self._buf[: self._pos]
                self._pos = 0
            self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into frames (a started frame, for deadlines)."""
        if self._msgs:
            return sum(map(len, self._msgs))
        return len(self._buf) - self._pos

    def next_event(self) -> Frame | Signal:
        """The next frame, NEED_DATA, or PEER_CLOSED. Raises ProtocolError on bad input."""
        if self._error is not None:
            raise self._error
        try:
            body = self._next_body()
            if body is None:
                if not self._eof:
                    return NEED_DATA
                self.state = State.CLOSED
                return PEER_CLOSED
            frame = decode_body(body, self.frame_limit, _CONTAINERS[self.role])
            self._check_received(frame)
            return frame
        except ProtocolError as exc:
            self._error = exc
            self.state = State.CLOSED
            raise

    @property
    def frame_limit(self) -> int:
        """The largest frame accepted now: a server takes only a small one (Hello) before
        the client has authenticated, so an unauthenticated peer costs little."""
        if self.role is Role.SERVER and not self._hello_done:
            return min(self.max_frame_size, MAX_HELLO_SIZE)
        return self.max_frame_size

    def _next_body(self) -> bytes | None:
        if self.framing is Framing.MESSAGE:
            if self._msgs:
                return self._msgs.pop(0)
            return None
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < LENGTH_PREFIX_SIZE:
            if self._eof and avail:
                raise ProtocolError(ErrorCode.MALFORMED, "stream ended inside a length prefix")
            return None
        size = int.from_bytes(buf[pos : pos + LENGTH_PREFIX_SIZE], "big")
        if size > self.frame_limit:
            raise ProtocolError(ErrorCode.TOO_LARGE,
                                f"frame of {size} bytes, limit {self.frame_limit}")
        if size == 0:
            raise ProtocolError(ErrorCode.MALFORMED, "empty frame")
        end = pos + LENGTH_PREFIX_SIZE + size
        if len(buf) < end:
            if self._eof:
                raise ProtocolError(ErrorCode.MALFORMED, "stream ended inside a frame")
            return None
        body = bytes(buf[pos + LENGTH_PREFIX_SIZE : end])
        if end == len(buf):
            self._buf = _EMPTY  # hold no buffer while idle
            self._pos = 0
        else:
            self._pos = end
        return body

    def _check_received(self, frame: Frame) -> None:
        if not frame.ORIGIN & _RECEIVES[self.role]:
            raise ProtocolError(ErrorCode.MALFORMED,
                                f"{type(frame).__name__} may not be sent by a {self.peer}")
        if self._peer_goodbye:
            raise ProtocolError(ErrorCode.MALFORMED, "frame after goodbye")
        if isinstance(frame, Goodbye):
            self.state = State.CLOSED
            self._peer_goodbye = True
            return
        if self.state is State.CLOSED:
            return  # we said goodbye; the peer sent this before it knew
        if self.role is Role.SERVER:
            if isinstance(frame, Hello):
                if self._hello_done:
                    raise ProtocolError(ErrorCode.MALFORMED, "second hello")
                if frame.version != PROTOCOL_VERSION:
                    raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                                        f"protocol version {frame.version} is not supported;"
                                        f" this server speaks {PROTOCOL_VERSION}")
                self._hello_done = True
            elif not self._hello_done:
                raise ProtocolError(ErrorCode.UNAUTHENTICATED,
                                    f"{type(frame).__name__} before hello")
            elif self.state is State.HANDSHAKE:
                raise ProtocolError(ErrorCode.MALFORMED,
                                    f"{type(frame).__name__} before welcome")
        elif self.state is State.HANDSHAKE:
            if isinstance(frame, Welcome):
                self.state = State.OPEN
            elif not isinstance(frame, Error):
                raise ProtocolError(ErrorCode.MALFORMED,
                                    f"{type(frame).__name__} before welcome")

    @property
    def peer(self) -> str:
        return "server" if self.role is Role.CLIENT else "client"

    # ---- output --------------------------------------------------------------------------

    def send(self, frame: Frame) -> bytes:
        """The bytes to write for this frame. Raises LocalProtocolError if it is not allowed."""
        if not frame.ORIGIN & _RECEIVES[Role.CLIENT if self.role is Role.SERVER else Role.SERVER]:
            raise LocalProtocolError(f"a {self.role.value} may not send {type(frame).__name__}")
        if self.state is State.CLOSED and not isinstance(frame, (Error, Goodbye)):
            raise LocalProtocolError(f"cannot send {type(frame).__name__}: connection closed")
        if self.state is State.HANDSHAKE:
            self._check_handshake_send(frame)
        if isinstance(frame, Goodbye):
            self.state = State.CLOSED
        return self.frame_bytes(encode_body(frame))

    def _check_handshake_send(self, frame: Frame) -> None:
        if self.role is Role.CLIENT:
            if not isinstance(frame, (Hello, Goodbye)) or (isinstance(frame, Hello)
                                                           and self._hello_done):
                raise LocalProtocolError(f"client may not send {type(frame).__name__} now")
            self._hello_done = True
        elif isinstance(frame, Welcome):
            if not self._hello_done:
                raise LocalProtocolError("welcome before hello")
            self.state = State.OPEN
        elif not isinstance(frame, (Error, Goodbye)):
            raise LocalProtocolError(f"server may not send {type(frame).__name__} before welcome")

    def frame_bytes(self, body: bytes) -> bytes:
        """Wrap an already encoded body for this transport (lets a server encode once, send
        to many devices)."""
        if len(body) > self.max_frame_size:
            raise LocalProtocolError(f"frame of {len(body)} bytes exceeds {self.max_frame_size}")
        if self.framing is Framing.MESSAGE:
            return body
        return len(body).to_bytes(LENGTH_PREFIX_SIZE, "big") + body
