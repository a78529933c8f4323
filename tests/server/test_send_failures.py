"""A send the store fails (e.g. the chat's owner, another node, did not answer in time) gets a
retryable per-send error and the connection stays open; the same client id sent again is
stored once (docs/PROTOCOL.md section 3, docs/CASSANDRA.md "Conversation owners")."""

from __future__ import annotations

from typing import Any

import chatd_client as cc
import pytest
import trio

from chatd.core import NewMessage
from chatd.protocol import ErrorCode
from chatd.protocol import frames as F
from chatd.server import handlers
from chatd.store import StoreError

from .conftest import Node, messages
from .raw import Raw

OWNER_SILENT = "node n2, the owner, did not answer within 2 s: send it again"


class Failing:
    """The store's append_messages raises StoreError while `on` (`times` more calls, if set),
    after `delay` s (an owner slow to answer); applied: it stores the batch first (the owner
    did it, its answer was lost)."""

    def __init__(self, node: Node, monkeypatch: pytest.MonkeyPatch, applied: bool,
                 times: int | None = None, delay: float = 0.0) -> None:
        self.on, self.times, self.calls = True, times, 0
        store = node.server.store
        real = store.append_messages

        async def append_messages(msgs: list[NewMessage]) -> Any:
            if not self.on or self.times == 0:
                return await real(msgs)
            self.calls += 1
            if self.times is not None:
                self.times -= 1
            if applied:
                await real(msgs)
            await trio.sleep(delay)
            raise StoreError(OWNER_SILENT)

        monkeypatch.setattr(store, "append_messages", append_messages)


async def answers(raw: Raw, ids: set[str]) -> dict[str, F.Frame]:
    """The Sent or Error for each client id in ids (other frames skipped)."""
    got: dict[str, F.Frame] = {}
    while len(got) < len(ids):
        f = await raw.recv()
        assert f is not None, f"closed; answers so far {got}"
        if isinstance(f, F.Sent) and f.id in ids:
            got[f.id] = f
        elif isinstance(f, F.Error):
            assert f.ref in ids, f
            got[f.ref] = f
    return got


@pytest.mark.parametrize("applied", [False, True], ids=["not-applied", "applied"])
async def test_a_failed_send_batch_gets_retryable_errors_and_the_connection_stays_open(
        node: Node, monkeypatch: pytest.MonkeyPatch, applied: bool) -> None:
    raw = await Raw.open(node.server.tcp_port)
    await raw.hello(node.token("alice"), device="phone")
    await raw.recv_until(F.Synced)
    failing = Failing(node, monkeypatch, applied)
    await raw.send_bytes(raw.conn.send(F.Send(id="m1", to="bob", body=b"one"))
                         + raw.conn.send(F.Send(id="m2", to="bob", body=b"two")))
    first = await answers(raw, {"m1", "m2"})
    for cid, e in first.items():
        assert isinstance(e, F.Error), e
        assert e.code == ErrorCode.INTERNAL and e.ref == cid
        assert e.message == OWNER_SILENT
        assert e.retry_ms is not None and 0 < e.retry_ms <= 1000
    assert node.server.stats["send_failures"] == 2
    failing.on = False
    await raw.send(F.Send(id="m3", to="bob", body=b"three"))  # the same connection
    three = (await answers(raw, {"m3"}))["m3"]
    assert isinstance(three, F.Sent)
    seqs: dict[str, int] = {}
    for _ in range(2):  # sent again under the same ids, twice: stored once
        for cid in ("m1", "m2"):
            await raw.send(F.Send(id=cid, to="bob", body=b"again"))
            sent = (await answers(raw, {cid}))[cid]
            assert isinstance(sent, F.Sent), sent
            assert seqs.setdefault(cid, sent.seq) == sent.seq
    await raw.aclose()
    history = await node.server.store.history("d:alice:bob", None, 100)
    assert sorted(h.id for h in history) == ["m1", "m2", "m3"]
    bodies = {h.id: h.body for h in history}
    assert (bodies["m1"], bodies["m2"]) == ((b"one", b"two") if applied
                                            else (b"again", b"again"))


