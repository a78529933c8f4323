"""Bad input gets its error code (and a close where the protocol says so); nothing SENT is
lost and everyone else keeps being served."""

from __future__ import annotations

import chatd_client as cc
import msgpack
import pytest
import trio

from chatd.auth import make_token
from chatd.protocol import MAX_BODY_SIZE, ErrorCode
from chatd.protocol import frames as F

from .conftest import Node, StartNode, messages
from .raw import Raw


async def still_serving(node: Node) -> None:
    """A normal exchange works after whatever the test did."""
    async with node.connect("carol") as carol:
        ack = await carol.send("bob", "still here?")
        assert ack.seq >= 1


async def expect_error_and_close(raw: Raw, code: ErrorCode) -> F.Error:
    frame = await raw.recv()
    assert isinstance(frame, F.Error), frame
    assert frame.code == code, frame
    assert await raw.closed()
    return frame


@pytest.mark.parametrize(("garbage", "code"), [
    (b"\x00\x00\x00\x03\xc1\xc1\xc1", ErrorCode.MALFORMED),  # length 3, not msgpack
    (b"\x00\x00\x00\x02\x92\x01", ErrorCode.MALFORMED),  # an array of 2 with 1 item
    (b"\x00\x00\x00\x01\x01", ErrorCode.MALFORMED),  # msgpack, but not a map
    (b"\x00\x00\x00\x00", ErrorCode.MALFORMED),  # an empty frame
    (b"GET / HTTP/1.1\r\n\r\n", ErrorCode.TOO_LARGE),  # the wrong protocol: a huge length
    (b"\x00\x00\x00\x04\x81\xa1t\x63", ErrorCode.MALFORMED),  # frame type 99
])
async def test_garbage_bytes_get_an_error_and_a_close(node: Node, garbage: bytes,
                                                      code: ErrorCode) -> None:
    raw = await Raw.open(node.server.tcp_port)
    await raw.send_bytes(garbage)
    await expect_error_and_close(raw, code)
    await still_serving(node)


async def test_oversize_frame_is_refused_without_reading_it(node: Node) -> None:
    raw = await Raw.open(node.server.tcp_port)
    await raw.hello(node.token("alice"))
    await raw.send_bytes((64 * 1024 * 1024).to_bytes(4, "big") + b"\x80")
    error = await expect_error_and_close(raw, ErrorCode.TOO_LARGE)
    assert "limit" in error.message
    await still_serving(node)


async def test_frames_before_authentication_are_refused(node: Node) -> None:
    raw = await Raw.open(node.server.tcp_port)
    body = msgpack.packb({"t": 10, "id": "x", "to": "bob", "b": b"sneaky"})
    await raw.send_bytes(len(body).to_bytes(4, "big") + body)
    await expect_error_and_close(raw, ErrorCode.UNAUTHENTICATED)
    async with node.connect("alice") as alice:
        await alice.send("bob", "after")
    async with node.connect("bob") as bob:  # the first thing bob has is alice's message
        assert [(m.seq, m.text) for m in await messages(bob, 1)] == [(1, "after")]


@pytest.mark.parametrize("case", ["bad signature", "expired", "garbage", "other device"])
async def test_bad_or_expired_tokens_are_unauthenticated(node: Node, case: str) -> None:
    token = {
        "bad signature": make_token(b"not the server secret", "alice"),
        "expired": make_token(node.server.secret, "alice", ttl=-10),
        "garbage": "not-a-token",
        "other device": make_token(node.server.secret, "alice", "phone"),
    }[case]
    raw = await Raw.open(node.server.tcp_port)
    await raw.send(F.Hello(version=1, token=token, device="laptop"))
    error = await expect_error_and_close(raw, ErrorCode.UNAUTHENTICATED)
    assert error.message
    with pytest.raises(cc.ChatdError) as info:  # the SDK stops instead of retrying
        async with cc.connect(node.tcp, token, "laptop"):
            pass
    assert info.value.name == "UNAUTHENTICATED"


