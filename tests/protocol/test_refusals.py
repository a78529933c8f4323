"""Every refusal of the connection state machine, with its exact code and message (the
message goes to the peer in an Error frame), for what the peer sends and for what our own
side tries to send."""

from __future__ import annotations

from collections.abc import Callable

import msgpack
import pytest

from chatd.protocol import (
    MAX_FRAME_SIZE,
    PEER_CLOSED,
    Connection,
    ErrorCode,
    Framing,
    LocalProtocolError,
    ProtocolError,
    Role,
    State,
)
from chatd.protocol import frames as F

HELLO = F.Hello(version=1, token="tok")
WELCOME = F.Welcome(version=1, user="alice", device="phone", session="s", server_time=1,
                    heartbeat_ms=30_000, max_frame=1 << 20)
DELIVER = F.Deliver(q=1, conv="d:a:b", seq=1, ts=1, sender="a", device="d", id="m")


def wire(obj: dict[str, object]) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


def server_after_hello() -> Connection:
    server = Connection(Role.SERVER)
    server.receive_data(wire({"t": 1, "v": 1, "tok": "x"}))
    assert server.next_event() == F.Hello(version=1, token="x")
    return server


def server_open() -> Connection:
    server = server_after_hello()
    server.send(WELCOME)
    assert server.state is State.OPEN
    return server


def client_open() -> Connection:
    client = Connection(Role.CLIENT)
    client.send(HELLO)
    client.receive_data(Connection(Role.SERVER).frame_bytes(
        msgpack.packb({"t": 2, "v": 1, "u": "a", "dev": "d", "sid": "s", "now": 1, "hb": 1,
                       "mf": 1})))
    assert isinstance(client.next_event(), F.Welcome) and client.state is State.OPEN
    return client


def closed_server() -> Connection:
    server = server_open()
    server.receive_data(wire({"t": 5}))
    assert server.next_event() == F.Goodbye()
    assert server.state is State.CLOSED
    return server


RECEIVED: list[tuple[str, Callable[[], Connection], bytes, ErrorCode, str]] = [
    ("server frame from a client", server_open,
     wire({"t": 17, "q": 1}), ErrorCode.MALFORMED, "Synced may not be sent by a client"),
    ("client frame from a server", client_open,
     wire({"t": 13, "q": 1}), ErrorCode.MALFORMED, "Ack may not be sent by a server"),
    ("frame after goodbye", closed_server,
     wire({"t": 3}), ErrorCode.MALFORMED, "frame after goodbye"),
    ("second hello", server_open,
     wire({"t": 1, "v": 1, "tok": "x"}), ErrorCode.MALFORMED, "second hello"),
    ("unknown version", lambda: Connection(Role.SERVER),
     wire({"t": 1, "v": 7, "tok": "x"}), ErrorCode.UNSUPPORTED_VERSION,
     "protocol version 7 is not supported; this server speaks 1"),
    ("frame before hello", lambda: Connection(Role.SERVER),
     wire({"t": 3}), ErrorCode.UNAUTHENTICATED, "Ping before hello"),
    ("frame between hello and welcome", server_after_hello,
     wire({"t": 3}), ErrorCode.MALFORMED, "Ping before welcome"),
    ("client: frame before welcome", lambda: _client_after_hello(),
     wire({"t": 17, "q": 1}), ErrorCode.MALFORMED, "Synced before welcome"),
    ("over the size limit", lambda: Connection(Role.SERVER, max_frame_size=10),
     (11).to_bytes(4, "big"), ErrorCode.TOO_LARGE, "frame of 11 bytes, limit 10"),
    ("empty frame", server_open, b"\x00\x00\x00\x00", ErrorCode.MALFORMED, "empty frame"),
]


def _client_after_hello() -> Connection:
    client = Connection(Role.CLIENT)
    client.send(HELLO)
    return client


@pytest.mark.parametrize(("make", "data", "code", "message"),
                         [r[1:] for r in RECEIVED], ids=[r[0] for r in RECEIVED])
def test_what_the_peer_may_not_send(make: Callable[[], Connection], data: bytes,
                                    code: ErrorCode, message: str) -> None:
    conn = make()
    conn.receive_data(data)
    with pytest.raises(ProtocolError) as info:
        conn.next_event()
    assert (info.value.code, info.value.message) == (code, message)
    assert str(info.value) == f"{code.name}: {message}"
    assert conn.state is State.CLOSED
    with pytest.raises(ProtocolError) as again:  # the error sticks
        conn.next_event()
    assert again.value is info.value


@pytest.mark.parametrize(("data", "message"), [
    ((5).to_bytes(4, "big")[:3], "stream ended inside a length prefix"),
    ((5).to_bytes(4, "big") + b"\x81", "stream ended inside a frame"),
])
def test_a_stream_that_ends_inside_a_frame(data: bytes, message: str) -> None:
    conn = server_open()
    conn.receive_data(data)
    conn.receive_data(b"")
    with pytest.raises(ProtocolError) as info:
        conn.next_event()
    assert (info.value.code, info.value.message) == (ErrorCode.MALFORMED, message)


def test_an_error_frame_is_allowed_during_the_handshake() -> None:
    client = _client_after_hello()
    client.receive_data(wire({"t": 6, "code": 3}))
    assert client.next_event() == F.Error(code=3)
    assert client.state is State.HANDSHAKE


