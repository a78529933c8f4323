"""Scenarios that must hold however the devices are spread: over the workers of one node or
over several nodes. Each takes the places (Nodes) the users connect to."""

from __future__ import annotations

import chatd_client as cc
import trio

from .conftest import Node, messages
from .test_presence import presence


async def first(client: cc.Client, kind: type, timeout: float = 10) -> cc.Event:
    with trio.fail_after(timeout):
        return await client.next_event(kind)


async def delivered(client: cc.Client, seqs: set[int], timeout: float = 10) -> None:
    """Wait until DELIVERED receipts covered every seq."""
    got: set[int] = set()
    with trio.fail_after(timeout):
        while not seqs <= got:
            d = await client.next_event(cc.Delivered)
            assert isinstance(d, cc.Delivered)
            got.update(d.seqs)


async def one_to_one_with_receipts(a: Node, b: Node, n: int = 30) -> None:
    """alice on a, bob on b: n messages in order, DELIVERED and READ back, and a reply."""
    async with a.connect("alice", "phone") as alice, b.connect("bob", "phone") as bob:
        await first(bob, cc.Synced)
        acks = [await alice.send("bob", f"m{i}") for i in range(n)]
        got = await messages(bob, n)
        assert [m.text for m in got] == [f"m{i}" for i in range(n)]
        await delivered(alice, {x.seq for x in acks})
        await bob.mark_read(got[-1].conv, got[-1].seq)
        r = await first(alice, cc.Read)
        assert isinstance(r, cc.Read) and max(r.seqs) == n
        await bob.send("alice", "back")
        assert (await messages(alice, 1))[0].text == "back"


async def group_message(a: Node, b: Node, c: Node) -> None:
    """alice on a makes a group with bob (on b) and carol (on c): both get her message, and
    she gets the DELIVERED receipt."""
    async with a.connect("alice") as alice, b.connect("bob") as bob, \
            c.connect("carol") as carol:
        g = await alice.create_group("team", ["bob", "carol"])
        ack = await alice.send(None, "hello team", group=g.group)
        for member in (bob, carol):
            with trio.fail_after(10):
                while True:
                    m = await member.next_event(cc.Message)
                    assert isinstance(m, cc.Message)
                    if m.event is None:  # (skip the "created" chat event)
                        break
            assert m.text == "hello team"
        await delivered(alice, {ack.seq})


async def presence_seen_elsewhere(a: Node, b: Node) -> None:
    """bob on b watches alice, who connects to a: online, then offline with a last seen."""
    async with b.connect("bob") as bob:
        await bob.watch(["alice"])
        assert not (await presence(bob, "alice")).online
        async with a.connect("alice") as alice:
            await first(alice, cc.Synced)
            assert (await presence(bob, "alice", timeout=10)).online
            assert (await bob.last_seen("alice")).online  # a query answers the same
        p = await presence(bob, "alice", timeout=10)
        assert not p.online and p.last_seen is not None
