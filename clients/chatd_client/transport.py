"""Opening tcp://, tls://, ws:// and wss:// URLs as one send/receive interface."""

from __future__ import annotations

import contextlib
import ssl
import urllib.parse
from collections.abc import AsyncIterator

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from chatd.protocol import Framing

SCHEMES = ("tcp", "tls", "ws", "wss")


class BadURL(ValueError):
    pass


def parse_url(url: str) -> tuple[str, str, int]:
    u = urllib.parse.urlsplit(url)
    if u.scheme not in SCHEMES or not u.hostname or not u.port:
        raise BadURL(f"{url!r}: expected tcp://host:port, tls://, ws://host:port/ws or wss://")
    return u.scheme, u.hostname, u.port


class Link:
    """One open connection to a server."""

    def __init__(self, framing: Framing) -> None:
        self.framing = framing

    async def send(self, data: bytes) -> None:
        raise NotImplementedError

    async def receive(self) -> bytes:
        """Bytes (a message, for WebSocket); b"" once the connection ended."""
        raise NotImplementedError


class _StreamLink(Link):
    def __init__(self, stream: trio.abc.Stream) -> None:
        super().__init__(Framing.STREAM)
        self.stream = stream

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive(self) -> bytes:
        try:
            return bytes(await self.stream.receive_some(65536))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""


class _WsLink(Link):
    def __init__(self, ws: object) -> None:
        super().__init__(Framing.MESSAGE)
        self.ws = ws

    async def send(self, data: bytes) -> None:
        try:
            await self.ws.send_message(data)  # type: ignore[attr-defined]
        except ConnectionClosed:
            raise trio.BrokenResourceError("websocket closed") from None

    async def receive(self) -> bytes:
        try:
            msg = await self.ws.get_message()  # type: ignore[attr-defined]
        except ConnectionClosed:
            return b""
        return msg if isinstance(msg, bytes) else msg.encode()


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(ca_file)
    return ctx


@contextlib.asynccontextmanager
async def open_link(url: str, ca_file: str | None = None,
                    connect_timeout: float = 10) -> AsyncIterator[Link]:
    scheme, host, port = parse_url(url)
    if scheme in ("ws", "wss"):
        ctx = ssl_context(ca_file) if scheme == "wss" else None
        async with open_websocket_url(url, ctx, connect_timeout=connect_timeout,
                                      disconnect_timeout=1, max_message_size=2**21) as ws:
            yield _WsLink(ws)
        return
    with trio.fail_after(connect_timeout):
        stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
        if scheme == "tls":
            tls = trio.SSLStream(stream, ssl_context(ca_file), server_hostname=host)
            await tls.do_handshake()
            stream = tls
    try:
        yield _StreamLink(stream)
    finally:
        await trio.aclose_forcefully(stream)
