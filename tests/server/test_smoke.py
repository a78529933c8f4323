from __future__ import annotations

import chatd_client as cc
import trio

from .conftest import Node


async def test_alice_to_bob_live_with_receipts(node: Node) -> None:
    async with node.connect("alice", "phone") as alice, node.connect("bob", "phone") as bob:
        await bob.next_event(cc.Synced)
        ack = await alice.send("bob", "hello bob")
        assert (ack.conv, ack.seq) == ("d:alice:bob", 1)
        msg = await bob.next_event(cc.Message)
        assert isinstance(msg, cc.Message)
        assert (msg.sender, msg.device, msg.text, msg.seq) == ("alice", "phone", "hello bob", 1)
        with trio.fail_after(5):
            d = await alice.next_event(cc.Delivered)
        assert isinstance(d, cc.Delivered) and d.seqs == (1,) and d.by == "bob"
        await bob.mark_read(msg.conv, msg.seq)
        with trio.fail_after(5):
            r = await alice.next_event(cc.Read)
        assert isinstance(r, cc.Read) and r.seqs == (1,)
