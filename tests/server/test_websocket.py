"""The WebSocket endpoint over real sockets, spoken by a raw wsproto client: the handshake's
edge cases, pings, the close handshake, messages cut anywhere, and the size limits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from chatd.auth import load_or_create_secret, make_token
from chatd.protocol import NEED_DATA, Connection, ErrorCode, Framing, Role
from chatd.protocol import frames as F
from chatd.protocol.limits import MAX_HELLO_SIZE
from chatd.server import ChatServer, Config, serve


@pytest.fixture
async def start(tmp_path: Path, nursery: trio.Nursery) -> Any:
    async def start(**overrides: Any) -> ChatServer:
        cfg = Config(host="127.0.0.1", tcp_port=0, ws_port=0, data_dir=str(tmp_path),
                     store="memory://")
        for k, v in overrides.items():
            setattr(cfg, k, v)
        load_or_create_secret(cfg.data_dir)
        server: ChatServer = await nursery.start(serve, cfg)
        await server.store.add_user("alice")
        await server.store.add_user("bob")
        return server
    return start


@pytest.fixture
async def server(start: Any) -> AsyncIterator[ChatServer]:
    yield await start()


class Client:
    """A WebSocket client on a raw socket: what it sends is exactly what the test says."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.conn = Connection(Role.CLIENT, Framing.MESSAGE)
        self.pending: list[Event] = []

    @classmethod
    async def open(cls, server: ChatServer, target: str = "/ws",
                   headers: list[tuple[bytes, bytes]] | None = None) -> Client:
        c = cls(await trio.open_tcp_stream("127.0.0.1", server.ws_port))
        await c.stream.send_all(c.ws.send(Request(
            host=f"127.0.0.1:{server.ws_port}", target=target, extra_headers=headers or [])))
        return c

    async def event(self) -> Event | None:
        """The next WebSocket event; None when the server closed the TCP connection."""
        with trio.fail_after(5):
            while not self.pending:
                data = await self.stream.receive_some(65536)
                if not data:
                    return None
                self.ws.receive_data(data)
                self.pending.extend(self.ws.events())
        return self.pending.pop(0)

    async def accepted(self) -> None:
        assert isinstance(await self.event(), AcceptConnection)

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def frame(self) -> Any:
        """The next chatd frame (WebSocket events that are not binary messages are failures)."""
        while (ev := self.conn.next_event()) is NEED_DATA:
            msg = await self.event()
            assert isinstance(msg, BytesMessage), msg
            self.conn.receive_data(msg.data)
        return ev

    async def hello(self, server: ChatServer, user: str = "alice") -> None:
        await self.send(BytesMessage(self.conn.send(F.Hello(
            version=1, token=make_token(server.secret, user, None)))))
        assert isinstance(await self.frame(), F.Welcome)
        assert isinstance(await self.frame(), F.Synced)

    async def rest(self) -> list[Event]:
        """Every event until the server closes the TCP connection."""
        out = []
        while (ev := await self.event()) is not None:
            out.append(ev)
        return out


async def test_a_wrong_path_gets_404(server: ChatServer) -> None:
    c = await Client.open(server, "/chat")
    ev = await c.event()
    assert isinstance(ev, RejectConnection) and ev.status_code == 404
    body = b"".join(e.data for e in await c.rest() if isinstance(e, RejectData))
    assert body == b"chatd speaks WebSocket on /ws\n"


async def test_a_query_string_on_ws_is_fine(server: ChatServer) -> None:
    c = await Client.open(server, "/ws?v=1")
    await c.accepted()
    await c.hello(server)


async def test_a_foreign_origin_gets_403_and_a_client_without_origin_gets_in(
        server: ChatServer) -> None:
    c = await Client.open(server, headers=[(b"origin", b"http://evil.example")])
    ev = await c.event()
    assert isinstance(ev, RejectConnection) and ev.status_code == 403
    body = b"".join(e.data for e in await c.rest() if isinstance(e, RejectData))
    assert b"ws_origins" in body
    c = await Client.open(server)
    await c.accepted()
    await c.hello(server)


async def test_an_allowed_origin_gets_in(start: Any) -> None:
    server = await start(ws_origins="https://chat.example.org")
    c = await Client.open(server, headers=[(b"origin", b"https://chat.example.org")])
    await c.accepted()
    await c.hello(server)


async def test_plain_http_on_the_websocket_port_gets_400(server: ChatServer) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.ws_port)
    await stream.send_all(b"GET /ws HTTP/1.1\r\nhost: x\r\n\r\n")
    answer = b""
    with trio.fail_after(5):
        while data := await stream.receive_some(4096):
            answer += data
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"not a WebSocket handshake" in answer


async def test_a_client_that_never_finishes_the_handshake_is_dropped(start: Any) -> None:
    server = await start(auth_timeout=0.5)
    stream = await trio.open_tcp_stream("127.0.0.1", server.ws_port)
    await stream.send_all(b"GET /ws HTTP/1.1\r\nhost: x\r\n")  # ... and nothing more
    with trio.fail_after(5):
        assert await stream.receive_some(4096) == b""  # closed by the server
    c = await Client.open(server)  # the node still takes others
    await c.accepted()
    await c.hello(server)


async def test_a_text_message_is_malformed(server: ChatServer) -> None:
    c = await Client.open(server)
    await c.accepted()
    await c.hello(server)
    await c.send(TextMessage('{"t": 10}'))
    error = await c.frame()
    assert isinstance(error, F.Error) and error.code == ErrorCode.MALFORMED
    assert "binary" in error.message
    closes = [e for e in await c.rest() if isinstance(e, CloseConnection)]
    assert [e.code for e in closes] == [1003]


