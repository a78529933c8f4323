"""One-to-one chat over real sockets: live, offline, several devices, retries, receipts."""

from __future__ import annotations

import chatd_client as cc
import pytest
import trio

from .conftest import Node, StartNode, messages


async def first(client: cc.Client, kind: type, timeout: float = 5) -> cc.Event:
    with trio.fail_after(timeout):
        return await client.next_event(kind)


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_alice_to_bob_live(node: Node, transport: str) -> None:
    url = node.tcp if transport == "tcp" else node.ws
    async with node.connect("alice", "phone", url) as alice, \
            node.connect("bob", "phone", url) as bob:
        await first(bob, cc.Synced)
        acks = [await alice.send("bob", f"msg {i}") for i in range(20)]
        assert [a.seq for a in acks] == list(range(1, 21))
        got = await messages(bob, 20)
        assert [m.text for m in got] == [f"msg {i}" for i in range(20)]
        assert all(m.sender == "alice" and m.device == "phone" for m in got)
        delivered: set[int] = set()
        with trio.fail_after(5):
            while len(delivered) < 20:
                d = await alice.next_event(cc.Delivered)
                assert isinstance(d, cc.Delivered)
                delivered.update(d.seqs)
        assert delivered == set(range(1, 21))


async def test_offline_bob_gets_everything_in_order_on_return(start_node: StartNode) -> None:
    node = await start_node(send_rate=10_000.0, send_burst=10_000.0)  # (300 at once)
    await node.add_users("alice", "bob")
    async with node.connect("alice") as alice:
        for i in range(300):
            await alice.send("bob", f"m{i}")
        async with node.connect("bob") as bob:
            got = await messages(bob, 300)
            assert [m.text for m in got] == [f"m{i}" for i in range(300)]
            assert [m.seq for m in got] == list(range(1, 301))
            await first(bob, cc.Synced)
            await alice.send("bob", "live now")
            assert (await messages(bob, 1))[0].text == "live now"


async def test_each_of_bobs_devices_gets_every_message(node: Node) -> None:
    for device in ("phone", "laptop"):  # register both devices
        async with node.connect("bob", device) as bob:
            await first(bob, cc.Synced)
    async with node.connect("alice") as alice:
        for i in range(5):
            await alice.send("bob", f"m{i}")
        async with node.connect("bob", "phone") as phone:
            assert [m.text for m in await messages(phone, 5)] == [f"m{i}" for i in range(5)]
            await alice.send("bob", "live")
            assert (await messages(phone, 1))[0].text == "live"
    async with node.connect("bob", "laptop") as laptop:  # was offline for all of it
        got = await messages(laptop, 6)
        assert [m.text for m in got] == [*(f"m{i}" for i in range(5)), "live"]


async def test_new_device_starts_with_what_is_still_pending(node: Node) -> None:
    async with node.connect("bob", "phone") as phone, node.connect("alice") as alice:
        await first(phone, cc.Synced)
        await alice.send("bob", "one")
        assert (await messages(phone, 1))[0].text == "one"
    async with node.connect("alice") as alice:
        await alice.send("bob", "two")  # bob's phone is offline now
    async with node.connect("bob", "laptop") as laptop:  # a brand-new device
        assert [m.text for m in await messages(laptop, 1)] == ["two"]


async def test_sender_other_device_sees_sent_messages(node: Node) -> None:
    """A message goes to the sender's other devices, not back to the one that sent it
    (PROTOCOL.md section 4)."""
    async with node.connect("alice", "phone") as phone, \
            node.connect("alice", "laptop") as laptop, node.connect("bob") as bob:
        await first(laptop, cc.Synced)
        await first(phone, cc.Synced)
        await phone.send("bob", "from phone")
        m = (await messages(laptop, 1))[0]
        assert (m.sender, m.device, m.text) == ("alice", "phone", "from phone")
        await messages(bob, 1)
        await bob.send("alice", "reply")  # the next item in alice's inbox after her own
        assert [m.text for m in await messages(phone, 1)] == ["reply"]
        assert [m.text for m in await messages(laptop, 1)] == ["reply"]


async def test_retried_send_with_same_id_is_stored_once(node: Node) -> None:
    async with node.connect("alice") as alice:
        a = await alice.send("bob", "once", id="retry-1")
        b = await alice.send("bob", "once", id="retry-1")
        assert (a.conv, a.seq, a.ts) == (b.conv, b.seq, b.ts)
        await alice.send("bob", "after", id="retry-2")
    async with node.connect("bob") as bob:  # (a second copy would come before retry-2)
        got = await messages(bob, 2)
        assert [(m.id, m.seq) for m in got] == [("retry-1", 1), ("retry-2", 2)]


async def test_receipts_reach_every_sender_device_including_later(node: Node) -> None:
    async with node.connect("alice", "tablet") as tablet:  # register it, then go offline
        await first(tablet, cc.Synced)
    async with node.connect("alice", "phone") as phone:
        ack = await phone.send("bob", "hello")
        async with node.connect("bob") as bob:
            m = (await messages(bob, 1))[0]
            d = await first(phone, cc.Delivered)
            assert isinstance(d, cc.Delivered) and (d.conv, d.seqs) == (ack.conv, (ack.seq,))
            await bob.mark_read(m.conv, m.seq)
            r = await first(phone, cc.Read)
            assert isinstance(r, cc.Read) and r.seqs == (ack.seq,) and r.by == "bob"
    async with node.connect("alice", "tablet") as tablet:  # offline during all of it
        d = await first(tablet, cc.Delivered)
        r = await first(tablet, cc.Read)
        assert d.seqs == r.seqs == (ack.seq,)  # type: ignore[union-attr]


