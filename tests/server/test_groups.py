"""Groups over real sockets: membership, order, offline members, coalesced receipts, rules."""

from __future__ import annotations

import chatd_client as cc
import pytest
import trio

from .conftest import Node, StartNode, messages


async def texts(client: cc.Client, n: int) -> list[str]:
    """The next n chat lines: bodies, or the event kind for server-made events."""
    return [m.event["kind"] if m.event else m.text for m in await messages(client, n)]


async def test_group_chat_with_an_offline_member(node: Node) -> None:
    async with node.connect("alice") as alice, node.connect("bob") as bob:
        group = await alice.create_group("Family", ["bob", "carol"])
        assert group.admins == ("alice",) and set(group.members) == {"alice", "bob", "carol"}
        for i in range(5):
            ack = await alice.send(None, f"g{i}", group=group.group)
            assert ack.conv == f"g:{group.group}"
        await bob.send(None, "bob here", group=group.group)
        assert await texts(bob, 6) == ["created", "g0", "g1", "g2", "g3", "g4"]
        assert await texts(alice, 1) == ["bob here"]
    async with node.connect("carol") as carol:  # was offline: everything, in order
        got = await messages(carol, 7)
        assert [m.seq for m in got] == list(range(1, 8))
        assert got[-1].sender == "bob" and got[-1].group == group.group
        assert await carol.my_groups() == [group.group]


async def test_membership_rules(node: Node) -> None:
    async with node.connect("alice") as alice, node.connect("bob") as bob, \
            node.connect("carol") as carol:
        g = (await alice.create_group("Club", ["bob"])).group
        await alice.send(None, "before carol", group=g)
        with pytest.raises(cc.ChatdError) as info:  # not a member
            await carol.send(None, "let me in", group=g)
        assert info.value.name == "FORBIDDEN"
        with pytest.raises(cc.ChatdError) as info:  # only admins add
            await bob.add_members(g, ["carol"])
        assert info.value.name == "FORBIDDEN"
        with pytest.raises(cc.ChatdError) as info:
            await alice.add_members(g, ["nobody"])
        assert info.value.name == "UNKNOWN_TARGET"
        await alice.add_members(g, ["carol"])
        await alice.send(None, "welcome carol", group=g)
        assert await texts(carol, 2) == ["added", "welcome carol"]  # nothing from before
        page = await carol.history(f"g:{g}")
        assert b"before carol" not in [i.body for i in page.items]
        await alice.remove_members(g, ["bob"])
        await alice.send(None, "bob is gone", group=g)
        assert await texts(bob, 5) == ["created", "before carol", "added", "welcome carol",
                                       "removed"]
        with pytest.raises(cc.ChatdError) as info:
            await bob.group_info(g)
        assert info.value.name == "FORBIDDEN"
        await alice.add_members(g, ["bob"])  # back: the next thing bob gets is that event,
        assert await texts(bob, 1) == ["added"]  # nothing sent while he was out
        await carol.leave_group(g)
        assert (await alice.group_info(g)).members == ("alice", "bob")
        with pytest.raises(cc.ChatdError) as info:
            await carol.send(None, "hello?", group="nosuchgroup")
        assert info.value.name == "UNKNOWN_TARGET"


async def test_group_receipts_go_to_the_sender_once_for_all(node: Node) -> None:
    async with node.connect("alice", "phone") as alice, node.connect("bob") as bob, \
            node.connect("carol") as carol:
        g = (await alice.create_group("Trio", ["bob", "carol"])).group
        await messages(bob, 1)
        await messages(carol, 1)
        ack = await alice.send(None, "read me", group=g)
        m_bob, m_carol = (await messages(bob, 1))[0], (await messages(carol, 1))[0]
        with trio.fail_after(5):
            d = await alice.next_event(cc.Delivered)
        assert isinstance(d, cc.Delivered) and d.seqs == (ack.seq,)
        await bob.mark_read(m_bob.conv, m_bob.seq)
        with trio.fail_after(5):
            while (st := await alice.receipt_state(ack.conv, ack.seq)).read != ("bob",):
                await trio.sleep(0.02)
        assert st.delivered == ("carol",) and st.pending == ()
        await carol.mark_read(m_carol.conv, m_carol.seq)
        with trio.fail_after(5):
            r = await alice.next_event(cc.Read)
        assert isinstance(r, cc.Read) and r.seqs == (ack.seq,)
        # members got no receipts at all (no broadcast): the next thing bob gets is the
        # next message
        await alice.send(None, "next", group=g)
        with trio.fail_after(5):
            e = await bob.next_event(cc.Delivered, cc.Read, cc.Message)
        assert isinstance(e, cc.Message) and e.text == "next", e