async def test_unsupported_version_is_explained(node: Node) -> None:
    raw = await Raw.open(node.server.tcp_port)
    body = msgpack.packb({"t": 1, "v": 7, "tok": node.token("alice")})
    await raw.send_bytes(len(body).to_bytes(4, "big") + body)
    error = await expect_error_and_close(raw, ErrorCode.UNSUPPORTED_VERSION)
    assert "7" in error.message and "1" in error.message


async def test_forged_sender_field_is_ignored(node: Node) -> None:
    raw = await Raw.open(node.server.tcp_port)
    await raw.hello(node.token("mallory"))
    body = msgpack.packb({"t": 10, "id": "f1", "to": "bob", "b": b"I am alice",
                          "f": "alice", "from": "alice", "fd": "phone"})
    await raw.send_bytes(len(body).to_bytes(4, "big") + body)
    sent = await raw.recv_until(F.Sent)
    assert isinstance(sent, F.Sent) and sent.conv == "d:bob:mallory"
    async with node.connect("bob") as bob:
        m = await bob.next_event(cc.Message)
        assert isinstance(m, cc.Message) and m.sender == "mallory" and m.device == "default"


async def test_unknown_user_and_over_long_body_are_per_message_errors(node: Node) -> None:
    async with node.connect("alice") as alice:
        with pytest.raises(cc.ChatdError) as info:
            await alice.send("nobody", "hello?")
        assert info.value.name == "UNKNOWN_TARGET"
        with pytest.raises(cc.ChatdError) as info:
            await alice.send("bob", b"x" * (MAX_BODY_SIZE + 1))
        assert info.value.name == "TOO_LARGE"
        ack = await alice.send("bob", b"x" * MAX_BODY_SIZE)  # the connection carries on
        assert ack.seq == 1


async def test_flood_is_rate_limited_and_sdk_retries(start_node: StartNode) -> None:
    node = await start_node(send_rate=50.0, send_burst=10.0)
    await node.add_users("alice", "bob")
    raw = await Raw.open(node.server.tcp_port)
    await raw.hello(node.token("alice"))
    for i in range(40):
        await raw.send(F.Send(id=f"fl{i}", to="bob", body=b"spam"))
    replies: list[object] = []
    while len(replies) < 40:
        frame = await raw.recv()
        if isinstance(frame, (F.Sent, F.Error)):
            replies.append(frame)
    limited = [r for r in replies if isinstance(r, F.Error)]
    sent = [r for r in replies if isinstance(r, F.Sent)]
    assert len(sent) >= 10 and limited
    assert all(r.code == ErrorCode.RATE_LIMITED and r.retry_ms and r.ref for r in limited)
    # the SDK waits retry_ms and sends again: every message ends up SENT exactly once
    async with node.connect("alice", "sdk") as alice:
        acks = [await alice.send("bob", f"n{i}") for i in range(30)]
    assert len({a.seq for a in acks}) == 30


async def test_silent_connections_time_out(start_node: StartNode) -> None:
    node = await start_node(auth_timeout=0.5, idle_timeout=0.8, frame_timeout=0.3)
    await node.add_users("alice")
    silent = await Raw.open(node.server.tcp_port)  # never says hello
    await expect_error_and_close(silent, ErrorCode.TIMEOUT)
    idle = await Raw.open(node.server.tcp_port)
    await idle.hello(node.token("alice"))
    await idle.recv_until(F.Synced)
    error = await expect_error_and_close(idle, ErrorCode.TIMEOUT)
    assert "idle" in error.message
    loris = await Raw.open(node.server.tcp_port)  # a frame that never completes
    await loris.hello(node.token("alice"), device="loris")
    await loris.recv_until(F.Synced)
    await loris.send_bytes(b"\x00\x00")
    error = await expect_error_and_close(loris, ErrorCode.TIMEOUT)
    assert "frame not completed" in error.message


