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

from chatd.protocol.frames import Deliver
from chatd.store import CassandraStore, NewMessage, SqliteStore, Store, StoreError, open_store

MEMBERS = ["bob", "carol", "dave", "erin", "frank"]


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
        out[u] = Counter(i.seq for i in page.items if isinstance(i, Deliver) and i.conv == "g:g1")
    return out


async def run_all(s: Store) -> None:
    for conv, seq in await s.pending_fanouts():
        await s.fanout(conv, seq)


async def assert_once_each(s: Store, n: int) -> None:
    """Every member has the group's n + 1 messages (the "created" event and n sent), once each."""
    with trio.fail_after(20):
        while await s.pending_fanouts():
            await trio.sleep(0.02)
    for user, seen in (await copies(s)).items():
        assert seen == Counter(range(1, n + 2)), user


@contextlib.asynccontextmanager
async def unstarted(url: str) -> AsyncIterator[SqliteStore | CassandraStore]:
    """A store opened as a (re)starting process opens it, whose writer is started later (by
    `started`): what it read on opening is all it knows until then."""
    s: SqliteStore | CassandraStore
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
async def started(s: SqliteStore | CassandraStore) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        await nursery.start(s.run)
        yield
        nursery.cancel_scope.cancel()


async def test_a_store_opened_while_another_has_jobs_does_not_run_them_again(
        shared_url: str) -> None:
    """The worker that restarts opens the store while the other worker has fan-out jobs
    pending; the other runs them; then the restarted worker's writer starts (its first batch):
    it must not run them a second time."""
    async with open_store(shared_url) as a:
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
    async with open_store(shared_url) as a, open_store(shared_url) as b:
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