async def test_group_size_is_capped(start_node: StartNode) -> None:
    node = await start_node(group_max_members=3)
    await node.add_users("alice", "bob", "carol", "dave")
    async with node.connect("alice") as alice:
        with pytest.raises(cc.ChatdError) as info:
            await alice.create_group("Big", ["bob", "carol", "dave"])
        assert info.value.name == "INVALID" and "3" in info.value.message
        g = (await alice.create_group("Ok", ["bob", "carol"])).group
        with pytest.raises(cc.ChatdError) as info:
            await alice.add_members(g, ["dave"])
        assert info.value.name == "INVALID"


async def test_pipelined_group_sends_each_get_the_right_error(node: Node) -> None:
    from chatd.protocol import ErrorCode
    from chatd.protocol import frames as F

    from .raw import Raw

    async with node.connect("alice") as alice:
        g = (await alice.create_group("Private", ["bob"])).group
    carol = await Raw.open(node.server.tcp_port)
    await carol.hello(node.token("carol"))
    await carol.send_bytes(b"".join(carol.conn.send(F.Send(id=f"s{i}", group=grp, body=b"x"))
                                    for i, grp in enumerate(["nope", "nope", g, g])))
    errors: dict[str, int] = {}
    with trio.fail_after(5):
        while len(errors) < 4:
            f = await carol.recv()
            if isinstance(f, F.Error):
                assert f.ref is not None
                errors[f.ref] = f.code
    assert errors == {"s0": ErrorCode.UNKNOWN_TARGET, "s1": ErrorCode.UNKNOWN_TARGET,
                      "s2": ErrorCode.FORBIDDEN, "s3": ErrorCode.FORBIDDEN}


async def test_outsiders_may_not_read_or_query_receipts(node: Node) -> None:
    """Read and ReceiptQuery check membership when they arrive (PROTOCOL.md section 5), in a
    group and in a one-to-one chat: an outsider gets FORBIDDEN and changes nothing."""
    from chatd.protocol import ErrorCode
    from chatd.protocol import frames as F

    from .raw import Raw

    async with node.connect("alice") as alice, node.connect("bob") as bob:
        g = (await alice.create_group("Pair", ["bob"])).group
        in_group = await alice.send(None, "members only", group=g)
        direct = await alice.send("bob", "just us")
        await messages(bob, 3)  # created, and both messages
        carol = await Raw.open(node.server.tcp_port)
        await carol.hello(node.token("carol"))
        await carol.recv_until(F.Synced)
        for conv, seq in [(in_group.conv, in_group.seq), (direct.conv, direct.seq)]:
            # (carol's inbox is empty: the next frame she gets is the answer)
            await carol.send(F.Read(conv=conv, upto=seq))
            await carol.send(F.Ping(nonce=seq))  # a Read has no answer but an error
            error = await carol.recv()
            assert isinstance(error, F.Error) and error.code == ErrorCode.FORBIDDEN, error
            assert await carol.recv() == F.Pong(nonce=seq)  # FORBIDDEN does not close
            await carol.send(F.ReceiptQuery(rid=7, conv=conv, seq=seq))
            error = await carol.recv()
            assert isinstance(error, F.Error), error
            assert (error.code, error.rid) == (ErrorCode.FORBIDDEN, 7), error
        # carol's Reads counted for nothing: nobody has read either message yet
        for ack in (in_group, direct):
            state = await alice.receipt_state(ack.conv, ack.seq)
            assert state.read == () and "carol" not in state.delivered + state.pending
        # and the first READ receipt alice gets is bob's
        await bob.mark_read(direct.conv, direct.seq)
        with trio.fail_after(10):
            r = await alice.next_event(cc.Read)
        assert isinstance(r, cc.Read) and r.by == "bob" and r.seqs == (direct.seq,)
        with pytest.raises(cc.ChatdError) as info:  # the SDK raises it
            async with node.connect("carol", "sdk") as sdk:
                await sdk.receipt_state(in_group.conv, in_group.seq)
        assert info.value.code == ErrorCode.FORBIDDEN