async def test_slow_consumer_is_disconnected_and_loses_nothing(start_node: StartNode) -> None:
    node = await start_node(max_queue=50, send_rate=1e6, send_burst=1e6)
    await node.add_users("alice", "bob")
    slow = await Raw.open(node.server.tcp_port)
    await slow.hello(node.token("bob"), device="phone")
    await slow.recv_until(F.Synced)
    # bob reads nothing while alice sends more than his socket buffers and queue hold
    body = b"y" * 8000
    n = 400
    frames = []

    async def read_once_cut_off() -> None:  # (within the server's 1 s grace for the error)
        with trio.fail_after(30):  # alice's sends are done long before: no cut-off is a bug
            while not node.server.stats["slow_consumers"]:
                await trio.sleep(0.01)
        while (f := await slow.recv()) is not None:
            frames.append(f)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_once_cut_off)
        async with node.connect("alice") as alice:
            for i in range(n):
                await alice.send("bob", body + str(i).encode())
    assert node.server.stats["slow_consumers"] == 1
    errors = [f for f in frames if isinstance(f, F.Error)]
    assert [e.code for e in errors] == [ErrorCode.SLOW_CONSUMER]
    got = [f for f in frames if isinstance(f, F.Deliver)]
    assert len(got) < n
    async with node.connect("bob", "phone") as bob:  # back: every message, in order
        seqs = []
        with trio.fail_after(20):
            while len(seqs) < n:
                m = await bob.next_event(cc.Message)
                assert isinstance(m, cc.Message)
                seqs.append(m.seq)
        assert seqs == list(range(1, n + 1))


@pytest.mark.parametrize("writes", [1, 2])
async def test_ack_then_read_gives_delivered_then_read(node: Node, writes: int) -> None:
    async with node.connect("alice") as alice:
        sent = await alice.send("bob", "tick tick")
        bob = await Raw.open(node.server.tcp_port)
        await bob.hello(node.token("bob"))
        deliver = await bob.recv_until(F.Deliver)
        assert isinstance(deliver, F.Deliver)
        ack = bob.conn.send(F.Ack(upto=deliver.q))
        read = bob.conn.send(F.Read(conv=deliver.conv, upto=deliver.seq))
        if writes == 1:
            await bob.send_bytes(ack + read)
        else:  # two reads on the server: the Ack is stored beside the reader
            await bob.send_bytes(ack)
            await bob.send_bytes(read)
        with trio.fail_after(5):
            first = await alice.next_event(cc.Delivered, cc.Read)
            second = await alice.next_event(cc.Delivered, cc.Read)
        assert isinstance(first, cc.Delivered) and isinstance(second, cc.Read)
        assert first.seqs == second.seqs == (sent.seq,)


async def test_websocket_text_message_is_malformed(node: Node) -> None:
    from trio_websocket import ConnectionClosed, open_websocket_url

    from chatd.protocol import Connection, Framing, Role

    async with open_websocket_url(node.ws) as ws:
        conn = Connection(Role.CLIENT, Framing.MESSAGE)
        await ws.send_message(conn.send(F.Hello(version=1, token=node.token("alice"))))
        conn.receive_data(await ws.get_message())
        assert isinstance(conn.next_event(), F.Welcome)
        await ws.send_message("{\"t\": 10}")  # text, not a binary frame
        frames = []
        with trio.fail_after(5):
            try:
                while True:
                    conn.receive_data(await ws.get_message())
                    frames.append(conn.next_event())
            except ConnectionClosed:
                pass
        errors = [f for f in frames if isinstance(f, F.Error)]
        assert [e.code for e in errors] == [ErrorCode.MALFORMED]
        assert "binary" in errors[0].message
    await still_serving(node)


async def test_sdk_fails_over_to_the_next_url(node: Node) -> None:
    import socket

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        dead = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    async with cc.connect([dead, node.tcp], node.token("alice")) as alice:
        assert alice.url == node.tcp
        ack = await alice.send("bob", "via the second url")
        assert ack.seq == 1


async def test_a_newer_connection_of_the_same_device_replaces_the_old(node: Node) -> None:
    old = await Raw.open(node.server.tcp_port)
    await old.hello(node.token("alice"), "phone")
    await old.recv_until(F.Synced)
    new = await Raw.open(node.server.tcp_port)
    await new.hello(node.token("alice"), "phone")
    last = []
    while (f := await old.recv()) is not None:
        last.append(f)
    assert [type(f) for f in last] == [F.Goodbye] and "replaced" in last[0].reason
    await new.send(F.Ping(nonce=5))
    assert await new.recv_until(F.Pong) == F.Pong(nonce=5)