async def test_an_empty_message_is_malformed(server: ChatServer) -> None:
    c = await Client.open(server)
    await c.accepted()
    await c.hello(server)
    await c.send(BytesMessage(b""))
    error = await c.frame()
    assert isinstance(error, F.Error) and error.code == ErrorCode.MALFORMED


async def test_an_oversized_message_before_welcome_is_refused(server: ChatServer) -> None:
    c = await Client.open(server)
    await c.accepted()
    await c.send(BytesMessage(b"\x00" * (MAX_HELLO_SIZE + 1)))
    error = await c.frame()
    assert isinstance(error, F.Error) and error.code == ErrorCode.TOO_LARGE
    closes = [e for e in await c.rest() if isinstance(e, CloseConnection)]
    assert [e.code for e in closes] == [1009]


async def test_a_large_message_after_welcome_is_taken(server: ChatServer) -> None:
    c = await Client.open(server)
    await c.accepted()
    await c.hello(server)
    body = b"x" * (3 * MAX_HELLO_SIZE)  # over the limit before Welcome, fine after it
    await c.send(BytesMessage(c.conn.send(F.Send(id="m1", to="bob", body=body))))
    sent = await c.frame()
    assert isinstance(sent, F.Sent) and sent.seq == 1


async def test_a_ping_gets_a_pong_and_the_session_goes_on(server: ChatServer) -> None:
    c = await Client.open(server)
    await c.accepted()
    await c.send(Ping(b"before hello"))
    ev = await c.event()
    assert isinstance(ev, Pong) and ev.payload == b"before hello"
    await c.hello(server)
    await c.send(Ping(b"idle"))
    ev = await c.event()
    assert isinstance(ev, Pong) and ev.payload == b"idle"
    await c.send(BytesMessage(c.conn.send(F.Ping())))
    assert isinstance(await c.frame(), F.Pong)


async def test_the_close_handshake_is_answered(server: ChatServer) -> None:
    c = await Client.open(server)
    await c.accepted()
    await c.hello(server)
    await c.send(CloseConnection(1000, "bye"))
    events = await c.rest()
    closes = [e for e in events if isinstance(e, CloseConnection)]
    assert [e.code for e in closes] == [1000]
    with trio.fail_after(5):  # the node forgets the device
        while server.sessions():
            await trio.sleep(0.02)


async def test_messages_cut_anywhere_and_fragmented_arrive_whole(server: ChatServer) -> None:
    """Frames split across reads at every byte, a message in several frames, two messages
    in one read, a ping between fragments: each chatd frame arrives whole."""
    c = await Client.open(server)
    await c.accepted()
    await c.hello(server)
    sends = [c.conn.send(F.Send(id=f"m{i}", to="bob", body=b"hi")) for i in range(1, 5)]
    wire = c.ws.send(BytesMessage(sends[0]))
    wire += c.ws.send(BytesMessage(sends[1][:3], message_finished=False))
    wire += c.ws.send(Ping(b"p"))
    wire += c.ws.send(BytesMessage(sends[1][3:], message_finished=True))
    for chunk in (wire[i:i + 1] for i in range(len(wire))):  # one byte per write
        await c.stream.send_all(chunk)
        await trio.sleep(0)
    await c.stream.send_all(c.ws.send(BytesMessage(sends[2])) + c.ws.send(BytesMessage(
        sends[3])))
    seqs: list[int] = []
    pongs = 0
    while len(seqs) < 4:
        while (ev := c.conn.next_event()) is NEED_DATA:
            msg = await c.event()
            if isinstance(msg, Pong):
                pongs += 1
                continue
            assert isinstance(msg, BytesMessage), msg
            c.conn.receive_data(msg.data)
        if isinstance(ev, F.Sent):
            seqs.append(ev.seq)
    assert seqs == [1, 2, 3, 4]
    if not pongs:
        assert isinstance(await c.event(), Pong)


async def test_an_idle_connection_is_told_of_a_shutdown(start: Any) -> None:
    """The pump waits in a read when the node stops: it is cancelled there, cleanly."""
    server = await start(shutdown_grace=0.5)
    c = await Client.open(server)
    await c.accepted()
    await c.hello(server)
    server.stop()
    error = await c.frame()
    assert isinstance(error, F.Error) and error.code == ErrorCode.SHUTTING_DOWN
    with trio.fail_after(5):
        await server.stopped.wait()
    assert not server.sessions()


async def test_pongs_and_frames_take_turns_on_the_socket(server: ChatServer) -> None:
    """Pings (answered by the reader) amid sends (answered by the writer): both answered."""
    c = await Client.open(server)
    await c.accepted()
    await c.hello(server)
    n = 80  # (under the default burst of sends)
    wire = b"".join(c.ws.send(BytesMessage(c.conn.send(F.Send(id=f"m{i}", to="bob",
                                                                body=b"hi"))))
                    + c.ws.send(Ping(b"%d" % i)) for i in range(n))
    await c.stream.send_all(wire)
    sent = pongs = 0
    while sent < n or pongs < n:
        while (ev := c.conn.next_event()) is NEED_DATA:
            msg = await c.event()
            if isinstance(msg, Pong):
                pongs += 1
                continue
            assert isinstance(msg, BytesMessage), msg
            c.conn.receive_data(msg.data)
        sent += isinstance(ev, F.Sent)
    assert (sent, pongs) == (n, n)
