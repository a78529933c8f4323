"""Groups in the store: fan-out to the members at send time, coalesced group receipts."""

from __future__ import annotations

import trio

from chatd.core import Delivery, Notice
from chatd.protocol.frames import Status
from chatd.store import NewMessage, Store, open_store

G = "g:fam"


def gmsg(cid: str, sender: str = "alice", ts: int = 1) -> NewMessage:
    return NewMessage(sender, "phone", cid, G, (), cid.encode(), ts, group="fam")


async def settle(store: Store, steps: int = 1000) -> None:
    """Let background fan-out steps run (up to steps x 10 ms)."""
    for _ in range(steps):
        await trio.sleep(0.01)
        if not getattr(store, "fanout_pending", 0):
            break
    await store.has_user("alice")  # a round trip through the writer


async def delivered(store: Store, user: str, device: str = "phone") -> list[Delivery]:
    page = await store.inbox(user, device, 0, 10_000)
    return [i for i in page.items if isinstance(i, Delivery) and i.conv == G]


async def setup(store: Store, members: list[str]) -> None:
    limit = trio.CapacityLimiter(32)  # (a big group's devices attached 32 at a time)

    async def attach(u: str) -> None:
        async with limit:
            await store.attach_device(u, "phone")

    async with trio.open_nursery() as nursery:
        for u in ["alice", *members]:
            nursery.start_soon(attach, u)
    info = await store.create_group("fam", "Family", "alice", members, ts=1)
    assert info is not None and info.admins == ("alice",)


async def test_group_message_reaches_every_member_once_in_order(store: Store) -> None:
    await setup(store, ["bob", "carol"])
    acks = [await store.append_message(gmsg(f"m{i}")) for i in range(3)]
    assert [a.seq for a in acks] == [2, 3, 4]  # seq 1 is the "created" event
    await settle(store)
    for user in ("bob", "carol"):
        got = await delivered(store, user)
        assert [d.seq for d in got] == [1, 2, 3, 4]
        assert got[0].event is not None and got[0].event["kind"] == "created"
        assert [d.body for d in got[1:]] == [b"m0", b"m1", b"m2"]
    assert await delivered(store, "alice") == []  # not to the sender's only device


async def test_membership_at_send_time_decides(store: Store) -> None:
    await setup(store, ["bob"])
    await store.append_message(gmsg("before"))
    await store.change_group("fam", "alice", ts=2, add=("dave",))
    await store.change_group("fam", "alice", ts=3, remove=("bob",))
    await store.append_message(gmsg("after"))
    await settle(store)
    bob = [d.body or d.event["kind"] for d in await delivered(store, "bob")]  # type: ignore[index]
    dave = [d.body or d.event["kind"] for d in await delivered(store, "dave")]  # type: ignore[index]
    assert b"before" in bob and b"after" not in bob and "removed" in bob
    assert b"before" not in dave and b"after" in dave and "added" in dave
    assert (await store.group("fam")).members == ("alice", "dave")  # type: ignore[union-attr]
    assert await store.user_groups("bob") == []
    assert await store.user_groups("dave") == ["fam"]


async def test_last_admin_leaving_hands_over(store: Store) -> None:
    await setup(store, ["bob", "carol"])
    info = await store.change_group("fam", "alice", ts=2, remove=("alice",))
    assert info.admins == ("bob",) and "alice" not in info.members


async def test_group_receipts_are_coalesced_to_all(store: Store) -> None:
    await setup(store, ["bob", "carol"])
    sent = await store.append_message(gmsg("hi"))
    await settle(store)
    bob_q = (await delivered(store, "bob"))[-1].q
    r = await store.ack("bob", "phone", bob_q, ts=5)
    assert [i for _, i in r.items if isinstance(i, Notice)] == []  # not everyone yet
    carol_q = (await delivered(store, "carol"))[-1].q
    r = await store.ack("carol", "phone", carol_q, ts=6)
    receipts = [(u, i) for u, i in r.items if isinstance(i, Notice)]
    assert [(u, i.seqs, i.status, i.all) for u, i in receipts] == [
        ("alice", (sent.seq,), Status.DELIVERED, True)]
    state = await store.receipt_state(G, sent.seq)
    assert state.delivered == ("bob", "carol") and state.read == () and state.pending == ()
    await store.mark_read("bob", G, sent.seq, ts=7)
    state = await store.receipt_state(G, sent.seq)
    assert state.read == ("bob",) and state.delivered == ("carol",)
    r = await store.mark_read("carol", G, sent.seq, ts=8)
    assert [(i.status, i.all) for _, i in r.items if isinstance(i, Notice)] == [
        (Status.READ, True)]


async def test_fanout_resumes_after_a_restart(shared_url: str) -> None:
    members = [f"m{i}" for i in range(1200)]
    async with open_store(shared_url) as store:
        await setup(store, members)
        await settle(store)
        sent = await store.append_message(gmsg("big"))
        # leave at once: the fan-out job is committed with the message, not done yet
        assert store.fanout_pending  # type: ignore[attr-defined]
    async with open_store(shared_url) as store:
        assert (G, sent.seq) in await store.pending_fanouts()  # type: ignore[attr-defined]
        # (the first store gives its job back as it closes; if that did not get through in
        # time, a busy Cassandra, the job is this one's once the first one's lease ran out)
        await settle(store, steps=4500)
        for u in (members[0], members[600], members[-1]):
            got = await delivered(store, u)
            assert [d.seq for d in got].count(sent.seq) == 1
        assert not await store.pending_fanouts()  # type: ignore[attr-defined]


async def test_removing_the_last_laggard_completes_delivered_to_all(store: Store) -> None:
    await setup(store, ["bob", "carol"])
    sent = await store.append_message(gmsg("hi"))
    await settle(store)
    await store.ack("bob", "phone", (await delivered(store, "bob"))[-1].q, ts=5)
    page = await store.inbox("alice", "phone", 0, 100)
    assert not [i for i in page.items if isinstance(i, Notice)]
    await store.change_group("fam", "alice", ts=6, remove=("carol",))  # carol never got it
    page = await store.inbox("alice", "phone", 0, 100)
    receipts = [i for i in page.items if isinstance(i, Notice)]
    assert [(r.seqs, r.status, r.all) for r in receipts] == [
        ((sent.seq,), Status.DELIVERED, True)]
