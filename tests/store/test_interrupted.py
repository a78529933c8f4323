"""Sends cut short between their steps, and devices attaching at the same moment: what the
chaos checker found on the Cassandra store (docs/RELIABILITY.md, findings 2, 4 and 5).

A send is (1) claim the seq, (2) write the message (and a group's fan-out job), (3) append the
inbox items, (4) mark the claim done; an interrupted send is completed by the client's retry
(same client id), which redoes 2-4 if the claim is not done, or is answered as a duplicate if it
is. Interruptions are simulated by failing (or cancelling) a store request after it applied."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
import trio

from chatd.core import Delivery, Message, Notice, ReceiptNote, message_bytes
from chatd.core.values import now_ms
from chatd.protocol.frames import Status
from chatd.store import CassandraStore, NewMessage, Store, StoreError, open_store
from chatd.store import cassandra as cassandra_module

USERS = ["u0", "u1", "u2", "u3"]


async def test_two_devices_attaching_at_once_both_get_the_copies(store: Store) -> None:
    """Finding 5: two devices of a user attaching at the same moment each read the devices
    before either had written its row; the count cached was 1, so for 2 s what the user sent
    from one device was not copied for the other."""
    for u in USERS:
        async with trio.open_nursery() as nursery:
            for d in ("a", "b"):
                nursery.start_soon(store.attach_device, u, d)
    for i, u in enumerate(USERS):
        await store.append_message(NewMessage(u, "a", f"c{i}", f"d:{u}:zed", ("zed",), b"hi",
                                              10 + i))
    for u in USERS:
        page = await store.inbox(u, "b", 0, 100)
        assert [it.id for it in page.items if isinstance(it, Delivery)] == \
            [f"c{USERS.index(u)}"], u


# ---- Cassandra: a retry completing a send that was cut short ------------------------------


@pytest.fixture
async def cassandra_store(request: pytest.FixtureRequest,
                          monkeypatch: pytest.MonkeyPatch) -> Any:
    from chatd.store import cassandra as cassandra_store

    node = request.getfixturevalue("cassandra")
    node.truncate()
    monkeypatch.setattr(cassandra_store, "REDO_AFTER_MS", 0)  # the retry redoes at once
    async with open_store(str(node.url())) as s:
        assert isinstance(s, CassandraStore)
        yield s


def interrupt(monkeypatch: pytest.MonkeyPatch, s: CassandraStore, what: str, *,
              applied: bool, cancel: trio.CancelScope | None = None) -> list[Any]:
    """The first request of the prepared statement `what` is cut short, after it applied or
    before it was sent: its caller gets a StoreError (the node lost Cassandra, a timeout) or,
    with `cancel`, is cancelled (the connection that asked was closed)."""
    real = s.db.run
    hit: list[Any] = []

    async def run(stmt: Any, params: Any = None) -> Any:
        if not hit and stmt == what and not applied:
            hit.append(stmt)
            raise StoreError("cassandra: NoHostAvailable: interrupted before it was sent")
        result = await real(stmt, params)
        if not hit and stmt == what:
            hit.append(stmt)
            if cancel is not None:
                cancel.cancel()
                await trio.lowlevel.checkpoint()
            raise StoreError("cassandra: NoHostAvailable: interrupted after it applied")
        return result

    monkeypatch.setattr(s.db, "run", run)
    return hit


def ids(items: Any) -> Counter[str]:
    return Counter(it.id for it in items if isinstance(it, Delivery))


async def test_cassandra_a_one_to_one_send_redone_by_its_retry_is_in_each_inbox_once(
        cassandra_store: CassandraStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 2: the send's inbox items are written, then it is cut short before its claim is
    marked done; the retry redoes steps 2-4: the recipient's devices (and the sender's other
    device) must have the message once, not again under new positions."""
    s = cassandra_store
    for u, d in [("alice", "a"), ("alice", "b"), ("bob", "a"), ("bob", "b")]:
        await s.attach_device(u, d)
    msg = NewMessage("alice", "a", "m1", "d:alice:bob", ("bob",), b"hi", 10)
    hit = interrupt(monkeypatch, s, "done", applied=False)
    with pytest.raises(StoreError):
        await s.append_message(msg)
    assert hit
    first = await s.inbox("bob", "a", 0, 100)
    assert ids(first.items) == Counter({"m1": 1})  # written before the interruption
    again = await s.append_message(msg)  # the client's retry: redone, now SENT
    assert not again.duplicate and again.seq == 1
    dup = await s.append_message(msg)  # and the next one is a duplicate
    assert dup.duplicate and dup.seq == 1
    await s.append_message(NewMessage("alice", "a", "m2", "d:alice:bob", ("bob",), b"x", 11))
    for user, device in [("bob", "a"), ("bob", "b"), ("alice", "b")]:
        page = await s.inbox(user, device, 0, 100)
        assert ids(page.items) == Counter({"m1": 1, "m2": 1}), (user, device)
        assert [it.seq for it in page.items if isinstance(it, Delivery)] == [1, 2], \
            (user, device)


