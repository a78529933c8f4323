"""A group message's fan-out job runs exactly once, however the processes (or nodes) that share
the store start, stop and fail: every member's inbox holds each group message once.

Issue 13: with `chatd serve --workers 2`, a worker restarted while the other had fan-out jobs
pending ran them a second time (the jobs it read on opening, without the write lock, had been
run by the other worker meanwhile), so every member got the message twice."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import trio

from chatd.core import Delivery
from chatd.store import CassandraStore, NewMessage, SqliteStore, Store, StoreError, open_store
from chatd.store.fanout import FanoutRunner

MEMBERS = ["bob", "carol", "dave", "erin", "frank"]
Backend = SqliteStore | CassandraStore  # (what open_store gives: with fan-out jobs)


def backends(*stores: Store) -> list[Backend]:
    assert all(isinstance(s, (SqliteStore, CassandraStore)) for s in stores)
    return list(stores)  # type: ignore[arg-type]


async def setup_group(s: Store) -> None:
    for u in ["alice", *MEMBERS]:
        await s.attach_device(u, "phone")
    await s.create_group("g1", "team", "alice", MEMBERS, ts=1)


async def send(s: Store, n: int, first: int = 0) -> None:
    for i in range(first, first + n):
        await s.append_message(NewMessage("alice", "phone", f"m{i}", "g:g1", (), b"hi", 2 + i,
                                          group="g1"))


async def copies(s: Store) -> dict[str, Counter[int]]:
    """How many times each group message (by seq) is in each member's inbox."""
    out = {}
    for u in MEMBERS:
        page = await s.inbox(u, "phone", 0, 1000)
        out[u] = Counter(i.seq for i in page.items if isinstance(i, Delivery) and i.conv == "g:g1")
    return out


async def run_all(s: Backend) -> None:
    for conv, seq in await s.pending_fanouts():
        await s.fanout(conv, seq)


async def assert_once_each(s: Backend, n: int) -> None:
    """Every member has the group's n + 1 messages (the "created" event and n sent), once each."""
    with trio.fail_after(20):
        while await s.pending_fanouts():
            await trio.sleep(0.02)
    for user, seen in (await copies(s)).items():
        assert seen == Counter(range(1, n + 2)), user


@contextlib.asynccontextmanager
async def unstarted(url: str) -> AsyncIterator[Backend]:
    """A store opened as a (re)starting process opens it, whose writer is started later (by
    `started`): what it read on opening is all it knows until then."""
    s: Backend
    if url.startswith("cassandra:"):
        s = CassandraStore(url)
        await s.connect()
    else:
        s = SqliteStore(url.removeprefix("sqlite://"))
    try:
        yield s
    finally:
        await s.aclose()


@contextlib.asynccontextmanager
async def started(s: Backend) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        await nursery.start(FanoutRunner(s).run)  # (as open_store does)
        yield
        nursery.cancel_scope.cancel()


async def test_a_store_opened_while_another_has_jobs_does_not_run_them_again(
        shared_url: str) -> None:
    """The worker that restarts opens the store while the other worker has fan-out jobs
    pending; the other runs them; then the restarted worker's writer starts (its first batch):
    it must not run them a second time."""
    async with open_store(shared_url) as a_:
        [a] = backends(a_)
        a.fanout_mode = "external"  # its jobs wait (here: until the second store has opened)
        await setup_group(a)
        await send(a, 3)
        assert len(await a.pending_fanouts()) == 4
        async with unstarted(shared_url) as b:  # reads the pending jobs (SQLite) on opening
            await run_all(a)  # ... which the first store then runs, to the end
            assert not await a.pending_fanouts()
            async with started(b):  # "auto": it would run any job it believes pending
                await b.has_user("alice")  # its first batch
                await b.has_user("alice")  # (and one after the fan-out step it would queue)
                await assert_once_each(b, 3)
                await send(b, 4, first=3)  # and what it sends now is fanned out once, by it
                await assert_once_each(b, 7)


async def test_a_job_another_store_ran_meanwhile_is_not_run_again(shared_url: str) -> None:
    """Both stores know a job; one runs it; the other, asked to run it, finds it finished."""
    async with open_store(shared_url) as a_, open_store(shared_url) as b_:
        a, b = backends(a_, b_)
        a.fanout_mode = b.fanout_mode = "external"
        await setup_group(a)
        await send(a, 2)
        jobs = await b.pending_fanouts()
        assert len(jobs) == 3
        await run_all(a)
        for conv, seq in jobs:
            assert not await b.fanout(conv, seq)
        await assert_once_each(b, 2)