async def test_an_ack_the_store_fails_is_stored_again_and_the_connection_stays(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """An Ack the store fails twice (an inbox owner restarting) is stored again a moment
    later: the device stays connected, its cursor moves, and the sender gets DELIVERED. It
    used to end the connection at once; a device whose every new connection began with
    such an Ack could not stay connected, and its sends were cut short each time (chaos:
    a group message numbered and then held for a retry that never got through, delivered
    after five later ones)."""
    monkeypatch.setattr(handlers, "RETRY_S", 0.05)
    async with node.connect("alice") as alice, node.connect("bob") as bob:
        await bob.next_event(cc.Synced)
        real = node.server.store.ack
        failures = [StoreError("this node restarted; it numbers the chats of shard 1 again"
                               " in 1.0 s: send it again then")] * 2

        async def flaky(*args: Any, **kwargs: Any) -> Any:
            if failures:
                raise failures.pop()
            return await real(*args, **kwargs)

        monkeypatch.setattr(node.server.store, "ack", flaky)
        sent = await alice.send("bob", "hi")
        assert [m.text for m in await messages(bob, 1)] == ["hi"]
        with trio.fail_after(10):
            got = await alice.next_event(cc.Delivered)
        assert isinstance(got, cc.Delivered) and got.seqs == (sent.seq,)
        assert failures == [] and bob.reconnects == 0 and alice.reconnects == 0


async def test_a_read_the_store_fails_is_stored_again_and_the_connection_stays(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for a Read (it only raises a watermark): it used to end the connection."""
    monkeypatch.setattr(handlers, "RETRY_S", 0.05)
    async with node.connect("alice") as alice, node.connect("bob") as bob:
        await bob.next_event(cc.Synced)
        sent = await alice.send("bob", "hi")
        [m] = await messages(bob, 1)
        real = node.server.store.mark_read
        failures = [StoreError("node n1: this node restarted: send it again then")] * 2

        async def flaky(*args: Any, **kwargs: Any) -> Any:
            if failures:
                raise failures.pop()
            return await real(*args, **kwargs)

        monkeypatch.setattr(node.server.store, "mark_read", flaky)
        await bob.mark_read(m.conv, m.seq)
        with trio.fail_after(10):
            got = await alice.next_event(cc.Read)
        assert isinstance(got, cc.Read) and got.seqs == (sent.seq,)
        assert failures == [] and bob.reconnects == 0


async def test_acks_close_the_connection_when_the_store_keeps_failing(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only sends are answered one by one: an Ack the store keeps failing (past
    RETRY_FOR) ends the connection (the client reconnects and acknowledges again)."""
    monkeypatch.setattr(handlers, "RETRY_S", 0.05)
    monkeypatch.setattr(handlers, "RETRY_FOR", 0.3)
    async with node.connect("bob") as bob:
        await bob.send("alice", "hi")
    raw = await Raw.open(node.server.tcp_port)
    await raw.hello(node.token("alice"))
    deliver = await raw.recv_until(F.Deliver)
    assert isinstance(deliver, F.Deliver)

    async def down(*args: Any, **kwargs: Any) -> None:
        raise StoreError("cassandra: NoHostAvailable")

    monkeypatch.setattr(node.server.store, "ack", down)
    await raw.send(F.Ack(upto=deliver.q))
    error = await raw.recv_until(F.Error)
    assert isinstance(error, F.Error) and error.code == ErrorCode.INTERNAL and error.ref is None
    assert await raw.closed()


@pytest.mark.parametrize("applied", [False, True], ids=["not-applied", "applied"])
async def test_the_sdk_sends_again_after_a_store_failure_and_the_message_arrives_once(
        node: Node, monkeypatch: pytest.MonkeyPatch, applied: bool) -> None:
    async with node.connect("alice") as alice, node.connect("bob") as bob:
        failing = Failing(node, monkeypatch, applied, times=1)  # the second attempt works
        with trio.fail_after(10):
            ack = await alice.send("bob", "hello", id="c1")
        assert failing.calls == 1
        assert alice.reconnects == 0  # the connection stayed open
        got = await messages(bob, 1)
        assert [(m.id, m.seq, m.body) for m in got] == [("c1", ack.seq, b"hello")]
        again = await alice.send("bob", "next", id="c2")
        got = await messages(bob, 1)
        assert [(m.id, m.seq) for m in got] == [("c2", again.seq)]  # nothing came twice
        assert again.seq == ack.seq + 1


async def test_the_sdk_keeps_the_order_of_a_chats_sends_through_its_retries(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """A send that failed three times waits 2 s for its next try (its backoff); a second
    send to the same chat, made meanwhile, used to go at once and be numbered first: bob
    saw alice's messages in the opposite order (the chaos runs: 8 of 73 chats). Now it
    waits with the first, and both go again in the order alice made them. A send to
    another chat is not held."""
    async with node.connect("alice") as alice, node.connect("bob") as bob:
        await bob.next_event(cc.Synced)
        failing = Failing(node, monkeypatch, applied=False, times=3)
        acks: dict[str, Any] = {}

        async def send(to: str, text: str) -> None:
            acks[text] = await alice.send(to, text)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, "bob", "first")
            with trio.fail_after(10):  # (the third failure made, and alice's SDK told:
                while failing.times or not alice._held:  # "first" waits for its next try)
                    await trio.sleep(0.01)
            nursery.start_soon(send, "bob", "second")
            nursery.start_soon(send, "carol", "elsewhere")
            with trio.fail_after(5):
                while "elsewhere" not in acks:
                    await trio.sleep(0.01)
            assert "first" not in acks and "second" not in acks  # (the two wait their turn)
        assert (acks["first"].seq, acks["second"].seq) == (1, 2)
        got = await messages(bob, 2)
        assert [m.text for m in got] == ["first", "second"]
        assert alice.reconnects == 0


async def test_a_send_written_before_the_one_before_it_failed_goes_after_it(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """alice's first send fails in the store, slowly; her second to the same chat is
    written meanwhile, before her SDK can know, and the store is fine again when it comes.
    It used to be stored at once and numbered 1, the first, sent again, 2: bob saw them
    the other way round. The second names the first (`after`); the server refuses it for
    now, as the first was, and the SDK sends both again in the order she made them."""
    failing = Failing(node, monkeypatch, applied=False, times=1, delay=0.3)
    acks: dict[str, Any] = {}

    async def send(text: str, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        acks[text] = await alice.send("bob", text)

    async with node.connect("alice") as alice, node.connect("bob") as bob:
        await bob.next_event(cc.Synced)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(send, "first")
                while not failing.calls:  # (its batch is in the store, failing)
                    await trio.sleep(0.01)
                await nursery.start(send, "second")
        assert (acks["first"].seq, acks["second"].seq) == (1, 2)
        got = await messages(bob, 2)
        assert [(m.seq, m.text) for m in got] == [(1, "first"), (2, "second")]
        assert alice.reconnects == 0 and not alice._last_send  # (nothing left behind)


async def test_the_sdks_sends_after_one_it_gave_up_on_follow_what_that_one_followed() -> None:
    """A send the SDK gave up on (refused for good, or failed for send_retry_for) is never
    sent again: the sends that named it (`after`) would be refused for now until they fail
    too. They name what it named instead. (SDK logic alone: no server.)"""
    from chatd_client.client import _Waiter

    client = cc.Client(["tcp://127.0.0.1:9"], "token")
    for cid, after in (("c1", None), ("c2", "c1"), ("c3", "c2"), ("x", "elsewhere")):
        client._pending[cid] = _Waiter(F.Send(id=cid, to="bob", after=after))
    await client._on_error(F.Error(code=ErrorCode.TOO_LARGE, message="too large", ref="c2"))
    frames = {cid: w.frame for cid, w in client._pending.items()}
    names = {cid: f.after for cid, f in frames.items() if isinstance(f, F.Send)}
    assert names == {"c1": None, "c3": "c1", "x": "elsewhere"}


async def test_a_send_after_a_refused_one_is_refused_until_that_one_is_sent_again(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """The protocol's side of it, on one connection: a Send whose `af` names a send refused
    for now gets the same answer (code, delay); once that one is sent again and taken, the
    later one goes. Sends naming nothing refused, or nothing (`af` absent), are not held."""
    raw = await Raw.open(node.server.tcp_port)
    await raw.hello(node.token("alice"), device="phone")
    await raw.recv_until(F.Synced)
    failing = Failing(node, monkeypatch, applied=False, times=1)
    await raw.send(F.Send(id="a", to="bob", body=b"a"))
    refused = (await answers(raw, {"a"}))["a"]
    assert isinstance(refused, F.Error) and refused.retry_ms is not None
    assert failing.times == 0  # (the store takes everything from now on)
    await raw.send(F.Send(id="b", to="bob", body=b"b", after="a"))
    await raw.send(F.Send(id="c", to="bob", body=b"c", after="b"))  # (after b, after a)
    await raw.send(F.Send(id="x", to="carol", body=b"x", after="unknown"))
    held = await answers(raw, {"b", "c", "x"})
    for cid in ("b", "c"):
        e = held[cid]
        assert isinstance(e, F.Error), e
        assert (e.code, e.retry_ms) == (refused.code, refused.retry_ms)
        assert "goes first" in e.message
    assert isinstance(held["x"], F.Sent)
    for cid, after in (("a", None), ("b", "a"), ("c", "b")):
        await raw.send(F.Send(id=cid, to="bob", body=cid.encode(), after=after))
        sent = (await answers(raw, {cid}))[cid]
        assert isinstance(sent, F.Sent), sent
    await raw.aclose()
    history = await node.server.store.history("d:alice:bob", None, 10)
    assert sorted((h.seq, h.id) for h in history) == [(1, "a"), (2, "b"), (3, "c")]


async def test_the_sdk_gives_up_on_a_send_the_store_keeps_failing(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    async with node.connect("alice", send_retry_for=1.0) as alice:
        failing = Failing(node, monkeypatch, applied=False)
        with trio.fail_after(10), pytest.raises(cc.ChatdError) as info:
            await alice.send("bob", "lost?", id="c1")
        assert info.value.code == ErrorCode.INTERNAL and "did not answer" in info.value.message
        assert failing.calls >= 2 and alice.reconnects == 0  # tried again, then gave up
        failing.on = False
        ack = await alice.send("bob", "lost?", id="c1")  # the caller may send it again
        assert ack.seq == 1 and alice.reconnects == 0


async def test_each_send_of_a_failed_batch_is_answered_once(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """A send refused by its check keeps its own error; a store failure while checking a send
    (here its group's membership) fails that send and the rest of the batch, retryably."""
    async with node.connect("alice") as alice:
        gid = (await alice.create_group("team", ["bob"])).group
    raw = await Raw.open(node.server.tcp_port)
    await raw.hello(node.token("alice"), device="phone")
    await raw.recv_until(F.Synced)
    failing = Failing(node, monkeypatch, applied=False)
    await raw.send_bytes(raw.conn.send(F.Send(id="n1", to="nobody", body=b"?"))
                         + raw.conn.send(F.Send(id="m1", to="bob", body=b"one")))
    got = await answers(raw, {"n1", "m1"})
    codes = {cid: (e.code, e.retry_ms) for cid, e in got.items() if isinstance(e, F.Error)}
    assert codes == {"m1": (ErrorCode.INTERNAL, 500), "n1": (ErrorCode.UNKNOWN_TARGET, None)}
    failing.on = False
    store = node.server.store
    real_group = store.group

    async def group_down(group: str) -> Any:
        monkeypatch.setattr(store, "group", real_group)  # (once)
        raise StoreError("cassandra: OperationTimedOut")

    monkeypatch.setattr(store, "group", group_down)
    await raw.send_bytes(raw.conn.send(F.Send(id="g1", group=gid, body=b"hi all"))
                         + raw.conn.send(F.Send(id="m2", to="bob", body=b"two")))
    got = await answers(raw, {"g1", "m2"})
    for cid in ("g1", "m2"):
        e = got[cid]
        assert isinstance(e, F.Error) and e.code == ErrorCode.INTERNAL and e.retry_ms, e
    for cid in ("g1", "m2", "m1"):  # the same connection: sent again, stored
        await raw.send(F.Send(id=cid, group=gid if cid == "g1" else None,
                              to=None if cid == "g1" else "bob", body=b"again"))
        assert isinstance((await answers(raw, {cid}))[cid], F.Sent)
    await raw.aclose()


def slow_first_send(node: Node, monkeypatch: pytest.MonkeyPatch, seconds: float
                    ) -> trio.Event:
    """The node's first store call for sends takes `seconds` more (an owner taking its
    time); the Event is set when it starts."""
    real = node.server.store.append_messages
    first = trio.Event()

    async def slow_once(msgs: list[NewMessage]) -> Any:
        if not first.is_set():
            first.set()
            await trio.sleep(seconds)
        return await real(msgs)

    monkeypatch.setattr(node.server.store, "append_messages", slow_once)
    return first


@pytest.mark.parametrize("start_node", ["sqlite"], indirect=True)  # (the session's logic)
async def test_a_send_that_waits_long_keeps_its_connection(
        start_node: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A send whose store call takes longer than the client's read timeout (a chat whose
    owner does not answer yet, up to the forward's timeouts): the connection's reader waits
    for it and reads no Ping meanwhile, so the node itself pings the device while it waits.
    The client keeps its connection and gets its Sent on it (before, it gave up on the node
    with TooSlowError after heartbeat x 2 + 5 s and sent again through a new connection)."""
    node: Node = await start_node(heartbeat=0.5)  # the SDK waits 6 s for a frame
    await node.add_users("alice", "bob")
    slow_first_send(node, monkeypatch, 8)
    async with node.connect("alice", "phone") as alice:
        await alice.next_event(cc.Synced)
        with trio.fail_after(20):
            sent = await alice.send("bob", "slow one")
        assert sent.seq == 1
        assert alice.reconnects == 0
    assert node.server.stats["busy_pings"] >= 1
    async with node.connect("bob") as bob:
        got = await messages(bob, 1)
        assert [m.text for m in got] == ["slow one"]


@pytest.mark.parametrize("start_node", ["sqlite"], indirect=True)  # (the session's logic)
async def test_a_send_that_waits_long_is_no_stalled_frame(
        start_node: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Send that came in two reads, then waited in the store longer than the frame
    timeout: its frame was complete, but the slow-frame guard still counted from its first
    half (the reader notes a complete read only once the frame is handled) and closed the
    connection with TIMEOUT. While a connection's requests are handled neither timeout runs."""
    node: Node = await start_node(frame_timeout=0.5)
    await node.add_users("alice", "bob")
    slow_first_send(node, monkeypatch, 2.0)
    raw = await Raw.open(node.server.tcp_port)
    await raw.hello(node.token("alice"), device="phone")
    await raw.recv_until(F.Synced)
    data = raw.conn.send(F.Send(id="s1", to="bob", body=b"in two halves"))
    await raw.send_bytes(data[:5])
    await trio.sleep(0.2)  # (a read of half a frame: the guard starts)
    await raw.send_bytes(data[5:])
    got = (await answers(raw, {"s1"}))["s1"]
    assert isinstance(got, F.Sent), got


async def test_a_send_under_way_is_finished_when_its_connection_ends(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """alice's send is in the store (slow: an owner that takes its time) when her
    connection ends. It used to be cancelled with the connection, between two of its
    store steps: with owner numbering its seq was then left to no running send, the chat's
    later sends went on, and her retry finished it after them (the chaos checker's
    "reordered" after a `drop`). Now it is finished: stored once, and its retry is answered
    with its seq."""
    store = node.server.store
    first = slow_first_send(node, monkeypatch, 1.0)
    raw = await Raw.open(node.server.tcp_port)
    await raw.hello(node.token("alice"), device="phone")
    await raw.recv_until(F.Synced)
    await raw.send(F.Send(id="a1", to="bob", body=b"before the drop"))
    await first.wait()
    await raw.aclose()  # (the device goes away mid-send)
    async with node.connect("bob") as bob:  # (what the node writes to alice meanwhile fails)
        for text in ("one", "two", "three"):
            await bob.send("alice", text)
            await trio.sleep(0.1)
    with trio.fail_after(5):
        while "a1" not in (ids := [m.id for m in await store.history("d:alice:bob", None,
                                                                       10)]):
            await trio.sleep(0.05)
    assert ids.count("a1") == 1
    async with node.connect("alice", "phone") as alice:
        again = await alice.send("bob", "before the drop", id="a1")
    stored = {m.id: m.seq for m in await store.history("d:alice:bob", None, 10)}
    assert again.seq == stored["a1"]  # (the retry: its first seq, stored once)


async def test_the_sdk_sends_what_was_under_way_and_made_offline_again_in_order(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """alice's first send is in the store (slow) when her connection drops, and she makes
    two more while the SDK reconnects. The old connection's send is finished without her
    (its Sent is lost with the connection); after the reconnect the SDK sends all three
    again, in the order she made them: each stored once, seqs 1-3, every send() answered
    with its seq, and bob sees them in that order."""
    in_store = slow_first_send(node, monkeypatch, 1.0)
    acks: dict[str, Any] = {}

    async def send(text: str, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()  # (send() takes its place among alice's sends before it waits)
        acks[text] = await alice.send("bob", text, id=f"id-{text}")

    async with node.connect("alice") as alice, node.connect("bob") as bob:
        await bob.next_event(cc.Synced)
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                await nursery.start(send, "a")
                await in_store.wait()
                for s in node.server.sessions():  # drop alice's connection under her
                    if s.user == "alice":
                        await s.transport.aclose()
                await alice.next_event(cc.Disconnected)
                await nursery.start(send, "b")
                await nursery.start(send, "c")
        assert {t: a.seq for t, a in acks.items()} == {"a": 1, "b": 2, "c": 3}
        assert alice.reconnects >= 1
        got = await messages(bob, 3)
        assert [(m.seq, m.text) for m in got] == [(1, "a"), (2, "b"), (3, "c")]
    stored = await node.server.store.history("d:alice:bob", None, 10)
    assert sorted(m.id for m in stored) == ["id-a", "id-b", "id-c"]  # (nothing twice)


async def test_a_send_made_while_disconnected_is_written_once_after_the_reconnect(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reconnect sends again every send not SENT yet, this one with them; its own task,
    woken by the same reconnect, used to write it a second time (answered as a duplicate:
    a frame, a store lookup and a Sent for nothing)."""
    handled: list[str] = []
    real = handlers.sends

    async def sends(server: Any, dev: Any, batch: list[F.Send]) -> None:
        handled.extend(ev.id for ev in batch)
        await real(server, dev, batch)

    monkeypatch.setattr(handlers, "sends", sends)
    async with node.connect("alice") as alice:
        for s in node.server.sessions():  # drop alice's connection under her
            if s.user == "alice":
                await s.transport.aclose()
        await alice.next_event(cc.Disconnected)
        with trio.fail_after(10):
            ack = await alice.send("bob", "made offline", id="off-1")
        assert ack.seq == 1 and alice.reconnects >= 1
        await alice.send("bob", "and one more", id="on-2")  # (whatever came late has come)
    assert handled == ["off-1", "on-2"]


async def test_the_sdk_numbers_a_chats_sends_in_the_order_send_was_called(
        node: Node) -> None:
    """Two tasks woken together each call send() to the same chat. The SDK then waited for
    its connection with a checkpoint before it took its write lock, and trio runs a batch of
    ready tasks in either order: the send called second was written first about half the
    time, and numbered first. (Rounds of two, 20 of them.)"""
    called: list[str] = []
    acks: dict[str, Any] = {}

    async def send(go: trio.Event, text: str) -> None:
        await go.wait()
        called.append(text)
        acks[text] = await alice.send("bob", text)

    async with node.connect("alice") as alice:
        with trio.fail_after(20):
            for r in range(20):
                async with trio.open_nursery() as nursery:
                    go = trio.Event()
                    nursery.start_soon(send, go, f"{r}a")
                    nursery.start_soon(send, go, f"{r}b")
                    await trio.sleep(0.01)
                    go.set()
    assert [acks[t].seq for t in called] == list(range(1, 41))
