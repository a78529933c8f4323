"""The Store contract (chatd/store/base.py), checked against every backend."""

from __future__ import annotations

import trio

from chatd.core import Delivery, Notice
from chatd.protocol.frames import Media, Status
from chatd.store import NewMessage, Store, direct_conv

CONV = direct_conv("alice", "bob")


def msg(cid: str, body: bytes = b"hi", sender: str = "alice", to: str = "bob",
        device: str = "phone", ts: int = 1000) -> NewMessage:
    return NewMessage(sender=sender, device=device, client_id=cid, conv=direct_conv(sender, to),
                      recipients=(to,), body=body, ts=ts)


async def setup(store: Store) -> None:
    for user, dev in (("alice", "phone"), ("bob", "phone")):
        await store.add_user(user)
        await store.attach_device(user, dev)


async def test_users_are_known_once_added(store: Store) -> None:
    assert not await store.has_user("zed")
    await store.add_user("zed")
    await store.add_user("zed")
    assert await store.has_user("zed")


async def test_sequence_is_dense_per_conversation(store: Store) -> None:
    await setup(store)
    a = await store.append_message(msg("1"))
    b = await store.append_message(msg("2", sender="bob", to="alice"))
    c = await store.append_message(msg("3", to="carol"))
    assert (a.conv, a.seq, b.conv, b.seq) == (CONV, 1, CONV, 2)
    assert (c.conv, c.seq) == ("d:alice:carol", 1)


async def test_retried_send_is_stored_once(store: Store) -> None:
    await setup(store)
    first = await store.append_message(msg("same", ts=1))
    again = await store.append_message(msg("same", body=b"changed", ts=2))
    assert again.duplicate and not first.duplicate
    assert (again.conv, again.seq, again.ts) == (first.conv, first.seq, first.ts)
    assert again.items == ()
    page = await store.inbox("bob", "phone", 0, 100)
    assert [i.body for i in page.items if isinstance(i, Delivery)] == [b"hi"]
    # the same client id from another sender is another message
    other = await store.append_message(msg("same", sender="bob", to="alice"))
    assert not other.duplicate


async def test_inbox_holds_messages_in_order_for_each_device(store: Store) -> None:
    await setup(store)
    media = (Media(id="img1", mime="image/png", size=10, width=2, height=3),)
    for i in range(5):
        await store.append_message(NewMessage("alice", "phone", f"m{i}", CONV, ("bob",),
                                              f"b{i}".encode(), 100 + i, media))
    page = await store.inbox("bob", "phone", 0, 3)
    assert [(i.q, i.seq, i.body) for i in page.items if isinstance(i, Delivery)] == [
        (1, 1, b"b0"), (2, 2, b"b1"), (3, 3, b"b2")]
    assert page.more and page.upto == 3
    first = page.items[0]
    assert isinstance(first, Delivery)
    assert (first.sender, first.device, first.id, first.ts, first.media) == (
        "alice", "phone", "m0", 100, media)
    rest = await store.inbox("bob", "phone", page.upto, 100)
    assert [i.seq for i in rest.items if isinstance(i, Delivery)] == [4, 5]
    assert not rest.more and rest.upto == 5


async def test_sender_other_devices_get_a_copy_but_not_the_sending_device(store: Store) -> None:
    await setup(store)
    await store.attach_device("alice", "laptop")
    await store.append_message(msg("1"))
    on_phone = await store.inbox("alice", "phone", 0, 10)
    on_laptop = await store.inbox("alice", "laptop", 0, 10)
    assert on_phone.items == [] and on_phone.upto == 1
    assert [i.id for i in on_laptop.items if isinstance(i, Delivery)] == ["1"]