async def test_no_second_delivered_receipt_after_redelivery(node: Node) -> None:
    async with node.connect("alice") as alice:
        await alice.send("bob", "x")
        async with node.connect("bob", "phone") as bob:
            m = await messages(bob, 1)
            await first(alice, cc.Delivered)
        async with node.connect("bob", "phone") as bob:  # reconnect: nothing pending now
            await first(bob, cc.Synced)
            await bob.mark_read(m[0].conv, m[0].seq)
        # the next receipt alice gets is READ: no second DELIVERED came before it
        with trio.fail_after(5):
            r = await alice.next_event(cc.Delivered, cc.Read)
        assert isinstance(r, cc.Read), r


async def test_history_pages_for_both_participants_only(node: Node) -> None:
    async with node.connect("alice") as alice:
        for i in range(7):
            await alice.send("bob", f"h{i}")
        page = await alice.history("d:alice:bob", limit=3)
        assert [i.seq for i in page.items] == [7, 6, 5] and page.more
        page = await alice.history("d:alice:bob", before=3, limit=10)
        assert [i.body for i in page.items] == [b"h1", b"h0"] and not page.more
    async with node.connect("carol") as carol:
        with pytest.raises(cc.ChatdError) as info:
            await carol.history("d:alice:bob")
        assert info.value.name == "FORBIDDEN"


async def test_notes_to_self_reach_my_other_devices(node: Node) -> None:
    async with node.connect("alice", "phone") as phone, node.connect("alice", "pc") as pc:
        await first(pc, cc.Synced)
        ack = await phone.send("alice", "remember milk")
        assert ack.conv == "d:alice:alice"
        assert (await messages(pc, 1))[0].text == "remember milk"


async def test_shutdown_tells_connected_devices(node: Node) -> None:
    async with node.connect("alice", reconnect=False) as alice:
        await first(alice, cc.Synced)
        node.server.stop()
        err = await first(alice, cc.ServerError)
        assert isinstance(err, cc.ServerError) and err.name == "SHUTTING_DOWN"


async def test_sdk_reconnects_and_resumes(start_node: object) -> None:
    node = await start_node(idle_timeout=60)  # type: ignore[operator]
    await node.add_users("alice", "bob")
    async with node.connect("bob") as bob, node.connect("alice") as alice:
        await first(bob, cc.Synced)
        for s in node.server.sessions():  # drop bob's connection under him
            if s.user == "bob":
                await s.transport.aclose()
        await first(bob, cc.Disconnected)
        await alice.send("bob", "while you were away")
        await first(bob, cc.Connected)
        assert (await messages(bob, 1))[0].text == "while you were away"
        assert bob.reconnects >= 1


async def test_sends_in_one_write_are_stored_in_the_order_sent(node: Node) -> None:
    """A pipelining client's sends arrive in one read and are stored as one batch: each
    still gets the next seq in the order it was written, and bob sees them in that order."""
    from chatd.protocol import frames as F

    from .raw import Raw

    alice = await Raw.open(node.server.tcp_port)
    await alice.hello(node.token("alice"))
    n = 20
    await alice.send_bytes(b"".join(alice.conn.send(F.Send(id=f"p{i}", to="bob",
                                                           body=f"m{i}".encode()))
                                    for i in range(n)))
    sent = [await alice.recv_until(F.Sent) for _ in range(n)]
    assert [(s.id, s.seq) for s in sent] == [(f"p{i}", i + 1) for i in range(n)]  # type: ignore[attr-defined]
    async with node.connect("bob") as bob:
        got = await messages(bob, n)
    assert [(m.seq, m.id, m.text) for m in got] == [(i + 1, f"p{i}", f"m{i}") for i in range(n)]


async def test_a_live_item_after_a_gap_waits_for_the_store(node: Node,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """Live delivery sends an item straight out only when it is the next one the device
    needs; after a gap (a push that went missing, e.g. via another node) it reads the
    store first, so the device still gets every item, in order."""
    from chatd.core import wire
    from chatd.protocol import frames as F

    from .raw import Raw

    bob = await Raw.open(node.server.tcp_port)
    await bob.hello(node.token("bob"))
    await bob.recv_until(F.Synced)
    session = next(s for s in node.server.sessions() if s.user == "bob")
    committed: list[tuple[str, object]] = []
    monkeypatch.setattr(node.server.store, "on_append", committed.extend)  # no pushes
    async with node.connect("alice") as alice:
        await alice.send("bob", "first")
        await alice.send("bob", "second")
    monkeypatch.undo()
    items = [item for user, item in committed if user == "bob"]
    assert [i.seq for i in items] == [1, 2]  # type: ignore[attr-defined]
    session.offer(items[1], wire.body(items[1]))  # only the second push arrives
    for q, body in [(1, b"first"), (2, b"second")]:
        f = await bob.recv_until(F.Deliver)
        assert isinstance(f, F.Deliver) and (f.q, f.seq, f.body) == (q, q, body), f
