"""What only the Cassandra store has: results that come in several pages."""

from __future__ import annotations

import functools

import pytest
import trio
import trio.testing

from bench.cassandra import CassandraNode
from chatd.core import Delivery, Notice
from chatd.protocol.frames import Status
from chatd.store import CassandraStore, NewMessage, open_store


async def test_results_of_several_pages_are_read_whole(cassandra: CassandraNode) -> None:
    cassandra.truncate()
    async with open_store(cassandra.url()) as store:
        assert isinstance(store, CassandraStore)
        store.db.set_page_size(5)  # every read below spans several pages
        members = [f"m{i:02}" for i in range(13)]
        for u in ["alice", *members]:
            await store.attach_device(u, "phone")
        info = await store.create_group("big", "Big", "alice", members, ts=1)
        assert info is not None and len(info.members) == 14
        for i in range(23):
            await store.append_message(NewMessage("alice", "phone", f"c{i}", "d:alice:m00",
                                                  ("m00",), b"%d" % i, 10 + i))
        page = await store.inbox("m00", "phone", 0, 100)
        got = [i for i in page.items if isinstance(i, Delivery) and i.conv == "d:alice:m00"]
        assert [i.body for i in got] == [b"%d" % i for i in range(23)]
        history = await store.history("d:alice:m00", None, 100)
        assert [h.seq for h in history] == list(range(23, 0, -1))
        assert (await store.group("big")).members == info.members  # type: ignore[union-attr]


def test_driver_errors_become_store_errors_and_timeouts_say_so() -> None:
    from cassandra import ConsistencyLevel, OperationTimedOut, WriteTimeout, WriteType
    from cassandra.cluster import NoHostAvailable

    from chatd.store import StoreError
    from chatd.store.cql import StoreTimeout, store_error

    cas = WriteTimeout("CAS operation timed out", consistency=ConsistencyLevel.SERIAL,
                       required_responses=1, received_responses=0, write_type=WriteType.CAS)
    for exc in (cas, OperationTimedOut("no answer")):
        assert isinstance(store_error(exc), StoreTimeout)  # may have applied: retried
    down = store_error(NoHostAvailable("Unable to connect to any servers", {}))
    assert type(down) is StoreError and str(down).startswith("cassandra: NoHostAvailable")


async def test_admin_statements_prepared_on_first_use_by_several_callers_at_once(
        cassandra: CassandraNode) -> None:
    """A sign-in's revocation check and the nodes' revocation poll, the second while the
    first is still preparing the statements: it must not run one not prepared yet."""
    cassandra.truncate()
    async with open_store(cassandra.url()) as store:
        assert isinstance(store, CassandraStore)
        async with trio.open_nursery() as n:
            n.start_soon(store.revoked_at, "u", "phone")  # prepares them, one by one
            while "revoke" not in store.db._prepared:  # (the first of them)
                await trio.sleep(0.0005)
            assert await store.revocations_since(0) == []


async def test_batch_rows_are_serialized_as_the_driver_binds_them(
        cassandra: CassandraNode) -> None:
    """Session.batch serializes the rows after the first itself: the same bytes, the same
    routing key as BatchStatement.add, for every statement a send writes."""
    from cassandra.query import BatchStatement, BatchType

    cassandra.truncate()
    async with open_store(cassandra.url()) as store:
        assert isinstance(store, CassandraStore)
        db = store.db
        rows = [("own_seq", (10, "c")), ("put_item", ("u", 5, "c", 3, "s", None)),
                ("put_item", ("u", 6, "c", 0, None, b"\x01\x02")),
                ("own_marker", ("u", 123, "c", 3, 5, 86400)),
                ("own_claim", ("c", "s", "cid", 3, 1_700_000_000_000, 1_700_000_000_001, 86400)),
                ("done", (86400, "c", "s", "cid")), ("queue", (19000, 1_700_000_000_000, "c", 3)),
                ("put_msg", ("c", 0, 3, 17, "s", "d", "cid", b"body", None, "g", None,
                             {"a", "b"}, 0)),
                ("set_cursor", (5, 4, "u", "d")), ("set_delivered", (7, 3, "c", "u"))]
        ours = db.batch(rows)
        theirs = BatchStatement(batch_type=BatchType.UNLOGGED)
        for name, params in rows:
            theirs.add(db._prepared[name], params)
        assert ours._statements_and_parameters == theirs._statements_and_parameters
        assert (ours.routing_key, ours.keyspace) == (theirs.routing_key, theirs.keyspace)
        await db.run(ours)  # and Cassandra takes it


