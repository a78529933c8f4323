"""WebSocket's opening handshake (RFC 6455) on a trio stream, driven by wsproto (sans-IO).

The node reads the client's HTTP/1.1 upgrade request, asks the caller whether to take it (path,
Origin) and answers 101, or an HTTP error with a one-line text body. What follows the
handshake is chatd.server.transport.WebSocketTransport: no task and no buffer of its own per
connection, read by the session's pump like a TCP stream.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import trio
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, Request
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from .transport import WebSocketTransport

HANDSHAKE_RECEIVE_SIZE = 8192  # h11 refuses a request head over 16 KiB (400)

# (status, body) for a request the node does not take, or None to accept it
Refusal = tuple[int, bytes]
Check = Callable[[Request], Refusal | None]


def http_error(status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
               ) -> bytes:
    """A complete HTTP/1.1 error response that ends the connection."""
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            "content-type: text/plain; charset=utf-8", f"content-length: {len(body)}",
            "connection: close"]
    head += [f"{k.decode('latin-1')}: {v.decode('latin-1')}" for k, v in headers or ()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def receive_request(handshake: H11Handshake, data: bytes | bytearray
                    ) -> Request | Refusal | None:
    """Feed bytes of the request head (b"": the client left): the request once complete, a
    refusal (status, body) if it is no WebSocket upgrade, else None (more data)."""
    try:
        handshake.receive_data(bytes(data))
        for event in handshake.events():
            assert isinstance(event, Request)  # (a server's handshake has no other event)
            return event
    except RemoteProtocolError as exc:
        return 400, f"not a WebSocket handshake: {exc}\n".encode()
    return None


async def handshake(transport: WebSocketTransport, check: Check) -> bool:
    """Read the opening handshake and answer it (the caller bounds the time): True once
    accepted (the transport is open); False after an HTTP error (a malformed request, or one
    refused by `check`) or when the client left. The stream is the caller's to close."""
    stream = transport.stream
    shake = H11Handshake(ConnectionType.SERVER)
    try:
        while True:
            data = await stream.receive_some(HANDSHAKE_RECEIVE_SIZE)
            got = receive_request(shake, data)
            if got is None:
                if not data:
                    return False
                continue
            refusal = got if isinstance(got, tuple) else check(got)
            if refusal is not None:
                status, body = refusal
                extra = [(b"sec-websocket-version", b"13")] if status == 400 else []
                await stream.send_all(http_error(status, body, extra))
                return False
            await stream.send_all(shake.send(AcceptConnection()))
            transport.ws = shake.connection  # (the client sends nothing before our answer)
            return True
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False


class WebSocketListener(trio.abc.Listener[WebSocketTransport]):
    """Connections accepted as WebSocketTransports, their handshake still to be done (by the
    connection's own task: see handshake)."""

    def __init__(self, listener: trio.abc.Listener[Any]) -> None:
        self.listener = listener

    async def accept(self) -> WebSocketTransport:
        return WebSocketTransport(await self.listener.accept())

    async def aclose(self) -> None:
        await self.listener.aclose()