SENT: list[tuple[str, Callable[[], Connection], F.Frame, str]] = [
    ("client sends a server frame", client_open, WELCOME, "a client may not send Welcome"),
    ("server sends a client frame", server_open, HELLO, "a server may not send Hello"),
    ("after goodbye", lambda: _closed_by_us(), F.Ping(), "cannot send Ping: connection closed"),
    ("client before hello", lambda: Connection(Role.CLIENT), F.Ping(),
     "client may not send Ping now"),
    ("client hello twice", lambda: _client_after_hello(), HELLO,
     "client may not send Hello now"),
    ("welcome before hello", lambda: Connection(Role.SERVER), WELCOME, "welcome before hello"),
    ("server frame before welcome", server_after_hello, DELIVER,
     "server may not send Deliver before welcome"),
]


def _closed_by_us() -> Connection:
    client = client_open()
    client.send(F.Goodbye())
    assert client.state is State.CLOSED
    return client


@pytest.mark.parametrize(("make", "frame", "message"), [r[1:] for r in SENT],
                         ids=[r[0] for r in SENT])
def test_what_our_side_may_not_send(make: Callable[[], Connection], frame: F.Frame,
                                    message: str) -> None:
    conn = make()
    state = conn.state
    with pytest.raises(LocalProtocolError) as info:
        conn.send(frame)
    assert str(info.value) == message
    assert conn.state is state


def test_error_and_goodbye_may_always_be_sent() -> None:
    closed = server_open()
    closed.send(F.Goodbye())
    for conn in (Connection(Role.SERVER), server_after_hello(), server_open(), closed):
        assert conn.send(F.Error(code=ErrorCode.INTERNAL))
        assert conn.send(F.Goodbye())
    server = Connection(Role.SERVER)
    assert server.send(F.Goodbye()) and server.state is State.CLOSED
    client = Connection(Role.CLIENT)
    assert client.send(F.Goodbye()) and client.state is State.CLOSED


def test_the_handshake_moves_both_sides_to_open() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    server.receive_data(client.send(HELLO))
    assert server.next_event() == HELLO and server.state is State.HANDSHAKE
    data = server.send(WELCOME)
    assert server.state is State.OPEN
    client.receive_data(data)
    assert client.next_event() == WELCOME and client.state is State.OPEN
    assert client.peer == "server" and server.peer == "client"


def test_frame_bytes_length_prefix_and_limit() -> None:
    conn = Connection(Role.SERVER, max_frame_size=10)
    assert conn.frame_bytes(b"x" * 10) == b"\x00\x00\x00\x0a" + b"x" * 10  # big-endian
    assert Connection(Role.SERVER).frame_bytes(b"y" * 258)[:4] == b"\x00\x00\x01\x02"
    with pytest.raises(LocalProtocolError) as info:
        conn.frame_bytes(b"x" * 11)
    assert str(info.value) == "frame of 11 bytes exceeds 10"
    ws = Connection(Role.SERVER, Framing.MESSAGE, max_frame_size=10)
    assert ws.frame_bytes(b"x" * 10) == b"x" * 10
    assert Connection(Role.SERVER).max_frame_size == MAX_FRAME_SIZE


def test_no_data_after_the_end_of_the_stream() -> None:
    for framing in Framing:
        conn = Connection(Role.SERVER, framing)
        conn.receive_data(b"")
        with pytest.raises(LocalProtocolError) as info:
            conn.receive_data(b"\x00")
        assert str(info.value) == "receive_data after end of stream"


def test_a_clean_end_of_stream_closes_the_connection() -> None:
    conn = server_open()
    conn.receive_data(b"")
    assert conn.next_event() is PEER_CLOSED
    assert conn.state is State.CLOSED
    with pytest.raises(LocalProtocolError) as info:
        conn.send(F.Ping())
    assert str(info.value) == "cannot send Ping: connection closed"


def test_a_frame_of_exactly_the_limit_is_taken() -> None:
    client = Connection(Role.CLIENT)
    hello = F.Hello(version=1, token="x" * 100)
    data = client.send(hello)
    for framing, wire_bytes in [(Framing.STREAM, data), (Framing.MESSAGE, data[4:])]:
        server = Connection(Role.SERVER, framing, max_frame_size=len(data) - 4)
        assert server.buffered == 0
        server.receive_data(wire_bytes)
        assert server.buffered == len(wire_bytes)
        assert server.next_event() == hello
        assert server.buffered == 0


@pytest.mark.parametrize("event", ["kind", 5, True, ["kind"], {"k": 1.5}, {"k": [1]},
                                   {"k": None}, {"k": {"a": 1}}])
def test_a_bad_chat_event_is_malformed(event: object) -> None:
    body = msgpack.packb({"t": 12, "q": 1, "c": "d:a:b", "s": 1, "ts": 1, "f": "a",
                          "fd": "d", "id": "m", "ev": event}, use_bin_type=True)
    server = client_open()
    server.receive_data(len(body).to_bytes(4, "big") + body)
    with pytest.raises(ProtocolError) as info:
        server.next_event()
    assert info.value.code == ErrorCode.MALFORMED and "ev" in info.value.message
