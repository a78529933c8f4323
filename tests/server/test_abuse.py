"""What an attacker (or a buggy client) can do to a node, and what the node does instead: no
client can end the node, bloat its memory past its budgets, starve others, register users
or read other people's data. Each test failed on the code before the fix it guards."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import chatd_client as cc
import msgpack
import pytest
import trio

from chatd.protocol import ErrorCode
from chatd.protocol import frames as F
from chatd.protocol.limits import MAX_HELLO_SIZE
from chatd.server.limits import RateLimiter
from chatd.store import StoreError

from .conftest import Node, StartNode, messages
from .raw import Raw
from .test_bad_input import still_serving
from .test_workers import workers as workers  # (the fixture)


async def frames_until_closed(raw: Raw, timeout: float = 10) -> list[F.Frame]:
    out: list[F.Frame] = []
    with trio.fail_after(timeout):
        while (f := await raw.recv(timeout)) is not None:
            out.append(f)
    return out


async def signed_in(node: Node, user: str, device: str = "default") -> Raw:
    raw = await Raw.open(node.server.tcp_port)
    await raw.hello(node.token(user), device=device)
    await raw.recv_until(F.Synced)
    return raw


# ---- 1. nothing one connection does ends the node --------------------------------------------

async def test_goodbye_after_requests_in_one_write_is_quiet(
        node: Node, caplog: pytest.LogCaptureFixture) -> None:
    raw = await signed_in(node, "alice")
    await raw.send_bytes(raw.conn.send(F.Ping(nonce=7)) + raw.conn.send(F.Goodbye(code=0)))
    frames = await frames_until_closed(raw)
    assert not [f for f in frames if isinstance(f, F.Error)], frames
    assert "connection failed" not in caplog.text
    await still_serving(node)


async def test_presence_for_a_connection_that_said_goodbye_does_not_end_the_node(
        node: Node) -> None:
    """A watcher of bob sends many Reads then Goodbye in one write; while the Reads are
    handled, bob comes and goes: the announcements meet a closed connection."""
    async with node.connect("alice") as alice:  # a chat to mark read
        await alice.send("bob", "hi")
    raw = await signed_in(node, "alice", "phone")
    await raw.send(F.PresenceSubscribe(users=("bob",)))
    await raw.recv_until(F.Presence)
    read = raw.conn.send(F.Read(conv="d:alice:bob", upto=1))
    await raw.send_bytes(read * 400 + raw.conn.send(F.Goodbye(code=0)))

    async def bob_comes_and_goes() -> None:
        for _ in range(20):
            async with node.connect("bob") as bob:
                await bob.send("alice", "here")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(bob_comes_and_goes)
        await frames_until_closed(raw)
    await still_serving(node)


async def test_a_failing_store_does_not_end_the_presence_sweep(
        start_node: StartNode, monkeypatch: pytest.MonkeyPatch) -> None:
    node = await start_node(presence_threshold=0.3)
    await node.add_users("alice", "bob")
    store = node.server.store
    real = store.set_last_seen
    calls: list[dict[str, int]] = []

    async def down(seen: dict[str, int]) -> None:
        calls.append(seen)
        raise StoreError("store unavailable (test)")

    monkeypatch.setattr(store, "set_last_seen", down)
    async with node.connect("alice") as alice:
        await alice.send("bob", "going idle now")
        with trio.fail_after(10):  # alice goes idle: the sweep's write fails, more than once
            while len(calls) < 2:
                await trio.sleep(0.05)
    assert node.server.stats["failed_presence"] >= 2
    monkeypatch.setattr(store, "set_last_seen", real)
    with trio.fail_after(10):  # the store is back: the last seen that failed is written
        while (await store.presence_of("alice"))[0] is None:
            await trio.sleep(0.05)
    await still_serving(node)


# ---- 3. memory per connection is bounded in bytes, answers included --------------------------

async def test_history_requests_that_are_never_read_are_refused(start_node: StartNode) -> None:
    node = await start_node(max_outbound=256 * 1024)
    await node.add_users("alice", "bob")
    async with node.connect("alice") as alice:
        for i in range(60):
            await alice.send("bob", b"x" * 4000 + str(i).encode())
    raw = await signed_in(node, "alice", "tablet")
    history = b"".join(raw.conn.send(F.History(rid=i, conv="d:alice:bob", limit=200))
                       for i in range(1, 301))
    with trio.move_on_after(5):  # the kernel takes what it can; the node must refuse the rest
        await raw.send_bytes(history)
    with trio.fail_after(10):
        while not node.server.stats["refused_backed_up"]:
            await trio.sleep(0.05)
    for s in node.server.sessions():
        assert s._out_bytes <= node.config.max_outbound + 1024 * 1024  # one page at most over
    frames = []
    with trio.move_on_after(3):
        while (f := await raw.recv()) is not None:
            frames.append(f)
    refused = [f for f in frames if isinstance(f, F.Error)]
    assert refused and {e.code for e in refused} == {ErrorCode.RATE_LIMITED}, refused[:3]
    assert all(e.rid is not None and e.retry_ms for e in refused)


async def test_a_device_that_does_not_read_big_messages_is_cut_at_its_byte_budget(
        start_node: StartNode) -> None:
    node = await start_node(max_outbound=1024 * 1024)
    await node.add_users("alice", "bob")
    slow = await signed_in(node, "bob", "phone")
    n = 150  # 9 MB: far fewer frames than max_queue, far more bytes than the budget
    async with node.connect("alice") as alice:
        for i in range(n):
            await alice.send("bob", b"z" * 60_000 + str(i).encode())
            if node.server.stats["slow_consumers"]:
                break
    assert node.server.stats["slow_consumers"] == 1
    frames = await frames_until_closed(slow)  # told why, though it read nothing until now
    errors = [f for f in frames if isinstance(f, F.Error)]
    assert [e.code for e in errors] == [ErrorCode.SLOW_CONSUMER]
    async with node.connect("alice") as alice:
        for i in range(len(frames), n):
            await alice.send("bob", b"z" * 60_000 + str(i).encode())
    async with node.connect("bob", "phone") as bob:  # nothing lost, in order
        got = await messages(bob, n, timeout=30)
    assert [m.seq for m in got] == list(range(1, n + 1))


# ---- 4. before authentication a client costs almost nothing -----------------------------------

async def test_a_large_hello_is_refused_before_it_is_read(node: Node) -> None:
    raw = await Raw.open(node.server.tcp_port)
    body = msgpack.packb({"t": 1, "v": 1, "tk": "x" * (MAX_HELLO_SIZE + 10), "d": "p"})
    await raw.send_bytes(len(body).to_bytes(4, "big") + body[:100])
    frame = await raw.recv()
    assert isinstance(frame, F.Error) and frame.code == ErrorCode.TOO_LARGE, frame
    assert await raw.closed()


async def signing_in(node: Node, n: int) -> list[Raw]:
    """n connections that have not said Hello, once the node counts them."""
    idle = [await Raw.open(node.server.tcp_port) for _ in range(n)]
    with trio.fail_after(5):
        while node.server._unauthenticated < n:
            await trio.sleep(0.01)
    return idle


async def refused_for_now(raw: Raw) -> None:
    frame = await raw.recv()
    assert isinstance(frame, F.Error) and frame.code == ErrorCode.RATE_LIMITED, frame
    assert await raw.closed()


async def test_connections_that_do_not_sign_in_are_capped(start_node: StartNode) -> None:
    node = await start_node(max_unauthenticated=5)
    await node.add_users("alice", "bob")
    idle = await signing_in(node, 5)
    await refused_for_now(await Raw.open(node.server.tcp_port))
    await idle[0].hello(node.token("alice"))  # signing in frees a place
    await still_serving(node)
    for r in idle:
        await r.aclose()


async def test_one_address_cannot_take_every_place_for_signing_in(
        start_node: StartNode) -> None:
    node = await start_node(max_unauthenticated_per_address=3)
    await node.add_users("alice", "bob")
    idle = await signing_in(node, 3)
    await refused_for_now(await Raw.open(node.server.tcp_port))  # the same address
    other = await trio.open_tcp_stream("127.0.0.1", node.server.tcp_port,
                                       local_address="127.0.0.2")  # another address: served
    await Raw(other).hello(node.token("bob"))
    for r in idle:
        await r.aclose()


async def test_a_rate_limited_sender_is_not_read_for_a_while(
        start_node: StartNode) -> None:
    """Past its rate, a connection's further sends wait in the kernel (TCP backpressure)
    instead of being read, decoded and refused one by one."""
    node = await start_node(send_rate=2.0, send_burst=5)
    await node.add_users("alice", "bob")
    raw = await signed_in(node, "alice")
    await raw.send_bytes(b"".join(raw.conn.send(F.Send(id=f"s{i}", to="bob", body=b"x"))
                                  for i in range(6)))  # one over the burst
    refused = await raw.recv_until(F.Error)
    assert isinstance(refused, F.Error) and refused.code == ErrorCode.RATE_LIMITED
    await raw.send_bytes(b"".join(raw.conn.send(F.Send(id=f"t{i}", to="bob", body=b"x"))
                                  for i in range(100)))
    await trio.sleep(0.2)  # (within the pause: nothing of these was read)
    assert node.server.stats["rate_limited"] == 1


async def test_a_frame_of_a_million_empty_arrays_is_refused_cheaply(node: Node) -> None:
    raw = await signed_in(node, "alice")
    body = msgpack.packb({"t": 10, "x": [[[]] * 4096] * 250})
    await raw.send_bytes(len(body).to_bytes(4, "big") + body)
    frame = await raw.recv()
    assert isinstance(frame, F.Error) and frame.code == ErrorCode.MALFORMED, frame
    assert "maps and arrays" in frame.message
    await still_serving(node)


# ---- 5. limits per user, across connections, for every request --------------------------------

async def test_send_rate_is_per_user_across_connections(start_node: StartNode) -> None:
    node = await start_node(send_rate=1.0, send_burst=20)
    await node.add_users("alice", "bob")
    phone, laptop = await signed_in(node, "alice", "phone"), await signed_in(node, "alice", "pc")
    for raw, name in ((phone, "p"), (laptop, "l")):
        await raw.send_bytes(b"".join(raw.conn.send(F.Send(id=f"{name}{i}", to="bob",
                                                           body=b"spam")) for i in range(30)))
    answers: list[F.Frame] = []
    for raw in (phone, laptop):
        mine = 0
        while mine < 30:
            f = await raw.recv()
            if isinstance(f, (F.Sent, F.Error)):
                answers.append(f)
                mine += 1
    sent = [f for f in answers if isinstance(f, F.Sent)]
    limited = [f for f in answers if isinstance(f, F.Error)]
    assert 20 <= len(sent) <= 22, answers  # the burst, and what refilled meanwhile
    assert {e.code for e in limited} == {ErrorCode.RATE_LIMITED}
    assert all(isinstance(e, F.Error) and e.retry_ms and e.ref for e in limited)


async def test_group_creation_is_rate_limited(start_node: StartNode) -> None:
    node = await start_node(group_create_rate=0.01, group_create_burst=3)
    await node.add_users("alice", "bob")
    async with node.connect("alice") as alice:
        for i in range(3):
            await alice.create_group(f"g{i}", ["bob"])
        with pytest.raises(cc.ChatdError) as err:
            await alice.create_group("one too many", ["bob"])
    assert err.value.code == ErrorCode.RATE_LIMITED


async def test_every_request_type_is_rate_limited(start_node: StartNode) -> None:
    node = await start_node(request_rate=0.01, request_burst=5)
    await node.add_users("alice", "bob")
    async with node.connect("alice") as alice:
        for _ in range(5):
            await alice.last_seen("bob")
        with pytest.raises(cc.ChatdError) as err:
            await alice.my_groups()
        assert err.value.code == ErrorCode.RATE_LIMITED
        await alice.send("bob", "sends have their own limit")


async def test_watching_is_capped_and_only_for_users_that_exist(start_node: StartNode) -> None:
    node = await start_node(max_watch=2)
    await node.add_users("alice", "bob", "carol", "dave")
    raw = await signed_in(node, "alice")
    await raw.send(F.PresenceSubscribe(users=("bob", "nobody-by-that-name")))
    error = await raw.recv_until(F.Error)
    assert isinstance(error, F.Error) and error.code == ErrorCode.UNKNOWN_TARGET, error
    assert "nobody-by-that-name" in error.message
    await raw.send(F.PresenceSubscribe(users=("bob", "carol", "dave")))
    error = await raw.recv_until(F.Error)
    assert isinstance(error, F.Error) and error.code == ErrorCode.INVALID, error
    await raw.send(F.PresenceSubscribe(users=("bob", "carol")))
    seen = {(await raw.recv_until(F.Presence)).user for _ in range(2)}  # type: ignore[union-attr]
    assert seen == {"bob", "carol"}


async def test_repeated_acks_cost_the_store_nothing(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    store = node.server.store
    real = store.ack
    calls: list[int] = []

    async def counted(user: str, device: str, upto: int, ts: int, **kw: bool) -> object:
        calls.append(upto)
        return await real(user, device, upto, ts, **kw)

    monkeypatch.setattr(store, "ack", counted)
    async with node.connect("alice") as alice:
        await alice.send("bob", "ack me once")
    raw = await Raw.open(node.server.tcp_port)
    await raw.hello(node.token("bob"))
    deliver = await raw.recv_until(F.Deliver)
    assert isinstance(deliver, F.Deliver)
    for _ in range(50):  # one write each: no coalescing on the server's side
        await raw.send(F.Ack(upto=deliver.q))
        await raw.send(F.Ping(nonce=1))
        await raw.recv_until(F.Pong)
    assert calls == [deliver.q]


def test_a_rate_is_shared_between_workers_and_buckets_are_forgotten_when_full() -> None:
    per_worker = RateLimiter(rate=10, burst=100, share=2)
    assert sum(1 for _ in range(80) if per_worker.take("alice", 0.0) == 0) == 50
    assert per_worker.take("alice", 0.0) == 200  # ms until the next token (5 a second)
    per_worker.take("bob", 0.0)
    per_worker.prune(5.0)  # bob's bucket is full again, alice's is not
    assert len(per_worker) == 1
    per_worker.prune(100.0)
    assert len(per_worker) == 0


# ---- 6. files readable by the node's user only -------------------------------------------------

async def test_data_dir_and_files_are_private_whatever_the_umask(
        start_node: StartNode, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    old = os.umask(0o022)
    try:
        node = await start_node()
        await node.add_users("alice", "bob")
        async with node.connect("alice") as alice:
            await alice.send("bob", "private")
    finally:
        os.umask(old)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = [p for p in data.rglob("*") if p.is_file() and not p.name.endswith(".sock")]
    if node.config.store_url.startswith("sqlite"):
        assert {p.name for p in files} >= {"chatd.db", "chatd.db-wal"}
    assert files
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


# ---- 7. requests name real conversations, and register nobody ---------------------------------

async def test_set_mode_on_a_made_up_conversation_registers_nobody(node: Node) -> None:
    async with node.connect("alice") as alice:
        with pytest.raises(cc.ChatdError) as err:
            await alice.set_mode("d:alice:zz-ghost", cc.Mode.PERMANENT)
        assert err.value.code == ErrorCode.UNKNOWN_TARGET
        assert not await node.server.store.has_user("zz-ghost")
        with pytest.raises(cc.ChatdError) as err:
            await alice.send("zz-ghost", "anyone?")
        assert err.value.code == ErrorCode.UNKNOWN_TARGET


async def test_non_canonical_conversation_ids_are_refused(node: Node) -> None:
    async with node.connect("bob") as bob:
        with pytest.raises(cc.ChatdError) as err:  # (the server writes d:alice:bob)
            await bob.set_mode("d:bob:alice", cc.Mode.PERMANENT)
        assert err.value.code == ErrorCode.INVALID
        with pytest.raises(cc.ChatdError) as err:
            await bob.history("d:bob:alice")
        assert err.value.code == ErrorCode.INVALID
    async with node.connect("alice") as alice:  # nothing was put in alice's chats
        with trio.move_on_after(0.5):
            event = await alice.next_event(cc.Message)
            pytest.fail(f"alice got {event}")


async def test_a_mode_change_in_a_one_to_one_chat_is_pushed_live(node: Node) -> None:
    async with node.connect("alice") as alice, node.connect("alice", "tablet") as tablet, \
            node.connect("bob") as bob:
        await alice.send("bob", "let's keep this one")
        for c in (bob, tablet):
            await messages(c, 1)
        await alice.set_mode("d:alice:bob", cc.Mode.PERMANENT)
        for c in (bob, tablet):  # the other side, and alice's other device
            (m,) = await messages(c, 1, timeout=5)
            assert m.event == {"kind": "mode", "mode": cc.Mode.PERMANENT, "ttl": 0,
                               "by": "alice"}, m


# ---- 8. privacy holds on every worker at once --------------------------------------------------

async def test_hiding_last_seen_holds_on_every_worker(
        workers: list[Node]) -> None:
    w0, w1 = workers
    async with w0.connect("alice") as alice:
        await alice.send("bob", "so you know I was here")
    async with w1.connect("carol") as carol0, w0.connect("carol", "tab") as carol1:
        for c in (carol0, carol1):  # both workers read (and cache) alice's setting
            assert (await c.last_seen("alice")).last_seen is not None
        async with w0.connect("alice") as alice:
            await alice.hide_last_seen()
        with trio.fail_after(5):
            for c in (carol0, carol1):
                while (await c.last_seen("alice")).last_seen is not None:
                    await trio.sleep(0.02)


async def test_a_watch_answer_is_never_older_than_an_announcement(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """bob subscribes to alice while she comes online: his answer (read from the store, slow
    here) must not arrive after the 'online' announcement and say offline."""
    store = node.server.store
    real = store.presence_of

    async def slow(user: str) -> tuple[int | None, bool]:
        await trio.sleep(0.5)
        return await real(user)

    monkeypatch.setattr(store, "presence_of", slow)
    async with node.connect("bob") as bob, trio.open_nursery() as nursery:
        nursery.start_soon(bob.watch, ["alice"])
        await trio.sleep(0.1)
        async with node.connect("alice") as alice:
            await alice.send("bob", "hi")
            states = []
            with trio.move_on_after(1.5):
                while True:
                    p = await bob.next_event(cc.Presence)
                    assert isinstance(p, cc.Presence)
                    states.append(p.online)
            assert states and states[-1], states


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "chatd")


async def test_the_sdk_keeps_reading_while_it_sends_a_rate_limited_burst_again(
        start_node: StartNode) -> None:
    """Each refused send is sent again after its retry_ms by a task of its own: the SDK's
    reader does not sleep meanwhile (it used to, one retry delay after another), so what
    arrives for the app is not held up; and each message is stored once."""
    node = await start_node(send_rate=5.0, send_burst=5)
    await node.add_users("alice", "bob")
    async with node.connect("alice") as alice, node.connect("bob") as bob:
        acks: list[cc.SentAck] = []

        async def one(i: int) -> None:
            acks.append(await alice.send("bob", f"burst {i}"))

        async with trio.open_nursery() as nursery:
            for i in range(25):  # 20 over the burst: about 4 s of refill
                nursery.start_soon(one, i)
            with trio.fail_after(10):
                while not node.server.stats["rate_limited"]:
                    await trio.sleep(0.01)
            await bob.send("alice", "are you spamming me?")
            with trio.fail_after(1):  # while alice's sends wait for tokens
                (m,) = await messages(alice, 1)
            assert m.text == "are you spamming me?"
            assert len(acks) < 25
        assert len({a.seq for a in acks}) == 25  # each stored once
        got = await messages(bob, 25, timeout=20)
        assert len({m.text for m in got}) == 25


async def test_a_connection_waiting_on_a_slow_store_is_not_idle(
        start_node: StartNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweeper's idle timeout is for silent devices: one whose send waits on the store
    longer than the timeout is busy, not idle (closing it made the client send again)."""
    node = await start_node(idle_timeout=0.5)
    await node.add_users("alice", "bob")
    store = node.server.store
    real = store.append_messages

    async def slow(msgs: list[object]) -> object:
        await trio.sleep(1.5)
        return await real(msgs)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "append_messages", slow)
    raw = await signed_in(node, "alice")
    await raw.send(F.Send(id="slow-1", to="bob", body=b"take your time"))
    sent = await raw.recv(timeout=10)
    assert isinstance(sent, F.Sent), sent


def test_a_node_with_workers_writes_private_files_whatever_the_umask(tmp_path: Path) -> None:
    """The workers' sockets and metrics files too (written by a library, under the umask)."""
    import subprocess
    import sys

    from bench.common import free_port, wait_ready

    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatd.cli", "serve", "--workers", "2", "--data-dir", str(data),
         "--tcp-port", str(free_port()), "--ws-port", "-1", "--metrics-port", "0"],
        stderr=subprocess.PIPE, preexec_fn=lambda: os.umask(0o022))
    try:
        wait_ready(proc)
        paths = [data, *data.rglob("*")]
        assert any(p.parent.name == "metrics" for p in paths), paths
        loose = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in paths
                 if stat.S_IMODE(p.stat().st_mode) & 0o077}
        assert not loose
    finally:
        proc.terminate()
        proc.wait(20)
