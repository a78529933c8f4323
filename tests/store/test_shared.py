"""Several processes writing one store: the workers of `chatd serve --workers N` on one SQLite
file, or several chatd nodes on one Cassandra keyspace. Two stores here, each with its own
connection and caches, their writes interleaved."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator

import trio

from chatd.core import Delivery, Notice
from chatd.protocol.frames import Status
from chatd.store import NewMessage, SqliteStore, Store, open_store


@contextlib.asynccontextmanager
async def two(url: str) -> AsyncIterator[tuple[Store, Store]]:
    async with open_store(url) as a, open_store(url) as b:
        yield a, b


def msg(sender: str, i: int, to: str = "bob", conv: str | None = None) -> NewMessage:
    conv = conv or "d:" + ":".join(sorted((sender, to)))
    return NewMessage(sender, "phone", f"{sender}-{i}", conv, (to,), b"x%d" % i, 1000 + i)


async def test_two_writers_keep_sequences_dense_and_caches_current(shared_url: str) -> None:
    async with two(shared_url) as (a, b):
        for s in (a, b):
            await s.attach_device("bob", "phone")
        await a.attach_device("alice", "phone")
        seqs = []
        for i in range(40):  # alternate writers, both warm: each must notice the other
            s = a if i % 2 else b
            seqs.append((await s.append_message(msg("alice", i))).seq)
        assert seqs == list(range(1, 41))
        assert (await a.append_message(msg("alice", 3))).duplicate  # written through b
        page = await b.inbox("bob", "phone", 0, 100)
        assert [i.q for i in page.items] == list(range(1, 41))
        # bob acks through a: receipts for the messages b appended as well
        r = await a.ack("bob", "phone", 40, ts=5)
        assert [i.seqs for _, i in r.items if isinstance(i, Notice)] == [tuple(range(1, 41))]
        assert await b.cursor("bob", "phone") == 40
        assert not (await b.ack("bob", "phone", 40, ts=6)).items  # no second DELIVERED
        if isinstance(b, SqliteStore):
            assert b.resets > 0


async def test_group_receipts_and_fanout_across_writers(shared_url: str) -> None:
    async with two(shared_url) as (a, b):
        for u in ("alice", "bob", "carol"):
            await a.attach_device(u, "phone")
        await a.create_group("g1", "team", "alice", ["bob", "carol"], ts=1)
        m = NewMessage("alice", "phone", "hi", "g:g1", (), b"hi", 2, group="g1")
        sent = await b.append_message(m)
        with trio.fail_after(10):  # both have it (Cassandra appends per member inbox)
            for u in ("bob", "carol"):
                while not [i for i in (await a.inbox(u, "phone", 0, 10)).items
                           if isinstance(i, Delivery) and i.seq == sent.seq]:
                    await trio.sleep(0.01)
        bob_q = (await a.inbox("bob", "phone", 0, 10)).upto
        carol_q = (await b.inbox("carol", "phone", 0, 10)).upto
        assert not [i for _, i in (await a.ack("bob", "phone", bob_q, 3)).items
                    if isinstance(i, Notice) and i.all]
        r = await b.ack("carol", "phone", carol_q, 4)  # the last member, through the other
        alls = [i for _, i in r.items if isinstance(i, Notice) and i.all]
        assert [(i.seqs, i.status) for i in alls] == [((sent.seq,), Status.DELIVERED)]


async def test_random_interleaving_loses_and_repeats_nothing(shared_url: str) -> None:
    rnd = random.Random(7)
    users = ["u0", "u1", "u2", "u3"]
    async with two(shared_url) as (a, b):
        for u in users:
            await a.attach_device(u, "phone")
        sent: dict[str, list[str]] = {u: [] for u in users}

        async def writer(s: SqliteStore | object, n: int) -> None:
            for i in range(n):
                frm, to = rnd.sample(users, 2)
                m = NewMessage(frm, "phone", f"{frm}-{n}-{i}-{id(s)}", "d:" + ":".join(
                    sorted((frm, to))), (to,), b"", 1)
                await s.append_message(m)  # type: ignore[attr-defined]
                sent[to].append(m.client_id)
                if rnd.random() < 0.3:
                    who = rnd.choice(users)
                    await s.ack(who, "phone", 10**9, ts=2)  # type: ignore[attr-defined]

        async with trio.open_nursery() as n:
            n.start_soon(writer, a, 150)
            n.start_soon(writer, b, 150)
        for u in users:
            page = await b.inbox(u, "phone", 0, 10_000)
            got = [i.id for i in page.items if isinstance(i, Delivery)]
            assert sorted(got) == sorted(sent[u])
            assert [i.q for i in page.items if isinstance(i, Delivery)] == sorted(
                i.q for i in page.items if isinstance(i, Delivery))
            assert page.upto == len(page.items)  # dense positions, no gap, no duplicate


async def test_concurrent_writers_to_one_conversation_share_one_sequence(
        shared_url: str) -> None:
    """Many sends at once through both stores into one chat (and one inbox): every message
    gets its own seq, the seqs are exactly 1..N, and the recipient's inbox holds each once,
    in seq order per writer. Then every send again (client retries, through the other
    store): all duplicates, nothing new."""
    async with two(shared_url) as (a, b):
        for u in ("alice", "bob"):
            await a.attach_device(u, "phone")
        results: dict[str, int] = {}

        async def writer(s: Store, name: str, n: int) -> None:
            for i in range(n):
                m = NewMessage("alice", "phone", f"{name}-{i}", "d:alice:bob", ("bob",),
                               b"%d" % i, 1)
                results[m.client_id] = (await s.append_message(m)).seq

        async with trio.open_nursery() as n:
            for w in range(8):
                n.start_soon(writer, a if w % 2 else b, f"w{w}", 25)
        assert sorted(results.values()) == list(range(1, 201))
        page = await a.inbox("bob", "phone", 0, 1000)
        got = [i for i in page.items if isinstance(i, Delivery)]
        assert sorted(i.seq for i in got) == list(range(1, 201))
        assert [i.q for i in got] == list(range(1, 201))
        for w in range(8):  # in order per writer: each waited for the one before
            mine = [i.seq for i in got if i.id.startswith(f"w{w}-")]
            assert mine == sorted(mine)
        for cid, seq in results.items():
            s = b if int(cid[1]) % 2 else a
            again = await s.append_message(NewMessage("alice", "phone", cid, "d:alice:bob",
                                                      ("bob",), b"retry", 2))
            assert again.duplicate and again.seq == seq
        assert (await b.inbox("bob", "phone", 0, 1000)).upto == 200