async def test_a_failed_batch_does_not_bring_back_jobs_another_process_then_runs(
        tmp_path: object) -> None:
    """After a failed batch a store drops its caches; the jobs it reads again then (outside the
    write lock) may be run by the other process before its next batch: that batch must not
    run them again."""
    url = f"sqlite://{tmp_path}/db.sqlite"
    async with open_store(url) as a, open_store(url) as b:
        assert isinstance(a, SqliteStore) and isinstance(b, SqliteStore)
        a.fanout_mode = b.fanout_mode = "external"
        await setup_group(a)
        await send(a, 2)
        jobs = await b.pending_fanouts()
        with pytest.raises(StoreError):  # a batch of b fails (rolled back)
            await b._do(lambda db: db.execute("SELECT nothing FROM nowhere"))
        await run_all(a)
        for conv, seq in jobs:
            assert not await b.fanout(conv, seq)
        await assert_once_each(b, 2)


# ---- Cassandra: a job's steps are not one transaction with the inbox appends they make -----
# (each member's inbox is its own partition), so a chunk may be appended again: by the node
# that takes a job over after its owner died between a chunk's appends and the step that
# records them, by a retry after a timeout, or by an owner that lost its lease mid-chunk and
# carries on. Each group item is appended with a marker in the same conditional batch, and an
# item whose marker is there already is not appended again.


@pytest.fixture
def cassandra_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    from chatd.store import cassandra as cassandra_store

    node = request.getfixturevalue("cassandra")
    node.truncate()
    monkeypatch.setattr(cassandra_store, "FANOUT_CHUNK", 2)  # several chunks per job
    monkeypatch.setattr(cassandra_store, "LEASE_MS", 300)  # a dead owner's lease runs out soon
    return str(node.url())


async def test_cassandra_a_chunk_whose_step_was_not_recorded_is_not_appended_again(
        cassandra_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node running a job dies after appending a chunk and before recording the step;
    another node takes the job over when the lease has run out and starts from the recorded
    progress: the members of that chunk must not get the message a second time."""
    async with open_store(cassandra_url) as a_, open_store(cassandra_url) as b_:
        a, b = backends(a_, b_)
        assert isinstance(a, CassandraStore)
        a.fanout_mode = b.fanout_mode = "external"
        await setup_group(a)
        await run_all(a)
        await send(a, 1)
        [(conv, seq)] = await a.pending_fanouts()
        real = a.db.applied

        async def dies_before_the_step(stmt: object, params: object = None) -> object:
            if stmt == "job_step":
                raise StoreError("the node died here")
            return await real(stmt, params)  # type: ignore[arg-type]

        monkeypatch.setattr(a.db, "applied", dies_before_the_step)
        with pytest.raises(StoreError):
            await a.fanout(conv, seq)  # the first chunk is in bob's and carol's inboxes
        await trio.sleep(0.4)  # the dead node's lease runs out
        assert await b.fanout(conv, seq)
        await assert_once_each(b, 1)


async def test_cassandra_an_append_that_timed_out_but_applied_is_not_repeated(
        cassandra_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A conditional batch that applied but whose answer timed out is tried again by the
    store: the group items it appended must not be appended a second time."""
    from chatd.store.cql import StoreTimeout

    async with open_store(cassandra_url) as a:
        assert isinstance(a, CassandraStore)
        a.fanout_mode = "external"
        await setup_group(a)
        await run_all(a)
        await send(a, 1)
        real = a.db.applied
        lost: list[object] = []

        async def answer_lost(stmt: object, params: object = None) -> object:
            result = await real(stmt, params)  # type: ignore[arg-type]
            if not isinstance(stmt, str) and len(lost) < 3:  # an inbox batch: it applied
                lost.append(stmt)
                raise StoreTimeout("cassandra: OperationTimedOut: the answer was lost")
            return result

        monkeypatch.setattr(a.db, "applied", answer_lost)
        await run_all(a)
        assert len(lost) == 3
        await assert_once_each(a, 1)


async def test_cassandra_an_owner_that_lost_its_lease_mid_chunk_appends_nothing_twice(
        cassandra_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The owner stalls in the middle of a chunk (its appends not sent yet) past its lease;
    another node takes the job over and runs it to the end; then the stalled owner's appends
    go out: none may land a second time (and its step is refused)."""
    async with open_store(cassandra_url) as a_, open_store(cassandra_url) as b_:
        a, b = backends(a_, b_)
        assert isinstance(a, CassandraStore)
        a.fanout_mode = b.fanout_mode = "external"
        await setup_group(a)
        await run_all(a)
        await send(a, 1)
        [(conv, seq)] = await a.pending_fanouts()
        go_on = trio.Event()
        real = a._append_items

        async def stalls(per_user: object) -> object:
            await go_on.wait()
            return await real(per_user)  # type: ignore[arg-type]

        monkeypatch.setattr(a, "_append_items", stalls)
        async with trio.open_nursery() as nursery:
            async def stalled_owner() -> None:
                with pytest.raises(StoreError, match="taken over"):
                    await a.fanout(conv, seq)

            nursery.start_soon(stalled_owner)
            await trio.sleep(0.5)  # its lease runs out
            assert await b.fanout(conv, seq)
            go_on.set()
        await assert_once_each(b, 1)
