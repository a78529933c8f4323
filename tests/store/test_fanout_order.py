"""Nodes that take a group's fan-out jobs from a shared queue (several nodes through Redis)
may be asked for a later message's job first: a member still gets the group's messages in
seq order (docs/RELIABILITY.md, finding 1). On SQLite and on Cassandra (numbering=paxos,
whose jobs go through that queue: with numbering=owner the group's owner runs them itself;
before, `bench chaos --store cassandra --nodes 2` saw 678 reordered group messages with no
fault at all)."""

from __future__ import annotations

from chatd.core import Delivery
from chatd.store import CassandraStore, SqliteStore, open_store

from .test_fanout_once import MEMBERS, send, setup_group


async def test_a_later_job_run_first_runs_the_older_ones_before_it(shared_url: str) -> None:
    async with open_store(shared_url) as a, open_store(shared_url) as b:
        assert isinstance(a, SqliteStore | CassandraStore)
        assert isinstance(b, SqliteStore | CassandraStore)
        a.fanout_mode = b.fanout_mode = "external"
        await setup_group(a)
        await send(a, 3)  # seqs 2, 3, 4 (1 is the "created" event)
        jobs = await a.pending_fanouts()
        assert [seq for _, seq in jobs] == [1, 2, 3, 4]
        assert await b.fanout("g:g1", 3)  # node b is handed seq 3's job first
        assert await a.fanout("g:g1", 4)
        assert not await a.fanout("g:g1", 1)  # done already, in order, by b
        for u in MEMBERS:
            page = await a.inbox(u, "phone", 0, 100)
            seqs = [i.seq for i in page.items if isinstance(i, Delivery)]
            assert seqs == [1, 2, 3, 4], u
