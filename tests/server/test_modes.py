"""Chat modes over real sockets, with the server's own periodic collection."""

from __future__ import annotations

import chatd_client as cc
import pytest
import trio

from chatd.protocol.frames import Mode

from .conftest import StartNode


async def test_modes_events_and_deletion(start_node: StartNode) -> None:
    node = await start_node(gc_interval=0.1)
    await node.add_users("alice", "bob", "carol")
    store = node.server.store
    async with node.connect("alice") as alice, node.connect("bob") as bob:
        g = (await alice.create_group("Book club", ["bob"])).group
        conv = f"g:{g}"
        with pytest.raises(cc.ChatdError) as info:
            await bob.set_mode(conv, Mode.PERMANENT)
        assert info.value.name == "FORBIDDEN"
        with pytest.raises(cc.ChatdError) as info:
            await alice.set_mode(conv, Mode.DISAPPEARING)  # no ttl
        assert info.value.name == "INVALID"
        await alice.set_mode(conv, Mode.PERMANENT)
        assert (await alice.group_info(g)).mode == Mode.PERMANENT
        await alice.send(None, "keep this", group=g)
        with trio.fail_after(5):
            seen = []
            while len(seen) < 3:
                m = await bob.next_event(cc.Message)
                assert isinstance(m, cc.Message)
                seen.append(m.event["kind"] if m.event else m.text)
        assert seen == ["created", "mode", "keep this"]
        # one to one stays TEMPORARY: delivered messages are deleted by the collector
        ack = await alice.send("bob", "forget me")
        with trio.fail_after(5):
            while True:
                m = await bob.next_event(cc.Message)
                if isinstance(m, cc.Message) and m.text == "forget me":
                    break
        with trio.fail_after(5):  # (the node collects every 0.1 s)
            while await store.history(ack.conv, None, 10):
                await trio.sleep(0.05)
        # the collection that deleted "forget me" saw bob's ack of the group message too
        # (acks are cumulative): PERMANENT kept it
        assert (await store.history(conv, None, 10))[0].body == b"keep this"
        page = await bob.history(conv)
        assert page.items[0].body == b"keep this"