async def test_ack_moves_cursor_forward_only_and_sends_delivered_once(store: Store) -> None:
    await setup(store)
    await store.attach_device("bob", "laptop")
    for i in range(3):
        await store.append_message(msg(f"m{i}"))
    r = await store.ack("bob", "phone", 2, ts=5000)
    assert await store.cursor("bob", "phone") == 2
    assert [(u, type(i)) for u, i in r.items] == [("alice", Notice)]
    receipt = r.items[0][1]
    assert isinstance(receipt, Notice)
    assert (receipt.conv, receipt.seqs, receipt.by, receipt.status, receipt.ts) == (
        CONV, (1, 2), "bob", Status.DELIVERED, 5000)
    assert (await store.ack("bob", "phone", 1, ts=6000)).items == ()  # never back
    assert await store.cursor("bob", "phone") == 2
    again = await store.ack("bob", "laptop", 3, ts=7000)  # other device: only seq 3 is new
    assert [i.seqs for _, i in again.items if isinstance(i, Notice)] == [(3,)]
    # the receipt sits in alice's inbox for every device of hers, including later
    page = await store.inbox("alice", "phone", 0, 10)
    assert [(type(i).__name__, i.seqs) for i in page.items if isinstance(i, Notice)] == [
        ("Notice", (1, 2)), ("Notice", (3,))]


async def test_ack_beyond_the_inbox_is_clamped(store: Store) -> None:
    await setup(store)
    await store.append_message(msg("1"))
    await store.ack("bob", "phone", 10**9, ts=1)
    assert await store.cursor("bob", "phone") == 1
    await store.append_message(msg("2"))
    page = await store.inbox("bob", "phone", await store.cursor("bob", "phone"), 10)
    assert [i.id for i in page.items if isinstance(i, Delivery)] == ["2"]


async def test_read_receipts_cover_messages_from_others_only(store: Store) -> None:
    await setup(store)
    await store.append_message(msg("a1"))
    await store.append_message(msg("b1", sender="bob", to="alice"))
    await store.append_message(msg("a2"))
    r = await store.mark_read("bob", CONV, 3, ts=9)
    assert [(u, i.seqs, i.status) for u, i in r.items if isinstance(i, Notice)] == [
        ("alice", (1, 3), Status.READ)]
    assert (await store.mark_read("bob", CONV, 3, ts=10)).items == ()
    # read implies delivered: acking afterwards sends no DELIVERED for those
    assert (await store.ack("bob", "phone", 10, ts=11)).items == ()
    assert (await store.mark_read("bob", "d:bob:nobody", 5, ts=12)).items == ()


async def test_new_device_gets_what_is_still_pending(store: Store) -> None:
    await store.add_user("bob")
    await store.append_message(msg("before-any-device"))
    assert await store.attach_device("bob", "phone") == 0
    page = await store.inbox("bob", "phone", 0, 10)
    assert [i.id for i in page.items if isinstance(i, Delivery)] == ["before-any-device"]
    await store.ack("bob", "phone", 1, ts=1)
    assert await store.attach_device("bob", "tablet") == 1
    assert await store.attach_device("bob", "phone") == 1  # existing device keeps its cursor


async def test_history_pages_newest_first(store: Store) -> None:
    await setup(store)
    for i in range(5):
        await store.append_message(msg(f"m{i}", body=bytes([i])))
    page = await store.history(CONV, None, 2)
    assert [h.seq for h in page] == [5, 4]
    page = await store.history(CONV, 4, 10)
    assert [h.seq for h in page] == [3, 2, 1]
    assert page[-1].body == b"\x00" and page[-1].sender == "alice"
    assert await store.history("d:x:y", None, 10) == []


async def test_concurrent_sends_get_distinct_dense_sequences(store: Store) -> None:
    await setup(store)
    results = []

    async def send(i: int) -> None:
        results.append(await store.append_message(msg(f"c{i}")))

    async with trio.open_nursery() as n:
        for i in range(200):
            n.start_soon(send, i)
    assert sorted(r.seq for r in results) == list(range(1, 201))
    page = await store.inbox("bob", "phone", 0, 1000)
    assert [i.q for i in page.items] == list(range(1, 201))
