"""Framing and the allowed sequence of frames, fed whole and byte by byte."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatd.protocol import (
    NEED_DATA,
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

from .strategies import examples, for_class

HELLO = F.Hello(version=1, token="tok", device="phone")
WELCOME = F.Welcome(version=1, user="alice", device="phone", session="s", server_time=1,
                    heartbeat_ms=30_000, max_frame=1 << 20)


def drain(conn: Connection) -> list[object]:
    out: list[object] = []
    while True:
        ev = conn.next_event()
        if ev is NEED_DATA:
            return out
        out.append(ev)
        if ev is PEER_CLOSED:
            return out


def open_pair(framing: Framing = Framing.STREAM) -> tuple[Connection, Connection]:
    client, server = Connection(Role.CLIENT, framing), Connection(Role.SERVER, framing)
    server.receive_data(client.send(HELLO))
    assert drain(server) == [HELLO]
    client.receive_data(server.send(WELCOME))
    assert drain(client) == [WELCOME]
    assert client.state is server.state is State.OPEN
    return client, server


client_frames = st.sampled_from([F.Send, F.Ack, F.Read, F.Ping, F.History, F.GroupCreate,
                                 F.PresenceSubscribe, F.SetMode, F.Sync]).flatmap(for_class)


@given(st.lists(client_frames, max_size=8), st.data())
@settings(max_examples=examples(150))
def test_whole_and_byte_by_byte_and_random_chunks_agree(frames: list[F.Frame],
                                                        data: st.DataObject) -> None:
    client, _ = open_pair()
    wire = b"".join(client.send(f) for f in frames)
    results = []
    for chunking in ("whole", "bytes", "random"):
        _, server = open_pair()
        got: list[object] = []
        if chunking == "whole":
            chunks = [wire]
        elif chunking == "bytes":
            chunks = [wire[i : i + 1] for i in range(len(wire))]
        else:
            cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
            chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
        for chunk in chunks:
            if chunk:
                server.receive_data(chunk)
                got += drain(server)
        server.receive_data(b"")
        got += drain(server)
        results.append(got)
    assert results[0] == [*frames, PEER_CLOSED]
    assert results[0] == results[1] == results[2]


@given(st.binary(max_size=300))
@settings(max_examples=examples(1500))
def test_any_bytes_after_handshake_give_frames_or_a_protocol_error(data: bytes) -> None:
    _, server = open_pair()
    try:
        if data:
            server.receive_data(data)
        server.receive_data(b"")
        for ev in drain(server):
            assert ev is PEER_CLOSED or isinstance(ev, F.Frame)
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
        assert server.state is State.CLOSED
        with pytest.raises(ProtocolError):  # the error sticks
            server.next_event()


def test_oversize_length_prefix_is_refused_before_any_body_is_buffered() -> None:
    server = Connection(Role.SERVER, max_frame_size=1000)
    server.receive_data((1001).to_bytes(4, "big"))
    with pytest.raises(ProtocolError) as info:
        server.next_event()
    assert info.value.code == ErrorCode.TOO_LARGE
    assert server.buffered == 4


def test_max_size_frame_is_accepted() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER, max_frame_size=200)
    hello = F.Hello(version=1, token="x" * 150)
    wire = client.send(hello)
    assert len(wire) - 4 <= 200
    server.receive_data(wire)
    assert server.next_event() == hello


def test_truncated_stream_is_malformed() -> None:
    client, server = open_pair()
    wire = client.send(F.Ping(nonce=7))
    server.receive_data(wire[:-1])
    assert server.next_event() is NEED_DATA
    server.receive_data(b"")
    with pytest.raises(ProtocolError) as info:
        server.next_event()
    assert info.value.code == ErrorCode.MALFORMED


def test_empty_frame_is_malformed() -> None:
    _, server = open_pair()
    server.receive_data(b"\x00\x00\x00\x00")
    with pytest.raises(ProtocolError, match="empty frame"):
        server.next_event()


def expect_error(server: Connection, frame_bytes: bytes, code: ErrorCode) -> None:
    server.receive_data(frame_bytes)
    with pytest.raises(ProtocolError) as info:
        server.next_event()
    assert info.value.code == code


def raw(obj: object) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


def test_frames_before_hello_are_unauthenticated() -> None:
    expect_error(Connection(Role.SERVER), raw({"t": 10, "id": "m", "to": "bob"}),
                 ErrorCode.UNAUTHENTICATED)


def test_unknown_major_version_gets_unsupported_version() -> None:
    expect_error(Connection(Role.SERVER), raw({"t": 1, "v": 2, "tok": "x"}),
                 ErrorCode.UNSUPPORTED_VERSION)


def test_server_frames_from_a_client_are_malformed() -> None:
    _, server = open_pair()
    expect_error(server, raw({"t": 11, "id": "m", "c": "d:a:b", "s": 1, "ts": 1}),
                 ErrorCode.MALFORMED)


def test_second_hello_and_frames_before_welcome_are_malformed() -> None:
    _, server = open_pair()
    expect_error(server, raw({"t": 1, "v": 1, "tok": "x"}), ErrorCode.MALFORMED)
    server = Connection(Role.SERVER)
    server.receive_data(raw({"t": 1, "v": 1, "tok": "x"}))
    assert isinstance(server.next_event(), F.Hello)
    expect_error(server, raw({"t": 3}), ErrorCode.MALFORMED)


def test_goodbye_closes_and_later_frames_are_refused() -> None:
    client, server = open_pair()
    server.receive_data(client.send(F.Goodbye(code=0)))
    assert server.next_event() == F.Goodbye()
    assert server.state is State.CLOSED
    assert client.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        client.send(F.Ping())


def test_local_misuse_raises_local_protocol_error() -> None:
    client = Connection(Role.CLIENT)
    with pytest.raises(LocalProtocolError):
        client.send(F.Send(id="m", to="bob"))  # before hello
    with pytest.raises(LocalProtocolError):
        client.send(F.Welcome(version=1, user="a", device="d", session="s", server_time=0,
                              heartbeat_ms=1, max_frame=1))
    server = Connection(Role.SERVER)
    with pytest.raises(LocalProtocolError):
        server.send(WELCOME)  # before hello
    assert server.send(F.Error(code=ErrorCode.UNAUTHENTICATED))  # errors are always allowed


def test_client_sees_server_error_during_handshake() -> None:
    client = Connection(Role.CLIENT)
    client.send(HELLO)
    server = Connection(Role.SERVER)
    client.receive_data(server.send(F.Error(code=ErrorCode.UNAUTHENTICATED, message="bad token")))
    assert client.next_event() == F.Error(code=3, message="bad token")


def test_websocket_framing_has_no_length_prefix() -> None:
    client, server = open_pair(Framing.MESSAGE)
    data = client.send(F.Ping(nonce=1))
    assert msgpack.unpackb(data) == {"t": 3, "n": 1}
    server.receive_data(data)
    server.receive_data(client.send(F.Ping(nonce=2)))
    assert drain(server) == [F.Ping(nonce=1), F.Ping(nonce=2)]
    server.receive_data(b"")
    assert drain(server) == [PEER_CLOSED]


def test_websocket_message_over_limit_is_too_large() -> None:
    server = Connection(Role.SERVER, Framing.MESSAGE, max_frame_size=10)
    expect_error(server, msgpack.packb({"t": 1, "v": 1, "tok": "x" * 20}), ErrorCode.TOO_LARGE)