async def test_many_requests_at_once_each_get_their_own_answer(
        cassandra: CassandraNode) -> None:
    """Answers are handed over in bursts (one wakeup for many): each request still gets its
    own, and one cancelled while it waits leaves the others be."""
    cassandra.truncate()
    async with open_store(cassandra.url()) as store:
        assert isinstance(store, CassandraStore)
        db = store.db
        for i in range(50):
            await db.run("own_q", (i, f"u{i}"))
        got: dict[int, int] = {}

        async def read(i: int) -> None:
            rows = await db.run(f"SELECT last_q FROM inbox WHERE user = 'u{i}'")
            got[i] = rows[0]["last_q"]

        async def given_up(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
            with trio.CancelScope() as scope:
                task_status.started(scope)
                await db.run("SELECT last_q FROM inbox WHERE user = 'nobody'")

        async with trio.open_nursery() as n:
            scope = await n.start(given_up)
            for i in range(50):
                n.start_soon(read, i)
            await trio.testing.wait_all_tasks_blocked()  # (all waiting for their answers)
            scope.cancel()
        assert got == {i: i for i in range(50)}
        assert (await db.run("SELECT last_q FROM inbox WHERE user = 'u7'"))[0]["last_q"] == 7


@pytest.mark.parametrize("numbering", ["paxos", "owner"])
async def test_members_acking_a_group_message_at_once_move_its_watermark_once(
        cassandra: CassandraNode, numbering: str) -> None:
    """20 members acknowledge a group message at the same moment: the sender gets one
    all-DELIVERED receipt, and the group's watermark moves with one conditional update or
    two, not one attempt per member that saw everyone had it (each a Paxos round, all but
    one refused: 5 and 19 rounds here before, numbering=paxos and owner)."""
    cassandra.truncate()
    url = cassandra.url(numbering=numbering, timeout="2", lease="9")
    async with open_store(url) as store:
        assert isinstance(store, CassandraStore)
        members = [f"m{i:02}" for i in range(20)]
        for u in ["alice", *members]:
            await store.attach_device(u, "phone")
        await store.create_group("g1", "team", "alice", members, ts=1)
        sent = await store.append_message(NewMessage("alice", "phone", "hi", "g:g1", (),
                                                     b"hi", 2, group="g1"))
        with trio.fail_after(20):
            while await store.pending_fanouts() or store.fanout_pending:
                await trio.sleep(0.02)
        ups = {u: (await store.inbox(u, "phone", 0, 10)).upto for u in members}
        paxos = store.db.paxos
        async with trio.open_nursery() as n:
            for u in members:
                n.start_soon(functools.partial(store.ack, u, "phone", ups[u], 3))
        rounds = store.db.paxos - paxos
        page = await store.inbox("alice", "phone", 0, 100)
        alls = [i for i in page.items if isinstance(i, Notice) and i.all]
        assert [(i.seqs, i.status) for i in alls] == [((sent.seq,), Status.DELIVERED)]
        assert rounds <= 2


async def test_an_item_found_in_the_inbox_is_handed_to_the_devices_again(
        cassandra: CassandraNode) -> None:
    """numbering=paxos: an inbox item whose conditional batch applied although its caller
    saw it fail (a timeout) is found by the retry through its marker, which now says where
    the item is: it is handed to the devices again, as with numbering=owner
    (tests/store/test_owners.py)."""
    from chatd.core import Message

    cassandra.truncate()
    async with open_store(cassandra.url()) as store:
        assert isinstance(store, CassandraStore) and not store.owners
        await store.attach_device("bob", "phone")
        m = Message("d:alice:bob", 5, 1000, "alice", "phone", "alice-x", b"x")
        told: list[tuple[str, int]] = []
        store.on_append = None
        assert [it.q for _, it in await store._append_items({"bob": [m]})] == [1]
        store.on_append = lambda items: told.extend((u, it.q) for u, it in items)
        assert await store._append_items({"bob": [m]}) == []
        assert told == [("bob", 1)]


async def test_work_asked_of_a_store_that_stopped_is_a_store_error(
        cassandra: CassandraNode) -> None:
    """A fan-out step still running as the store stops (the test teardown of
    test_last_admin_leaving_hands_over, once in a full run) asked the stopped store's nursery
    for a task: a RuntimeError that crashed the fan-out runner, where a StoreError is what
    its callers handle."""
    from chatd.store import StoreError

    async with open_store(cassandra.url()) as store:
        assert isinstance(store, CassandraStore)
    with pytest.raises(StoreError, match="closed"):
        store._spawn(trio.sleep, 0)
