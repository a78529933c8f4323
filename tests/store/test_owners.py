"""Cassandra with numbering=owner: a chat's seqs are numbered in memory by the node that holds
its shard's lease, and written with plain writes (docs/CASSANDRA.md, "Conversation owners")."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from bench.cassandra import CassandraNode
from chatd.core import Delivery, Message, ReceiptNote
from chatd.core.values import now_ms
from chatd.store import CassandraStore, NewMessage, StoreError, cassandra, open_store
from chatd.store.cassandra import REDO_AFTER_MS, bucket

CONV = "d:alice:bob"


def owner_url(node: CassandraNode) -> str:
    # lease 9 s, timeout 2 s: the owner stops numbering 4 s before its lease ends
    return node.url(numbering="owner", timeout="2", lease="9")


def paxos_rounds(s: CassandraStore) -> int:
    """The store's Paxos rounds but its leases' (each shard's lease renewed every lease/2:
    as many as the box is slow)."""
    return s.db.paxos - sum(s.db.by_statement[k] for k in (
        "lease_epoch+lease_take", "lease_renew", "lease_release"))


def msg(i: int | str, body: bytes = b"x") -> NewMessage:
    return NewMessage("alice", "phone", f"alice-{i}", CONV, ("bob",), body, 1000)


async def seqs_of(s: Any) -> dict[int, str]:
    """seq -> client id of every message of the chat, read from the store."""
    return {it.seq: it.id for it in await s.history(CONV, None, 500)}


@pytest.fixture
def node(cassandra: CassandraNode) -> CassandraNode:
    cassandra.truncate()
    return cassandra


async def test_an_owner_numbers_without_a_transaction_per_message(node: CassandraNode) -> None:
    async with open_store(owner_url(node)) as s:
        assert isinstance(s, CassandraStore) and s.owners
        for u in ("alice", "bob"):
            await s.attach_device(u, "phone")
        paxos = paxos_rounds(s)
        seqs = [(await s.append_message(msg(i))).seq for i in range(20)]
        got: list[int] = []

        async def send(i: int) -> None:
            got.append((await s.append_message(msg(i))).seq)

        async with trio.open_nursery() as n:
            for i in range(20, 60):
                n.start_soon(send, i)
        assert seqs + sorted(got) == list(range(1, 61))
        again = await s.append_message(msg(7))
        assert again.duplicate and again.seq == 8
        assert paxos_rounds(s) == paxos  # (the leases' only: the chat's, bob's inbox's)
        page = await s.inbox("bob", "phone", 0, 100)
        assert [it.q for it in page.items] == list(range(1, 61))
        assert sorted(it.message.seq for it in page.items if isinstance(it, Delivery)) == (
            list(range(1, 61)))
    async with open_store(owner_url(node)) as s:  # a new owner (the lease was given back)
        assert (await s.append_message(msg(60))).seq == 61  # from the store, not from 1
        assert (await s.append_message(msg(59))).duplicate
        stored = await seqs_of(s)  # each message once, at its seq
        assert sorted(stored) == list(range(1, 62))
        assert sorted(stored.values()) == sorted(f"alice-{i}" for i in range(61))


async def test_a_chat_has_one_owner_at_a_time(node: CassandraNode) -> None:
    async with open_store(owner_url(node)) as a, open_store(owner_url(node)) as b:
        for u in ("alice", "bob"):
            await a.attach_device(u, "phone")
        assert (await a.append_message(msg(0))).seq == 1
        with pytest.raises(StoreError, match="numbered by node"):
            await b.append_message(msg(1))
        assert (await a.append_message(msg(1))).seq == 2
        await a.aclose()  # gives its leases back: b takes over at once
        assert (await b.append_message(msg(2))).seq == 3
        assert (await b.append_message(msg(0))).duplicate
        assert await seqs_of(b) == {1: "alice-0", 2: "alice-1", 3: "alice-2"}


async def test_an_owner_cut_off_past_its_lease_numbers_nothing_the_next_one_does(
        node: CassandraNode, monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_store(owner_url(node)) as a, open_store(owner_url(node)) as b:
        assert isinstance(a, CassandraStore)
        for u in ("alice", "bob"):
            await a.attach_device(u, "phone")
        assert (await a.append_message(msg(0))).seq == 1

        async def cannot_renew(*args: object) -> None:  # (a paused node, or one cut off)
            pass

        monkeypatch.setattr(a, "_renew", cannot_renew)
        with trio.fail_after(30):  # b takes the chat once a's lease has ended in Cassandra
            while True:
                try:
                    sent = await b.append_message(msg(1))
                    break
                except StoreError:
                    await trio.sleep(0.5)
        assert sent.seq == 2
        with pytest.raises(StoreError):  # a stopped before its lease ended: no seq 2 again
            await a.append_message(msg(2))
        assert (await b.append_message(msg(3))).seq == 3
        assert await seqs_of(b) == {1: "alice-0", 2: "alice-1", 3: "alice-3"}


async def test_a_claim_written_late_over_a_seq_given_away_is_no_claim(
        node: CassandraNode) -> None:
    """A claim write that failed (no SENT) may still land after its seq went to another
    message: its retry (here through the next owner, which loads the chat's claims) gets a
    new seq instead of writing over that message."""
    async with open_store(owner_url(node)) as s:
        for u in ("alice", "bob"):
            await s.attach_device(u, "phone")
        assert (await s.append_message(msg(0))).seq == 1
        assert (await s.append_message(msg(1))).seq == 2
        old = now_ms() - REDO_AFTER_MS - 1
        for cid, seq in (("alice-late", 2), ("alice-ahead", 3)):  # as if from a lost write
            await s.db.run("own_claim", (CONV, "alice", cid, seq, 1000, old, 60))
    async with open_store(owner_url(node)) as s:
        assert isinstance(s, CassandraStore)
        late = await s.append_message(msg("late", b"late"))
        ahead = await s.append_message(msg("ahead", b"ahead"))
        assert (late.seq, ahead.seq) == (3, 4) and not late.duplicate
        assert await seqs_of(s) == {1: "alice-0", 2: "alice-1", 3: "alice-late",
                                    4: "alice-ahead"}
        rows = await s.db.run("msg_key", (CONV, bucket(2), 2))
        assert rows[0]["client_id"] == "alice-1"


async def test_a_retry_of_a_send_cut_short_under_the_previous_owner_is_found(
        node: CassandraNode) -> None:
    """The next owner knows the chat's claims from its first read of the chat: a send the
    previous owner claimed but did not store (a large message, whose row is written after
    its claim; no SENT) is redone at its seq by its retry, and one it finished is a
    duplicate; neither is numbered again. (One it stored is finished by the next owner
    itself: the test below.)"""
    async with open_store(owner_url(node)) as s:
        for u in ("alice", "bob"):
            await s.attach_device(u, "phone")
        assert (await s.append_message(msg(0))).seq == 1
        old = now_ms() - REDO_AFTER_MS - 1  # (cut short: claimed, not stored, not done)
        await s.db.run(s.db.batch([("own_seq", (2, CONV)), (
            "own_claim", (CONV, "alice", "alice-1", 2, 1000, old, 60))]))
    async with open_store(owner_url(node)) as s:
        again = await s.append_message(msg(1))
        assert (again.seq, again.duplicate) == (2, False)
        assert (await s.append_message(msg(0))).duplicate
        assert (await s.append_message(msg(2))).seq == 3
        assert await seqs_of(s) == {1: "alice-0", 2: "alice-1", 3: "alice-2"}
        page = await s.inbox("bob", "phone", 0, 10)
        assert [it.message.seq for it in page.items if isinstance(it, Delivery)] == [1, 2, 3]


async def test_a_chat_with_more_claims_than_kept_in_memory_reads_them(
        node: CassandraNode, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cassandra, "MAX_CLAIMS", 2)
    async with open_store(owner_url(node)) as s:
        for u in ("alice", "bob"):
            await s.attach_device(u, "phone")
        assert [(await s.append_message(msg(i))).seq for i in range(4)] == [1, 2, 3, 4]
        assert (await s.append_message(msg(0))).duplicate
    async with open_store(owner_url(node)) as s:  # (the next owner finds 4 claims: reads)
        assert (await s.append_message(msg(1))).duplicate
        assert (await s.append_message(msg(4))).seq == 5
        assert (await s.append_message(msg(4))).duplicate
        assert sorted(await seqs_of(s)) == [1, 2, 3, 4, 5]


async def test_an_inbox_gets_a_message_once_when_appended_again(node: CassandraNode) -> None:
    async with open_store(owner_url(node)) as s:
        assert isinstance(s, CassandraStore)
        await s.attach_device("bob", "phone")
        m = Message(CONV, 5, 1000, "alice", "phone", "alice-x", b"x")
        first = await s._append_items({"bob": [m]})
        again = await s._append_items({"bob": [m, m]})  # (a fan-out chunk run again)
        assert [it.q for _, it in first] == [1] and again == []
        # its marker names q 1, where another item now is (a write that failed and landed
        # after q 1 was given again): the message goes in again
        await s.db.run("put_item", ("bob", 1, CONV, 6, "alice", None))
        third = await s._append_items({"bob": [m]})
        assert [it.q for _, it in third] == [2]


async def test_an_inbox_gets_a_message_once_when_appended_again_after_it_was_read(
        node: CassandraNode) -> None:
    """The first copy was delivered and acknowledged, and the inbox pruned under the cursor:
    its marker is still there, and says so. The look-up used to trust only the item it
    names, found none, and appended the message again, at a new position: the device showed
    it twice (the chaos checker's "duplicated" with numbering=owner, seed 3: a send finished
    by a restarted owner after its recipient had read it)."""
    async with open_store(owner_url(node)) as s:
        assert isinstance(s, CassandraStore)
        await s.attach_device("bob", "phone")
        m = Message(CONV, 5, 1000, "alice", "phone", "alice-x", b"x")
        assert [it.q for _, it in await s._append_items({"bob": [m]})] == [1]
        await s.ack("bob", "phone", 1, now_ms())
        await s.collect(now_ms(), 30 * 86_400_000)  # (pruned under the cursor)
        assert await s.db.run("inbox_at", ("bob", [1])) == []
        assert await s._append_items({"bob": [m]}) == []
        assert (await s.inbox("bob", "phone", 1, 10)).items == []


async def test_an_inbox_item_and_its_marker_are_written_in_one_batch(
        node: CassandraNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """An append of more rows than one batch takes is split in batches, which may land
    apart (one fails, its node is killed). A message's item and its marker must land
    together: a marker alone says the item is there when it is not. A receipt (one row)
    ahead of them used to shift every pair, and the batch boundary split one."""
    async with open_store(owner_url(node)) as s:
        assert isinstance(s, CassandraStore)
        await s.attach_device("bob", "phone")
        batches: list[list[tuple[str, tuple[Any, ...]]]] = []
        real = s.db.batch

        def batch(rows: list[tuple[str, tuple[Any, ...]]]) -> Any:
            batches.append(list(rows))
            return real(rows)

        monkeypatch.setattr(s.db, "batch", batch)
        note = ReceiptNote("bob", CONV, (1,), "alice", 1, 1000)
        msgs = [Message(CONV, i, 1000, "alice", "phone", f"alice-{i}", b"x")
                for i in range(1, 2 + cassandra.CHUNK)]
        got = await s._append_items({"bob": [note, *msgs]})
        assert [it.q for _, it in got] == list(range(1, len(msgs) + 2))
        inbox = [b for b in batches if any(name == "own_marker" for name, _ in b)]
        assert len(inbox) >= 2
        for b in inbox:
            items = {args[1] for name, args in b if name == "put_item" and args[3]}
            assert items == {args[4] for name, args in b if name == "own_marker"}


async def test_a_send_costs_no_request_of_its_own_for_its_done_mark(node: CassandraNode) -> None:
    """The owner marks a send's claim done with the chat's next claim batch (the same
    partition), or within a second for a quiet chat; a retry meanwhile is a duplicate."""
    async with open_store(owner_url(node)) as s:
        assert isinstance(s, CassandraStore)
        for u in ("alice", "bob"):
            await s.attach_device(u, "phone")
        await s.append_message(msg(0))  # (leases taken, counters and claims loaded)
        before = s.db.requests
        await s.append_message(msg(1))
        # the claim written with the message row (and its day's queue row), bob's inbox:
        # nothing more (the chat's earlier claims are known since it was loaded: no read)
        assert s.db.requests - before <= 2
        rows = await s.db.run("claims_of", (CONV, "alice", ["alice-1"]))
        assert not rows[0]["done"]  # not written yet
        again = await s.append_message(msg(1))
        assert again.duplicate and again.seq == 2
        with trio.fail_after(5):
            while not (await s.db.run("claims_of", (CONV, "alice", ["alice-1"])))[0]["done"]:
                await trio.sleep(0.2)
        await s.append_message(msg(2))
    async with open_store(owner_url(node)) as s:  # (the last one written on closing)
        rows = await s.db.run("claims_of", (CONV, "alice", [f"alice-{i}" for i in range(3)]))
        assert [r["done"] for r in rows] == [True] * 3


async def test_an_owner_writes_a_message_with_its_claim_a_large_one_apart(
        node: CassandraNode) -> None:
    async with open_store(owner_url(node)) as s:
        assert isinstance(s, CassandraStore)
        for u in ("alice", "bob"):
            await s.attach_device(u, "phone")
        big = b"y" * 60_000  # (over what Cassandra takes in a batch: written by itself)
        sent = [await s.append_message(msg(i, body)) for i, body in enumerate(
            [b"a", big, b"b"])]
        assert [a.seq for a in sent] == [1, 2, 3]
        got = {it.seq: it.body for it in await s.history(CONV, None, 10)}
        assert got == {1: b"a", 2: big, 3: b"b"}
        page = await s.inbox("bob", "phone", 0, 10)
        assert [it.message.body for it in page.items if isinstance(it, Delivery)] == [
            b"a", big, b"b"]
        day = sent[0].ts // 86_400_000  # (TEMPORARY: each message in its day's queue)
        queued = await s.db.run("queued", (day, 2**62, 10))
        assert sorted(r["seq"] for r in queued) == [1, 2, 3]


async def test_an_ack_writes_the_cursor_and_the_watermark_in_one_request(
        node: CassandraNode) -> None:
    async with open_store(owner_url(node)) as s:
        assert isinstance(s, CassandraStore)
        for u in ("alice", "bob"):
            await s.attach_device(u, "phone")
        await s.append_message(msg(0))
        await s.ack("bob", "phone", 1, 2000)  # (bob's watermark in the chat read once)
        await s.append_message(msg(1))
        before = s.db.requests
        got = await s.ack("bob", "phone", 2, 3000)
        # (bob's items read, unless remembered), his cursor and watermark written, alice's
        # receipt appended
        assert s.db.requests - before <= 3
        assert [it.q for _, it in got.items] == [2]  # alice's DELIVERED receipt for seq 2
        assert await s.cursor("bob", "phone") == 2
        assert (await s.db.run("mark", (CONV, "bob")))[0]["delivered"] == 2


async def test_an_ack_of_items_put_by_this_owner_reads_nothing(
        node: CassandraNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """The inbox's owner remembers the items it put there until they are acked: an ack
    within them reads nothing; after a write that failed (its items there or not) it reads."""
    async with open_store(owner_url(node)) as s:
        assert isinstance(s, CassandraStore)
        for u in ("alice", "bob"):
            await s.attach_device(u, "phone")
        await s.append_message(msg(0))
        await s.ack("bob", "phone", 1, 2000)
        await s.append_message(msg(1))
        before = s.db.requests
        got = await s.ack("bob", "phone", 2, 3000)
        # nothing read; bob's cursor and watermark written in the request that appends
        # alice's receipt (her inbox is numbered here too)
        assert s.db.requests - before == 1
        assert await s.cursor("bob", "phone") == 2
        assert (await s.db.run("mark", (CONV, "bob")))[0]["delivered"] == 2
        assert [(it.q, it.seqs) for _, it in got.items] == [(2, (2,))]
        fenced = s._fenced

        async def lost_answer(key: str, *args: Any) -> Any:
            out = await fenced(key, *args)
            if key == "bob":  # (bob's inbox write applied, but its answer is lost)
                raise StoreError("cassandra: lost")
            return out

        monkeypatch.setattr(s, "_fenced", lost_answer)
        monkeypatch.setattr(cassandra, "FINISH_FOR", 0)  # (the send fails: not tried again)
        with pytest.raises(StoreError):
            await s.append_message(msg(2))
        monkeypatch.setattr(s, "_fenced", fenced)
        got = await s.ack("bob", "phone", 3, 4000)  # seq 3 is in bob's inbox: read
        assert await s.cursor("bob", "phone") == 3
        assert [it.seqs for _, it in got.items] == [(3,)]


@pytest.mark.parametrize("numbering", ["owner", "paxos"])
async def test_a_send_whose_caller_left_while_its_seq_was_written_holds_up_no_later_send(
        node: CassandraNode, numbering: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A send whose caller goes away (a forwarded call given up, a device gone) while its seq
    is written. A later send of the chat used to wait for it (TURN_WAIT, 2 s: every send of a
    busy chat behind it waited, and under load their callers gave up too, as in `bench
    cluster --cassandra`). Now the send runs on to its end without its caller (the store's
    `_detached`), and the later one follows it at once. (TURN_WAIT is set far past the
    test's own limit here.)"""
    monkeypatch.setattr(cassandra, "TURN_WAIT", 600.0)
    url = owner_url(node) if numbering == "owner" else node.url(timeout="2")
    async with open_store(url) as s:
        assert isinstance(s, CassandraStore) and s.owners == (numbering == "owner")
        for u in ("alice", "bob"):
            await s.attach_device(u, "phone")
        assert (await s.append_message(msg(0))).seq == 1
        real = s._claims._write
        written = trio.Event()
        go_on = trio.Event()

        async def held(key: str, entries: list[Any]) -> list[Any]:
            await go_on.wait()
            try:
                return await real(key, entries)
            finally:
                written.set()

        s._claims._write = held
        with trio.move_on_after(0.5) as gone:  # the caller leaves while its seq is written
            await s.append_message(msg(1))
        assert gone.cancelled_caught
        s._claims._write = real
        go_on.set()
        await written.wait()  # seq 2 went to the send that left
        with trio.fail_after(60):
            assert (await s.append_message(msg(2))).seq == 3
        page = await s.inbox("bob", "phone", 0, 100)
        assert [it.message.id for it in page.items if isinstance(it, Delivery)] == (
            ["alice-0", "alice-1", "alice-2"])  # (the send that left was finished)


MEMBERS = ("bob", "carol", "dave", "erin", "frank")


async def fanned_out(s: Any) -> None:
    """Wait until every fan-out job has run."""
    with trio.fail_after(20):
        while await s.pending_fanouts() or s.fanout_pending:
            await trio.sleep(0.02)


async def assert_members_got(s: Any, seqs: list[int]) -> None:
    """Each member's inbox holds the group's messages at these seqs, in this order."""
    for u in MEMBERS:
        page = await s.inbox(u, "phone", 0, 100)
        assert [it.message.seq for it in page.items if isinstance(it, Delivery)] == seqs, u


async def test_a_groups_fan_out_costs_no_transaction_per_message(node: CassandraNode) -> None:
    """The group's owner runs its fan-out jobs under the group's shard lease, with plain
    writes: 20 group messages cost no Paxos round once the leases are held (each job took,
    renewed and ended a lease of its own with a lightweight transaction: 3 rounds a
    message), and each member gets each message once, in order."""
    async with open_store(owner_url(node)) as s:
        assert isinstance(s, CassandraStore) and s.owners
        for u in ("alice", *MEMBERS):
            await s.attach_device(u, "phone")
        await s.create_group("g1", "team", "alice", list(MEMBERS), ts=1)

        async def settled() -> None:
            with trio.fail_after(20):
                while await s.pending_fanouts() or s.fanout_pending:
                    await trio.sleep(0.02)

        await settled()  # (the "created" event's: the leases taken)
        paxos = paxos_rounds(s)
        for i in range(20):
            await s.append_message(NewMessage("alice", "phone", f"g-{i}", "g:g1", (), b"hi",
                                              2 + i, group="g1"))
        await settled()
        assert paxos_rounds(s) == paxos
        for u in MEMBERS:
            page = await s.inbox(u, "phone", 0, 100)
            assert [it.message.seq for it in page.items if isinstance(it, Delivery)] == (
                list(range(1, 22))), u


async def test_a_fan_out_job_run_twice_at_once_appends_each_copy_once(
        node: CassandraNode) -> None:
    """Two runs of one job at the same time (an old owner whose lease ended mid-chunk and
    the new one): every member still has the message once."""
    async with open_store(owner_url(node)) as s:
        assert isinstance(s, CassandraStore)
        s.fanout_mode = "external"  # (the job is run by hand below)
        for u in ("alice", *MEMBERS):
            await s.attach_device(u, "phone")
        await s.create_group("g1", "team", "alice", list(MEMBERS), ts=1)
        await s.append_message(NewMessage("alice", "phone", "g-0", "g:g1", (), b"hi", 2,
                                          group="g1"))
        assert await s.pending_fanouts() == [("g:g1", 1), ("g:g1", 2)]
        assert await s.fanout("g:g1", 1)  # (the "created" event's)
        async with trio.open_nursery() as n:
            for _ in range(2):
                n.start_soon(s.fanout, "g:g1", 2)
        assert not await s.pending_fanouts()
        for u in MEMBERS:
            page = await s.inbox(u, "phone", 0, 100)
            assert [it.message.seq for it in page.items if isinstance(it, Delivery)] == [1, 2]


async def test_an_item_found_in_the_inbox_is_handed_to_the_devices_again(
        node: CassandraNode) -> None:
    """A write of an inbox item that failed as far as its caller knew (a timeout, its node
    killed before it told the devices) may have landed. The retry finds it there and appends
    nothing, and used to tell nobody: an online device, which reads the store only when told,
    never got the message (the chaos checker's "lost" with numbering=owner: the items were
    in the inbox, above the device's cursor). Now the item found is handed to the devices
    again (they drop a position they have seen)."""
    async with open_store(owner_url(node)) as s:
        assert isinstance(s, CassandraStore)
        await s.attach_device("bob", "phone")
        m = Message(CONV, 5, 1000, "alice", "phone", "alice-x", b"x")
        told: list[tuple[str, int]] = []
        s.on_append = None  # (the first write: its devices never told)
        assert [it.q for _, it in await s._append_items({"bob": [m]})] == [1]
        s.on_append = lambda items: told.extend((u, it.q) for u, it in items)
        assert await s._append_items({"bob": [m]}) == []  # (the retry: there already)
        assert told == [("bob", 1)]


async def test_a_send_cut_short_under_the_previous_owner_is_finished_before_the_next_one(
        node: CassandraNode) -> None:
    """A send the previous owner numbered and stored but did not finish (the node killed
    before it appended the inbox items) is finished by the chat's next owner before that
    numbers anything: the recipient gets it before the later message, and its retry is a
    duplicate. It used to be finished by its retry, whenever that came, after the later
    messages (the chaos checker's "reordered", a node SIGKILLed with numbering=owner)."""
    async with open_store(owner_url(node)) as s:
        for u in ("alice", "bob"):
            await s.attach_device(u, "phone")
        assert (await s.append_message(msg(0))).seq == 1
        await s.db.run(s.db.batch([("own_seq", (2, CONV)), (
            "own_claim", (CONV, "alice", "alice-1", 2, 1000, now_ms(), 60))]))
        await s.db.run("put_msg", (CONV, bucket(2), 2, 1000, "alice", "phone", "alice-1",
                                   b"x", None, None, None, {"bob"}, 0))
    async with open_store(owner_url(node)) as s:
        told: list[int] = []
        s.on_append = lambda items: told.extend(
            it.message.seq for u, it in items if isinstance(it, Delivery))
        assert (await s.append_message(msg(2))).seq == 3
        page = await s.inbox("bob", "phone", 0, 10)
        assert [it.message.seq for it in page.items if isinstance(it, Delivery)] == [1, 2, 3]
        assert told == [2, 3]  # (bob, online, is told of it)
        again = await s.append_message(msg(1))
        assert (again.seq, again.duplicate) == (2, True)


async def left_by_a_previous_owner(s: Any, job: int) -> None:
    """Group g1's seqs 2 and 3 as a killed owner left them: both claimed and stored, not
    done, and the fan-out job of `job` written and listed (the other one's never written)."""
    rows: list[tuple[str, tuple[Any, ...]]] = [("own_seq", (3, "g:g1"))]
    for seq in (2, 3):
        rows.append(("own_claim", ("g:g1", "alice", f"g-{seq}", seq, 1000, now_ms(), 60)))
        await s.db.run("put_msg", ("g:g1", bucket(seq), seq, 1000, "alice", "phone",
                                   f"g-{seq}", b"x", None, "g1", None, set(MEMBERS), 0))
    await s.db.run(s.db.batch(rows))
    await s.db.run("add_job", ("g:g1", job, list(MEMBERS)))
    await s.db.run("list_job", ("g:g1", job))


async def test_a_groups_sends_cut_short_under_the_previous_owner_go_out_first(
        node: CassandraNode) -> None:
    """The same for a group: the previous owner's unfinished fan-out job (seq 2) and a send
    it stored but whose job it never wrote (seq 3) reach every member before the next
    message. Before, the job waited for the next sweep (run after the new message's), and
    the unwritten one for its sender's retry."""
    async with open_store(owner_url(node)) as s:
        for u in ("alice", *MEMBERS):
            await s.attach_device(u, "phone")
        await s.create_group("g1", "team", "alice", list(MEMBERS), ts=1)
        await fanned_out(s)
    async with open_store(owner_url(node)) as s:
        assert isinstance(s, CassandraStore)
        await trio.sleep(0.5)  # (its first sweep of unfinished jobs is over)
        await left_by_a_previous_owner(s, job=2)
        sent = await s.append_message(NewMessage("alice", "phone", "g-4", "g:g1", (), b"x",
                                                 2000, group="g1"))
        assert sent.seq == 4
        await fanned_out(s)
        await assert_members_got(s, [1, 2, 3, 4])
        again = await s.append_message(NewMessage("alice", "phone", "g-3", "g:g1", (), b"x",
                                                  1000, group="g1"))
        assert (again.seq, again.duplicate) == (3, True)


async def test_a_groups_job_taken_up_after_a_restart_waits_for_a_send_cut_short_before_it(
        node: CassandraNode) -> None:
    """The previous owner stored seq 2 but never wrote its job, and wrote seq 3's job. The
    new owner's sweep takes up job 3 at once; the send of seq 2 is finished only when the
    group is loaded, which a job did not do: the members got 3, and 2 only once the group's
    next send (or 2's retry) came, after it (the chaos checker's group "reordered", seed 2).
    A job now loads its group first, as a send does, and an earlier job that this queues
    runs first."""
    async with open_store(owner_url(node)) as s:
        for u in ("alice", *MEMBERS):
            await s.attach_device(u, "phone")
        await s.create_group("g1", "team", "alice", list(MEMBERS), ts=1)
        await fanned_out(s)
        await left_by_a_previous_owner(s, job=3)
    async with open_store(owner_url(node)) as s:
        await trio.sleep(0.5)  # (its first sweep, at start, takes job 3 up)
        await fanned_out(s)
        await assert_members_got(s, [1, 2, 3])


async def test_the_sweep_of_unfinished_jobs_does_not_run_a_later_one_first(
        node: CassandraNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep that takes up unfinished fan-out jobs lists every job written. A group
    send still writing its job (here its listing is slow) and a later send of the group
    waiting for its turn: the sweep used to queue the later job, which ran first, and the
    members got 3 before 2 (seen by the chaos checker after a kill-node). It now leaves a
    job to its send while an earlier send of its chat still runs here."""
    monkeypatch.setattr(cassandra, "SWEEP_S", 0.05)
    async with open_store(owner_url(node)) as s:
        assert isinstance(s, CassandraStore)
        for u in ("alice", *MEMBERS):
            await s.attach_device(u, "phone")
        await s.create_group("g1", "team", "alice", list(MEMBERS), ts=1)
        await fanned_out(s)
        run = s.db.run

        async def slow_listing(stmt: Any, params: Any = None) -> Any:
            if stmt == "list_job" and params == ("g:g1", 2):
                await trio.sleep(1.0)
            return await run(stmt, params)

        monkeypatch.setattr(s.db, "run", slow_listing)
        async with trio.open_nursery() as nursery:
            for i in (2, 3):
                nursery.start_soon(s.append_message, NewMessage(
                    "alice", "phone", f"g-{i}", "g:g1", (), b"x", 1000 + i, group="g1"))
                await trio.sleep(0.1)
        await fanned_out(s)
        await assert_members_got(s, [1, 2, 3])