async def test_cassandra_a_group_send_answered_as_duplicate_is_still_fanned_out(
        cassandra_store: CassandraStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 4: a group send is cut short (its caller cancelled: the connection closed)
    after the step that marks its claim done; the retry is answered as a duplicate (SENT):
    the members must still get the message."""
    s = cassandra_store
    members = ["bob", "carol", "dave"]
    for u in ["alice", *members]:
        await s.attach_device(u, "a")
    await s.create_group("g1", "team", "alice", members, ts=1)
    msg = NewMessage("alice", "a", "m1", "g:g1", (), b"hi", 10, group="g1")
    with trio.CancelScope() as scope:
        hit = interrupt(monkeypatch, s, "done", applied=True, cancel=scope)
        await s.append_message(msg)
    assert scope.cancelled_caught and hit
    again = await s.append_message(msg)
    assert again.duplicate and again.seq == 2
    with trio.move_on_after(10):
        while await s.pending_fanouts():
            await trio.sleep(0.05)
    for u in members:
        page = await s.inbox(u, "a", 0, 100)
        assert ids(page.items)["m1"] == 1, u


async def test_cassandra_a_group_send_failing_after_done_is_still_fanned_out(
        cassandra_store: CassandraStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 4 across a Cassandra restart: the request marking the claim done applied but
    its answer was lost (the client got an error); the retry gets SENT as a duplicate and the
    members must get the message."""
    s = cassandra_store
    for u in ["alice", "bob", "carol"]:
        await s.attach_device(u, "a")
    await s.create_group("g1", "team", "alice", ["bob", "carol"], ts=1)
    msg = NewMessage("alice", "a", "m1", "g:g1", (), b"hi", 10, group="g1")
    interrupt(monkeypatch, s, "done", applied=True)
    with pytest.raises(StoreError):
        await s.append_message(msg)
    assert (await s.append_message(msg)).duplicate
    with trio.move_on_after(10):
        while await s.pending_fanouts():
            await trio.sleep(0.05)
    for u in ["bob", "carol"]:
        assert ids((await s.inbox(u, "a", 0, 100)).items)["m1"] == 1, u


async def test_cassandra_a_send_whose_caller_goes_away_after_its_claim_still_completes(
        cassandra_store: CassandraStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 3 (`reordered`, `receipts`) with no store fault: the sending device's
    connection closes (its task cancelled) after the send took its seq and wrote its
    message, before the inbox appends. The send must still finish, with no retry: the
    chat's next message must not reach the reader before it (it used to, the cut send being
    finished by its retry much later, under the reader's watermarks, with no receipt)."""
    s = cassandra_store
    for u in ["alice", "bob"]:
        await s.attach_device(u, "a")
    real = s._append_items
    m1 = NewMessage("alice", "a", "m1", "d:alice:bob", ("bob",), b"1", 10)
    with trio.CancelScope() as scope:
        async def caller_gone(per_user: Any) -> Any:
            scope.cancel()  # (the device's connection closed)
            await trio.sleep(0.2)
            return await real(per_user)

        monkeypatch.setattr(s, "_append_items", caller_gone)
        await s.append_message(m1)
    assert scope.cancelled_caught
    monkeypatch.setattr(s, "_append_items", real)
    assert (await s.append_message(
        NewMessage("bob", "a", "m2", "d:alice:bob", ("alice",), b"2", 11))).seq == 2
    page = await s.inbox("bob", "a", 0, 100)
    assert [(it.id, it.seq) for it in page.items if isinstance(it, Delivery)] == [("m1", 1)]
    page = await s.inbox("alice", "a", 0, 100)
    assert [(it.id, it.seq) for it in page.items if isinstance(it, Delivery)] == [("m2", 2)]
    again = await s.append_message(m1)  # (the device's retry, once it is back)
    assert again.duplicate and again.seq == 1


# ---- Cassandra: concurrent sends in one chat reach each inbox in seq order ------------------


def slow_message_row(monkeypatch: pytest.MonkeyPatch, s: CassandraStore, client_id: str,
                     seconds: float) -> trio.Event:
    """Writing the message row of `client_id` (step 2 of its send, so its seq is taken) takes
    `seconds`; the event is set when it starts."""
    real, real_batch = s.db.run, s.db.batch
    started = trio.Event()

    def batch(items: Any) -> Any:  # (the row may go in a batch: remember what is in it)
        b = real_batch(items)
        b.chatd_items = list(items)
        return b

    async def run(stmt: Any, params: Any = None) -> Any:
        rows = getattr(stmt, "chatd_items", [(stmt, params)])
        if any(name == "put_msg" and p is not None and p[6] == client_id for name, p in rows):
            started.set()
            await trio.sleep(seconds)
        return await real(stmt, params)

    monkeypatch.setattr(s.db, "run", run)
    monkeypatch.setattr(s.db, "batch", batch)
    return started


async def send_both(s: CassandraStore, monkeypatch: pytest.MonkeyPatch, first: NewMessage,
                    second: NewMessage) -> None:
    """`first` takes its seq, then `second` is sent (and stored) while `first`'s message row
    is still being written."""
    slowed = slow_message_row(monkeypatch, s, first.client_id, 0.5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(s.append_message, first)
        with trio.fail_after(5):
            await slowed.wait()
        nursery.start_soon(s.append_message, second)


async def test_cassandra_concurrent_one_to_one_sends_reach_the_inbox_in_seq_order(
        cassandra_store: CassandraStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 3: a send takes its seq in step 1 and appends in step 3; a send with a later seq
    whose step 2 ends first must not reach an inbox before it (here bob's: alice's message,
    and bob's own copy of his for his other device)."""
    s = cassandra_store
    for u, d in [("alice", "a"), ("bob", "a"), ("bob", "b")]:
        await s.attach_device(u, d)
    await s.append_message(NewMessage("alice", "a", "m0", "d:alice:bob", ("bob",), b"", 9))
    await send_both(s, monkeypatch,
                    NewMessage("alice", "a", "m1", "d:alice:bob", ("bob",), b"", 10),
                    NewMessage("bob", "a", "m2", "d:alice:bob", ("alice",), b"", 11))
    page = await s.inbox("bob", "b", 0, 100)
    assert [(it.id, it.seq) for it in page.items if isinstance(it, Delivery)] == [
        ("m0", 1), ("m1", 2), ("m2", 3)]


async def test_cassandra_concurrent_group_sends_reach_members_in_seq_order(
        cassandra_store: CassandraStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 3 in a group: the fan-out job of a later seq must not run before the job of an
    earlier one that was still being written."""
    s = cassandra_store
    members = ["bob", "carol"]
    for u in ["alice", *members]:
        await s.attach_device(u, "a")
    await s.create_group("g1", "team", "alice", members, ts=1)
    await send_both(s, monkeypatch,
                    NewMessage("alice", "a", "m1", "g:g1", (), b"", 10, group="g1"),
                    NewMessage("bob", "a", "m2", "g:g1", (), b"", 11, group="g1"))
    with trio.move_on_after(10):
        while await s.pending_fanouts():
            await trio.sleep(0.05)
    page = await s.inbox("carol", "a", 0, 100)
    assert [it.seq for it in page.items if isinstance(it, Delivery)] == [1, 2, 3]


async def test_cassandra_a_store_closed_while_taking_a_job_gives_it_back(
        cassandra_store: CassandraStore, cassandra: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fan-out cut short (its store closing) while the request taking the job's lease was in
    flight: the take applied, so the closing store must give the job back, or no node runs it
    for the length of the lease."""
    s = cassandra_store
    for u in ["alice", "bob"]:
        await s.attach_device(u, "a")
    s.fanout_mode = "external"
    await s.create_group("g1", "team", "alice", ["bob"], ts=1)
    [(conv, seq)] = await s.pending_fanouts()
    async with open_store(str(cassandra.url())) as b:
        assert isinstance(b, CassandraStore)
        b.fanout_mode = "external"
        real = b.db.applied
        with trio.CancelScope() as scope:
            async def taken_then_cut(stmt: Any, params: Any = None) -> Any:
                result = await real(stmt, params)
                if stmt == "job_take":
                    scope.cancel()
                    await trio.lowlevel.checkpoint()
                return result

            monkeypatch.setattr(b.db, "applied", taken_then_cut)
            await b.fanout(conv, seq)
        assert scope.cancelled_caught
    assert await s.fanout(conv, seq)  # not "running on another node" for 30 s
    assert [it.seq for it in (await s.inbox("bob", "a", 0, 10)).items] == [1]


def cut_first_inbox_append(monkeypatch: pytest.MonkeyPatch, s: CassandraStore) -> None:
    """The next send's inbox appends fail (Cassandra restarting): it took its seq and wrote
    its message, and its caller gets a StoreError."""
    real = s._append_items
    cut: list[bool] = []

    async def cut_once(per_user: Any) -> Any:
        if not cut:
            cut.append(True)
            raise StoreError("cassandra: NoHostAvailable: cut before the inbox appends")
        return await real(per_user)

    monkeypatch.setattr(s, "_append_items", cut_once)


async def send_second(s: CassandraStore, nursery: trio.Nursery, got: dict[str, Any],
                      m2: NewMessage | None = None) -> None:
    """alice's m2 (or the message given) sent in the background (its Appended in got["m2"]
    once stored); returns when it took seq 2 and waits for seq 1's turn."""
    async def second() -> None:
        got["m2"] = await s.append_message(
            m2 or NewMessage("alice", "a", "m2", "d:alice:bob", ("bob",), b"2", 11))

    nursery.start_soon(second)
    with trio.fail_after(10):
        while 2 not in s._turns.get("d:alice:bob", ()):
            await trio.sleep(0.01)


async def test_cassandra_a_send_finished_by_its_retry_after_a_later_one_gets_its_receipt(
        cassandra_store: CassandraStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 3 (`receipts`): a send cut short before its inbox appends (Cassandra
    restarting) is finished by its retry after a later message of its chat was delivered.
    The reader's delivered watermark is past its seq by then, and no DELIVERED receipt was
    made for it: its sender never saw it delivered. A message at an inbox position no device
    of the reader had reached is delivered now, whatever its seq; a second device acking the
    same position makes no second receipt. (The failed seq is let go at once, HOLD_MAX=0,
    not redone by the store: a retry coming after a minute.)"""
    monkeypatch.setattr(cassandra_module, "HOLD_MAX", 0.0)
    s = cassandra_store
    for u, d in [("alice", "a"), ("bob", "a"), ("bob", "b")]:
        await s.attach_device(u, d)
    cut_first_inbox_append(monkeypatch, s)
    m1 = NewMessage("alice", "a", "m1", "d:alice:bob", ("bob",), b"1", 10)
    with pytest.raises(StoreError):
        await s.append_message(m1)
    assert (await s.append_message(
        NewMessage("alice", "a", "m2", "d:alice:bob", ("bob",), b"2", 11))).seq == 2
    await s.ack("bob", "a", 1, 20)  # m2 delivered: bob's watermark is 2
    assert (await s.append_message(m1)).seq == 1  # the retry finishes it, after m2
    page = await s.inbox("bob", "a", 1, 100)
    assert [(it.q, it.seq) for it in page.items if isinstance(it, Delivery)] == [(2, 1)]
    await s.ack("bob", "a", 2, 21)
    await s.ack("bob", "b", 2, 22)  # (bob's other device: nothing new to anyone)
    receipts = [it for it in (await s.inbox("alice", "a", 0, 100)).items
                if not isinstance(it, Delivery)]
    assert sorted(seq for it in receipts for seq in it.seqs) == [1, 2]


async def test_cassandra_a_send_that_failed_after_taking_its_seq_keeps_its_place(
        cassandra_store: CassandraStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 3 (`reordered`): a send fails with a store error after taking its seq (its
    inbox append failed: Cassandra restarting). The chat's next message, sent meanwhile,
    used to reach the reader first, and the failed one only with its retry (15 s later on
    a real node, REDO_AFTER_MS). Now the chat's next send waits for the failed seq, and its
    retry redoes it at once: the reader gets them in seq order."""
    from chatd.store import cassandra

    monkeypatch.setattr(cassandra, "REDO_AFTER_MS", 15_000)  # (as on a real node)
    s = cassandra_store
    m1 = await first_send_fails(s, monkeypatch)
    got: dict[str, Any] = {}

    async with trio.open_nursery() as nursery:
        await send_second(s, nursery, got)
        got["m1"] = await s.append_message(m1)  # the device's retry
    await assert_in_seq_order(s, got)


async def first_send_fails(s: CassandraStore, monkeypatch: pytest.MonkeyPatch,
                           devices: Sequence[tuple[str, str]] = (("alice", "a"), ("bob", "a"))
                           ) -> NewMessage:
    """alice's m1 to bob fails after it took seq 1 (its inbox append cut short)."""
    for u, d in devices:
        await s.attach_device(u, d)
    cut_first_inbox_append(monkeypatch, s)
    m1 = NewMessage("alice", "a", "m1", "d:alice:bob", ("bob",), b"1", 10)
    with pytest.raises(StoreError):
        await s.append_message(m1)
    return m1


async def assert_in_seq_order(s: CassandraStore, got: dict[str, Any]) -> None:
    """m1 kept seq 1, m2 got 2, and bob's inbox has them in that order."""
    assert (got["m1"].seq, got["m2"].seq) == (1, 2)
    page = await s.inbox("bob", "a", 0, 100)
    assert [(it.id, it.seq) for it in page.items if isinstance(it, Delivery)] == [
        ("m1", 1), ("m2", 2)]


async def test_cassandra_owner_a_send_that_failed_after_taking_its_seq_keeps_its_place(
        cassandra: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same with numbering=owner, which used to let the seq go at once: the chat's next
    message reached the reader first, and the failed one only with a retry 15 s later. Now
    the seq is held, and the retry redoes it in its place once the failed try's plain
    writes have landed or never will (`redo_wait`, the lease margin: 4 s at timeout=2;
    shortened here). A retry before that is "still being stored" and keeps it held. (Its
    owner first tries the appends again itself for FINISH_FOR, the test below: off here.)"""
    from chatd.store import cassandra as cassandra_store

    cassandra.truncate()
    monkeypatch.setattr(cassandra_store, "redo_wait", lambda timeout: 0.5)
    monkeypatch.setattr(cassandra_store, "FINISH_FOR", 0)
    async with open_store(cassandra.url(numbering="owner", timeout="2", lease="9")) as s:
        assert isinstance(s, CassandraStore) and s.owners
        m1 = await first_send_fails(s, monkeypatch)
        got: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:
            await send_second(s, nursery, got)
            with pytest.raises(StoreError, match="still being stored"):
                await s.append_message(m1)  # at once: its writes may still land
            await trio.sleep(0.6)
            assert "m2" not in got
            with trio.fail_after(5):
                got["m1"] = await s.append_message(m1)  # the device's retry, later
        await assert_in_seq_order(s, got)


async def test_cassandra_a_redone_send_after_a_new_one_in_one_call_keeps_its_place(
        cassandra: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """One call may carry a new message of a chat before the retry of a failed send of the
    same chat (the server stores the sends of many connections together). The retry redoes
    the failed send at its held seq 1, the new message gets 2, and bob's inbox gets 1 then
    2: it used to get them in the call's order, 2 then 1 (seen as `reordered` by the chaos
    checker, a group's jobs queued the same way)."""
    from chatd.store import cassandra as cassandra_store

    cassandra.truncate()
    monkeypatch.setattr(cassandra_store, "redo_wait", lambda timeout: 0.2)
    monkeypatch.setattr(cassandra_store, "FINISH_FOR", 0)
    async with open_store(cassandra.url(numbering="owner", timeout="2", lease="9")) as s:
        assert isinstance(s, CassandraStore)
        m1 = await first_send_fails(s, monkeypatch)
        await trio.sleep(0.3)
        m2 = NewMessage("alice", "a", "m2", "d:alice:bob", ("bob",), b"2", 11)
        r2, r1 = await s.append_messages([m2, m1])
        await assert_in_seq_order(s, {"m1": r1, "m2": r2})


@pytest.mark.parametrize("numbering", ["owner", "paxos"])
async def test_cassandra_a_retry_still_being_stored_fails_no_new_send_of_its_call(
        cassandra: Any, numbering: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A device's batch carries the retry of a send whose first try is still being stored
    and a new send (an SDK resending what it had in flight after a reconnect). The retry is
    refused ("still being stored"), and that used to fail the whole call before the new send
    was stored: its seq stayed held for its own retry, and when that came late (the device
    reconnecting again) the chat's later messages went first (`reordered`, chaos seed 2).
    Now the new send is stored and appended before the call fails; its retry is a
    duplicate."""
    cassandra.truncate()
    async with open_store(cassandra.url(numbering=numbering, timeout="2", lease="9")) as s:
        assert isinstance(s, CassandraStore)
        for u in ["alice", "bob"]:
            await s.attach_device(u, "a")
        real = s._append_items
        slow = trio.Event()

        async def slow_first(per_user: Any) -> Any:
            if not slow.is_set():
                slow.set()
                await trio.sleep(1.0)
            return await real(per_user)

        monkeypatch.setattr(s, "_append_items", slow_first)
        m1 = NewMessage("alice", "a", "m1", "d:alice:bob", ("bob",), b"1", 10)
        m2 = NewMessage("alice", "a", "m2", "d:alice:bob", ("bob",), b"2", 11)
        got: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:
            async def first() -> None:
                got["m1"] = await s.append_message(m1)

            nursery.start_soon(first)
            await slow.wait()  # (m1 is appending its items)
            with pytest.raises(StoreError, match="still being stored"):
                await s.append_messages([m1, m2])
        got["m2"] = await s.append_message(m2)
        assert got["m2"].duplicate
        await assert_in_seq_order(s, got)


async def test_cassandra_owner_a_send_whose_inbox_append_failed_is_finished_by_its_owner(
        cassandra: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """numbering=owner: a send whose inbox appends fail after it stored its message (the
    inbox's owner restarting, Cassandra slow) is finished by the chat's owner, which tries
    the appends again in its place: SENT, the chat's next message after it, bob's copy once.
    It used to fail, and its seq waited for its device's retry, which a device that moved to
    another node sent too late: the chat's later messages went first (the chaos checker's
    "reordered" after a kill-node)."""
    cassandra.truncate()
    async with open_store(cassandra.url(numbering="owner", timeout="2", lease="9")) as s:
        assert isinstance(s, CassandraStore) and s.owners
        for u in ["alice", "bob"]:
            await s.attach_device(u, "a")
        cut_first_inbox_append(monkeypatch, s)
        got: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:
            async def first() -> None:
                got["m1"] = await s.append_message(
                    NewMessage("alice", "a", "m1", "d:alice:bob", ("bob",), b"1", 10))

            nursery.start_soon(first)
            with trio.fail_after(10):  # (m1 took seq 1 before m2 is sent)
                while 1 not in s._turns.get("d:alice:bob", ()):
                    await trio.sleep(0.01)
            await send_second(s, nursery, got)
        await assert_in_seq_order(s, got)


async def test_cassandra_a_failed_seq_is_held_while_its_device_keeps_trying(
        cassandra_store: CassandraStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same, with the store down for a while: the failed send's tries fail too, before
    they reach its seq. The chat's next send waits past TURN_WAIT, as long as the device
    keeps trying (RETRY_HOLD after each try; shortened here), and goes on only after it."""
    from chatd.store import cassandra

    monkeypatch.setattr(cassandra, "TURN_WAIT", 0.1)
    monkeypatch.setattr(cassandra, "RETRY_HOLD", 1.0)
    monkeypatch.setattr(cassandra, "REDO_AFTER_MS", 15_000)  # (as on a real node)
    s = cassandra_store
    for u in ["alice", "bob"]:
        await s.attach_device(u, "a")
    real_items, real_claims = s._append_items, s._claims._write
    down = [True]

    async def items(per_user: Any) -> Any:
        if down[0]:
            raise StoreError("cassandra: NoHostAvailable: down")
        return await real_items(per_user)

    monkeypatch.setattr(s, "_append_items", items)
    m1 = NewMessage("alice", "a", "m1", "d:alice:bob", ("bob",), b"1", 10)
    with pytest.raises(StoreError):
        await s.append_message(m1)

    async def claims(key: str, entries: list[Any]) -> list[Any]:
        if down[0]:
            raise StoreError("cassandra: NoHostAvailable: down")
        return await real_claims(key, entries)

    got: dict[str, Any] = {}

    async with trio.open_nursery() as nursery:
        await send_second(s, nursery, got)
        s._claims._write = claims  # (then claims fail too)
        for _ in range(6):  # the device tries every 0.4 s for 2.4 s, the store still down
            await trio.sleep(0.4)
            with pytest.raises(StoreError):
                await s.append_message(m1)
        assert "m2" not in got
        down[0] = False
        got["m1"] = await s.append_message(m1)
    assert (got["m1"].seq, got["m2"].seq) == (1, 2)
    page = await s.inbox("bob", "a", 0, 100)
    assert [(it.id, it.seq) for it in page.items if isinstance(it, Delivery)] == [
        ("m1", 1), ("m2", 2)]


@pytest.mark.parametrize("numbering", ["owner", "paxos"])
async def test_cassandra_a_held_seq_whose_retry_does_not_come_is_redone_in_its_place(
        cassandra: Any, numbering: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 6 (i): a send fails after taking its seq (its inbox append failed), and its
    device's retries do not reach the node in time (they fail on the way: a node that no
    longer forwards them, a connection that went silent). Once the hold ran out the seq
    used to be let go ("held by no running send"): the chat's next message reached the
    reader first, and the failed one only with the retry, after it (the chaos checker's
    "reordered"). Now the chat's owner redoes the held send itself, in its place, and the
    late retry is a duplicate."""
    from chatd.store import cassandra as cassandra_store

    cassandra.truncate()
    monkeypatch.setattr(cassandra_store, "TURN_WAIT", 0.1)
    monkeypatch.setattr(cassandra_store, "RETRY_HOLD", 1.0)
    monkeypatch.setattr(cassandra_store, "redo_wait", lambda timeout: 0.5)
    monkeypatch.setattr(cassandra_store, "FINISH_FOR", 0)
    async with open_store(cassandra.url(numbering=numbering, timeout="2", lease="9")) as s:
        assert isinstance(s, CassandraStore)
        m1 = await first_send_fails(s, monkeypatch)  # (and no retry comes)
        with trio.fail_after(15):
            m2 = await s.append_message(
                NewMessage("alice", "a", "m2", "d:alice:bob", ("bob",), b"2", 11))
        page = await s.inbox("bob", "a", 0, 100)
        assert [(it.id, it.seq) for it in page.items if isinstance(it, Delivery)] == [
            ("m1", 1), ("m2", 2)]
        r1 = await s.append_message(m1)  # the retry, late
        assert (r1.seq, r1.duplicate, m2.seq) == (1, True, 2)
        again = await s.inbox("bob", "a", 0, 100)
        assert [it.id for it in again.items if isinstance(it, Delivery)] == ["m1", "m2"]


async def test_cassandra_a_send_whose_claim_applied_unseen_keeps_its_place(
        cassandra_store: CassandraStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """numbering=paxos: alice's claim of seq 1 applies, but its answer is lost (Cassandra
    restarting), so her send fails knowing nothing of its seq. bob's next message in the
    chat used to take seq 2 and be appended at once, and alice's retry appended seq 1 after
    it: bob's other device saw 2, then 1 (the suite's Cassandra restart run, `reordered`).
    Now the node looks the lost claim up before the chat's next claims, and holds its seq
    for the retry (redoing the send itself if the retry does not come in time)."""
    monkeypatch.setattr(cassandra_module, "TURN_WAIT", 0.1)
    monkeypatch.setattr(cassandra_module, "RETRY_HOLD", 1.0)
    monkeypatch.setattr(cassandra_module, "FINISH_FOR", 0)
    s = cassandra_store
    for u, d in [("alice", "a"), ("bob", "a"), ("bob", "b")]:
        await s.attach_device(u, d)
    real = s.db.run
    lost: list[bool] = []

    async def run(stmt: Any, params: Any = None) -> Any:
        result = await real(stmt, params)
        if not lost and "move_seq" in getattr(stmt, "chatd_names", ""):
            lost.append(True)
            raise StoreError("cassandra: NoHostAvailable: the answer lost")
        return result

    monkeypatch.setattr(s.db, "run", run)
    m1 = NewMessage("alice", "a", "m1", "d:alice:bob", ("bob",), b"1", 10)
    with pytest.raises(StoreError):
        await s.append_message(m1)
    with trio.fail_after(15):
        m2 = await s.append_message(
            NewMessage("bob", "b", "m2", "d:alice:bob", ("alice",), b"2", 11))
    await assert_in_seq_order(s, {"m1": await s.append_message(m1), "m2": m2})  # (retry)


@pytest.mark.parametrize("numbering", ["owner", "paxos"])
async def test_cassandra_a_retry_and_a_new_send_in_one_call_wait_for_a_send_between_them(
        cassandra: Any, numbering: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """alice's m1 fails after taking seq 1; bob's m2 takes seq 2 and waits for seq 1's
    turn. alice's device then sends m1 again with a new m3 in one write (an SDK resending
    on reconnect): m1 is redone in its place, m3 takes seq 3. Both used to be appended at
    once, before m2: alice's other device saw 1, 3, 2 (the suite's Cassandra restart run,
    `reordered`). Now m3 waits for m2's turn."""
    monkeypatch.setattr(cassandra_module, "redo_wait", lambda timeout: 0.5)
    monkeypatch.setattr(cassandra_module, "FINISH_FOR", 0)
    cassandra.truncate()
    async with open_store(cassandra.url(numbering=numbering, timeout="2", lease="9")) as s:
        assert isinstance(s, CassandraStore)
        m1 = await first_send_fails(s, monkeypatch,
                                    [("alice", "a"), ("alice", "b"), ("bob", "a")])
        if numbering == "owner":
            await trio.sleep(0.5)  # (its retry redoes it once its writes cannot land late)
        got: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:
            await send_second(s, nursery, got, NewMessage("bob", "a", "m2", "d:alice:bob",
                                                          ("alice",), b"2", 11))
            with trio.fail_after(15):
                got["m1"], got["m3"] = await s.append_messages(
                    [m1, NewMessage("alice", "a", "m3", "d:alice:bob", ("bob",), b"3", 12)])
        assert [got[k].seq for k in ("m1", "m2", "m3")] == [1, 2, 3]
        page = await s.inbox("alice", "b", 0, 100)
        assert [(it.id, it.seq) for it in page.items if isinstance(it, Delivery)] == [
            ("m1", 1), ("m2", 2), ("m3", 3)]


async def test_cassandra_a_redo_and_the_devices_retry_do_not_run_at_once(
        cassandra: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the chat's owner redoes a held send itself (its retry did not come in time),
    the device's retry arrives. It is answered "still being stored" instead of redoing the
    send a second time beside the first (each would append the message again, and only
    the inbox markers would keep bob from getting it twice); m1 is appended once more in
    all (the redo), not twice."""
    monkeypatch.setattr(cassandra_module, "TURN_WAIT", 0.1)
    monkeypatch.setattr(cassandra_module, "RETRY_HOLD", 1.0)
    monkeypatch.setattr(cassandra_module, "redo_wait", lambda timeout: 0.5)
    monkeypatch.setattr(cassandra_module, "FINISH_FOR", 0)
    cassandra.truncate()
    async with open_store(cassandra.url(numbering="owner", timeout="2", lease="9")) as s:
        assert isinstance(s, CassandraStore)
        m1 = await first_send_fails(s, monkeypatch)  # (no retry comes in time)
        real = s._append_items
        appends: list[str] = []
        redoing, go_on = trio.Event(), trio.Event()

        async def items(per_user: Any) -> Any:
            ids = [e.id for es in per_user.values() for e in es if isinstance(e, Message)]
            appends.extend(ids)
            if "m1" in ids and not redoing.is_set():  # the owner's redo, held up here
                redoing.set()
                await go_on.wait()
            return await real(per_user)

        monkeypatch.setattr(s, "_append_items", items)
        got: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:
            await send_second(s, nursery, got)
            with trio.fail_after(10):
                await redoing.wait()  # (m2 found seq 1's hold run out: redone by the owner)
            with pytest.raises(StoreError, match="still being stored"):
                await s.append_message(m1)  # the device's retry, meanwhile
            go_on.set()
        assert appends.count("m1") == 1
        got["m1"] = await s.append_message(m1)  # (once the redo is done)
        assert got["m1"].duplicate
        await assert_in_seq_order(s, got)


async def test_cassandra_the_messages_kept_for_redos_are_bounded_and_given_back(
        cassandra: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store keeps the message of each held seq to redo it (above), up to HELD_BYTES.
    A message over that is not kept: its seq is let go when its hold runs out, as before
    the redo existed. What a redone or released seq kept is given back, so the room does
    not run out over a node's life and its chats do not go back to being reordered."""
    monkeypatch.setattr(cassandra_module, "TURN_WAIT", 0.1)
    monkeypatch.setattr(cassandra_module, "RETRY_HOLD", 1.0)
    monkeypatch.setattr(cassandra_module, "redo_wait", lambda timeout: 0.5)
    monkeypatch.setattr(cassandra_module, "FINISH_FOR", 0)
    m1 = NewMessage("alice", "a", "m1", "d:alice:bob", ("bob",), b"1", 10)
    monkeypatch.setattr(cassandra_module, "HELD_BYTES", message_bytes(m1))
    cassandra.truncate()
    async with open_store(cassandra.url(numbering="owner", timeout="2", lease="9")) as s:
        assert isinstance(s, CassandraStore)
        for u in ["alice", "bob", "carol"]:
            await s.attach_device(u, "a")
        for m in [m1, NewMessage("carol", "a", "c1", "d:bob:carol", ("bob",), b"big" * 100,
                                 10)]:
            cut_first_inbox_append(monkeypatch, s)
            with pytest.raises(StoreError):
                await s.append_message(m)
        assert set(s._held_msgs) == {("d:alice:bob", 1)}  # (carol's is over the room left)
        assert s._held_bytes == message_bytes(m1)
        with trio.fail_after(15):  # each chat's next message: m1 redone, c1 let go
            await s.append_message(NewMessage("alice", "a", "m2", "d:alice:bob", ("bob",),
                                              b"2", 11))
            await s.append_message(NewMessage("carol", "a", "c2", "d:bob:carol", ("bob",),
                                              b"2", 11))
            while s._held_msgs or s._held.get("d:alice:bob"):
                await trio.sleep(0.02)
        assert s._held_bytes == 0
        page = await s.inbox("bob", "a", 0, 100)
        assert [it.id for it in page.items if isinstance(it, Delivery)] == ["m1", "m2", "c2"]


async def group_of_three(s: CassandraStore) -> int:
    """alice, bob and carol in group g1; alice's message in every inbox: its seq."""
    for u in ["alice", "bob", "carol"]:
        await s.attach_device(u, "a")
    await s.create_group("g1", "team", "alice", ["bob", "carol"], ts=1)
    sent = await s.append_message(NewMessage("alice", "a", "hi", "g:g1", (), b"hi", 2,
                                             group="g1"))
    with trio.fail_after(20):
        while await s.pending_fanouts() or s.fanout_pending:
            await trio.sleep(0.02)
    return sent.seq


async def ack_all(s: CassandraStore, user: str) -> None:
    await s.ack(user, "a", (await s.inbox(user, "a", 0, 100)).upto, 3)


def fail_first_all_receipt(monkeypatch: pytest.MonkeyPatch, s: CassandraStore) -> list[bool]:
    """The first append of a group's "all" receipt fails (the sender's inbox's owner
    restarting); what failed is in the list returned."""
    real = s._append_items
    failed: list[bool] = []

    async def items(per_user: Any) -> Any:
        if not failed and any(isinstance(e, ReceiptNote) and e.all
                              for es in per_user.values() for e in es):
            failed.append(True)
            raise StoreError("cassandra: NoHostAvailable: the inbox's owner restarting")
        return await real(per_user)

    monkeypatch.setattr(s, "_append_items", items)
    return failed


async def alls(s: CassandraStore) -> list[tuple[tuple[int, ...], int]]:
    """The "all" receipts in alice's inbox: (seqs, status)."""
    page = await s.inbox("alice", "a", 0, 100)
    return [(i.seqs, i.status) for i in page.items if isinstance(i, Notice) and i.all]


@pytest.mark.parametrize("numbering", ["owner", "paxos"])
async def test_cassandra_a_groups_delivered_receipt_whose_append_failed_is_made_anyway(
        cassandra: Any, numbering: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last member's ack moves the group's "delivered to all" watermark and appends the
    sender's all-DELIVERED receipt. That append used to come after the move: when it failed
    (the sender's inbox's owner restarting: chaos seed 7, "receipts") the ack failed with
    the watermark moved, its retry found nothing new, and the sender never saw the message
    delivered. Now the receipt goes first, and is tried again in place."""
    cassandra.truncate()
    async with open_store(cassandra.url(numbering=numbering, timeout="2", lease="9")) as s:
        assert isinstance(s, CassandraStore)
        seq = await group_of_three(s)
        await ack_all(s, "bob")
        failed = fail_first_all_receipt(monkeypatch, s)
        with trio.fail_after(15):
            await ack_all(s, "carol")
        assert failed
        assert await alls(s) == [((seq,), Status.DELIVERED)]


async def test_cassandra_a_groups_receipt_that_failed_for_good_comes_with_the_next_one(
        cassandra: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same with the append failing past its tries (FINISH_FOR): the ack fails, the
    watermark has not moved, and the group's next move of it makes the receipt (it used to
    make only the next message's)."""
    monkeypatch.setattr(cassandra_module, "FINISH_FOR", 0.0)
    cassandra.truncate()
    async with open_store(cassandra.url(numbering="owner", timeout="2", lease="9")) as s:
        assert isinstance(s, CassandraStore)
        seq = await group_of_three(s)
        await ack_all(s, "bob")
        failed = fail_first_all_receipt(monkeypatch, s)
        with pytest.raises(StoreError):
            await ack_all(s, "carol")
        assert failed
        await ack_all(s, "carol")  # (its retry: nothing new to acknowledge)
        later = await s.append_message(NewMessage("alice", "a", "again", "g:g1", (), b"2", 4,
                                                  group="g1"))
        with trio.fail_after(20):
            while await s.pending_fanouts() or s.fanout_pending:
                await trio.sleep(0.02)
        for u in ["bob", "carol"]:
            await ack_all(s, u)
        assert await alls(s) == [((seq,), Status.DELIVERED), ((later.seq,), Status.DELIVERED)]


async def test_cassandra_a_read_receipt_whose_append_failed_is_made_by_the_reads_retry(
        cassandra_store: CassandraStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read moved the reader's read watermark before it appended the READ receipt: when
    the append failed, the read failed, and its retry (the server tries a failed Read
    again) found nothing new to read. The receipt now goes first."""
    s = cassandra_store
    for u in ["alice", "bob"]:
        await s.attach_device(u, "a")
    sent = await s.append_message(NewMessage("alice", "a", "m1", "d:alice:bob", ("bob",),
                                             b"1", 10))
    real = s._append_items
    failed: list[bool] = []

    async def items(per_user: Any) -> Any:
        if not failed and any(isinstance(e, ReceiptNote) and e.status == Status.READ
                              for es in per_user.values() for e in es):
            failed.append(True)
            raise StoreError("cassandra: NoHostAvailable: the inbox's owner restarting")
        return await real(per_user)

    monkeypatch.setattr(s, "_append_items", items)
    with pytest.raises(StoreError):
        await s.mark_read("bob", "d:alice:bob", sent.seq, 20)
    await s.mark_read("bob", "d:alice:bob", sent.seq, 21)  # the retry
    page = await s.inbox("alice", "a", 0, 100)
    assert [(i.seqs, i.status) for i in page.items if isinstance(i, Notice)
            and i.status == Status.READ] == [((sent.seq,), Status.READ)]


async def test_cassandra_a_failed_seq_is_held_a_minute_at_most_from_its_first_failure(
        cassandra_store: CassandraStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """HOLD_MAX counts from the send's first failure: a retry that is redone and fails again
    (its inbox appends still failing) does not start the minute again, or a chat could wait
    as long as a device keeps trying."""
    s = cassandra_store
    for u in ["alice", "bob"]:
        await s.attach_device(u, "a")

    async def items(per_user: Any) -> Any:
        raise StoreError("cassandra: NoHostAvailable: down")

    monkeypatch.setattr(s, "_append_items", items)
    m1 = NewMessage("alice", "a", "m1", "d:alice:bob", ("bob",), b"1", 10)
    with pytest.raises(StoreError):
        await s.append_message(m1)
    [(first, _)] = s._held["d:alice:bob"].values()
    await trio.sleep(0.05)
    with pytest.raises(StoreError):
        await s.append_message(m1)  # redone here at once, and failed again
    [(again, last)] = s._held["d:alice:bob"].values()
    assert again == first < last


async def test_cassandra_a_message_stored_after_the_reader_read_past_its_seq_gets_a_receipt(
        cassandra_store: CassandraStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 3 (`receipts`), the last case: a send took its seq and was cut short before
    its message row was written (Cassandra restarting); the reader got the chat's next
    message and read up to it, so the READ receipt could not cover the missing one; the
    retry then stored it, under the read watermark. Its ack made no receipt (read implies
    delivered): its sender never saw it delivered. The read remembers the seq it passed
    with no message, and the ack receipts it DELIVERED. (The failed seq is let go at once,
    as in the test above.)"""
    monkeypatch.setattr(cassandra_module, "HOLD_MAX", 0.0)
    s = cassandra_store
    for u in ["alice", "bob"]:
        await s.attach_device(u, "a")
    real = s._batches
    cut: list[bool] = []

    def batches(rows: Any) -> Any:
        if not cut and any(r[1] == "put_msg" and r[2][6] == "m1" for r in rows):
            cut.append(True)

            async def fail() -> None:
                raise StoreError("cassandra: NoHostAvailable: cut before the message row")
            return [fail]
        return real(rows)

    monkeypatch.setattr(s, "_batches", batches)
    m1 = NewMessage("alice", "a", "m1", "d:alice:bob", ("bob",), b"1", now_ms())
    with pytest.raises(StoreError):
        await s.append_message(m1)
    assert cut
    assert (await s.append_message(
        NewMessage("alice", "a", "m2", "d:alice:bob", ("bob",), b"2", now_ms()))).seq == 2
    await s.ack("bob", "a", 1, 20)  # m2 delivered
    await s.mark_read("bob", "d:alice:bob", 2, 21)  # and read: seq 1 has no message yet
    assert (await s.append_message(m1)).seq == 1  # the retry stores it
    page = await s.inbox("bob", "a", 1, 100)
    assert [(it.q, it.seq) for it in page.items if isinstance(it, Delivery)] == [(2, 1)]
    await s.ack("bob", "a", 2, 22)
    got = {(it.status, seq) for it in (await s.inbox("alice", "a", 0, 100)).items
           if not isinstance(it, Delivery) for seq in it.seqs}
    assert got == {(Status.DELIVERED, 2), (Status.READ, 2), (Status.DELIVERED, 1)}


async def test_cassandra_an_ack_cut_short_after_its_cursor_still_makes_its_receipt(
        cassandra_store: CassandraStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 3 (`receipts`, seen again in a chaos run): an ack wrote the device's cursor and
    the delivered watermark, then Cassandra went away before the DELIVERED receipt was
    appended. The device acked again after reconnecting, but its cursor and the watermark
    already said "delivered": no receipt was ever made. The receipts now go in first."""
    s = cassandra_store
    for u, d in [("alice", "a"), ("bob", "a")]:
        await s.attach_device(u, d)
    await s.append_message(NewMessage("alice", "a", "m1", "d:alice:bob", ("bob",), b"1", 10))
    real = s.db.run
    cut: list[bool] = []

    async def run(stmt: Any, params: Any = None) -> Any:
        result = await real(stmt, params)
        if not cut and "set_cursor" in (stmt if isinstance(stmt, str)
                                        else getattr(stmt, "chatd_names", "")):
            cut.append(True)
            raise StoreError("cassandra: NoHostAvailable: cut after the cursor was written")
        return result

    monkeypatch.setattr(s.db, "run", run)
    with pytest.raises(StoreError):
        await s.ack("bob", "a", 1, 20)
    assert cut
    assert await s.attach_device("bob", "a") == 1  # it reconnects: its cursor says it has m1
    await s.ack("bob", "a", 1, 21)  # (and acks again: nothing new)
    receipts = [it for it in (await s.inbox("alice", "a", 0, 100)).items
                if not isinstance(it, Delivery)]
    assert {seq for it in receipts for seq in it.seqs} == {1}


async def test_cassandra_owner_a_redo_while_the_first_call_waits_on_another_chat_appends_once(
        cassandra: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """One call carries alice's sends to bob and to carol; carol's inbox append keeps
    failing (its owner restarting), so the call waits there, while bob's message is in his
    inbox. alice's retry of it comes after REDO_AFTER_MS and redoes it. The store skipped
    the inbox look-up for a message "numbered by this very send" by its (chat, seq), for
    the whole of the first call: the redo skipped it too, and bob got the message twice
    (chaos seed 3, finding 6 (d)). Freshness now belongs to the call's own entries."""
    monkeypatch.setattr(cassandra_module, "REDO_AFTER_MS", 0)
    cassandra.truncate()
    async with open_store(cassandra.url(numbering="owner", timeout="2", lease="9")) as s:
        assert isinstance(s, CassandraStore)
        for u in ("alice", "bob", "carol"):
            await s.attach_device(u, "a")
        to_bob = NewMessage("alice", "a", "m1", "d:alice:bob", ("bob",), b"1", now_ms())
        to_carol = NewMessage("alice", "a", "m2", "d:alice:carol", ("carol",), b"2", now_ms())
        real = s._inbox
        carol_waits, go_on = trio.Event(), trio.Event()

        async def inbox(user: str, entries: Any) -> Any:
            if user == "carol" and not go_on.is_set():
                carol_waits.set()
                await go_on.wait()
            return await real(user, entries)

        monkeypatch.setattr(s, "_inbox", inbox)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.append_messages, [to_bob, to_carol])
            with trio.fail_after(10):
                await carol_waits.wait()
                while not (await s.inbox("bob", "a", 0, 10)).items:  # (bob has it)
                    await trio.sleep(0.05)
                again = await s.append_message(to_bob)  # alice's retry: redone
            go_on.set()
        page = await s.inbox("bob", "a", 0, 10)
        got = [it.message.id for it in page.items if isinstance(it, Delivery)]
        assert got == ["m1"], got
        assert again.seq == 1
