"""What only the Cassandra store has: results that come in several pages."""

from __future__ import annotations

import trio

from bench.cassandra import CassandraNode
from chatd.core import Delivery
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
