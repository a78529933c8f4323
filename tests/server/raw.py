"""A raw protocol client over a real socket, for feeding a server exactly what a test wants."""

from __future__ import annotations

import trio

from chatd.protocol import NEED_DATA, PEER_CLOSED, Connection, Frame, Role
from chatd.protocol import frames as F


class Raw:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = Connection(Role.CLIENT)

    @classmethod
    async def open(cls, port: int) -> Raw:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def hello(self, token: str, device: str = "default") -> F.Welcome:
        await self.send(F.Hello(version=1, token=token, device=device))
        welcome = await self.recv()
        assert isinstance(welcome, F.Welcome), welcome
        return welcome

    async def send(self, frame: Frame) -> None:
        await self.stream.send_all(self.conn.send(frame))

    async def send_bytes(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def recv(self, timeout: float = 5) -> Frame | None:
        """The next frame, or None when the server closed the connection."""
        with trio.fail_after(timeout):
            while True:
                ev = self.conn.next_event()
                if ev is PEER_CLOSED:
                    return None
                if ev is not NEED_DATA:
                    assert isinstance(ev, Frame)
                    return ev
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                self.conn.receive_data(data)

    async def recv_until(self, kind: type, timeout: float = 5) -> Frame:
        while True:
            frame = await self.recv(timeout)
            assert frame is not None, f"closed while waiting for {kind.__name__}"
            if isinstance(frame, kind):
                return frame

    async def closed(self, timeout: float = 5) -> bool:
        """Read until the server closes; True if it did within the timeout."""
        with trio.move_on_after(timeout):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return True
                if not data:
                    return True
        return False

    async def aclose(self) -> None:
        await self.stream.aclose()
