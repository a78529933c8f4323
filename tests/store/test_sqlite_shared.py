"""Several processes writing one SQLite file (the workers of `chatd serve --workers N`): two
stores on one file here, each with its own connection and caches, their writes interleaved."""

from __future__ import annotations

import random
from pathlib import Path

import trio

from chatd.protocol.frames import Deliver, Receipt, Status
from chatd.store import NewMessage, SqliteStore, open_store


def msg(sender: str, i: int, to: str = "bob", conv: str | None = None) -> NewMessage:
    conv = conv or "d:" + ":".join(sorted((sender, to)))
    return NewMessage(sender, "phone", f"{sender}-{i}", conv, (to,), b"x%d" % i, 1000 + i)


async def test_two_writers_keep_sequences_dense_and_caches_current(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/db.sqlite"
    async with open_store(url) as a, open_store(url) as b:
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
        assert [i.seqs for _, i in r.items if isinstance(i, Receipt)] == [tuple(range(1, 41))]
        assert await b.cursor("bob", "phone") == 40
        assert not (await b.ack("bob", "phone", 40, ts=6)).items  # no second DELIVERED
        assert isinstance(b, SqliteStore) and b.resets > 0


async def test_group_receipts_and_fanout_across_writers(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/db.sqlite"
    async with open_store(url) as a, open_store(url) as b:
        for u in ("alice", "bob", "carol"):
            await a.attach_device(u, "phone")
        await a.create_group("g1", "team", "alice", ["bob", "carol"], ts=1)
        m = NewMessage("alice", "phone", "hi", "g:g1", (), b"hi", 2, group="g1")
        sent = await b.append_message(m)
        with trio.fail_after(5):
            while not [i for i in (await a.inbox("carol", "phone", 0, 10)).items
                       if isinstance(i, Deliver) and i.seq == sent.seq]:
                await trio.sleep(0.01)
        bob_q = (await a.inbox("bob", "phone", 0, 10)).upto
        carol_q = (await b.inbox("carol", "phone", 0, 10)).upto
        assert not [i for _, i in (await a.ack("bob", "phone", bob_q, 3)).items
                    if isinstance(i, Receipt) and i.all]
        r = await b.ack("carol", "phone", carol_q, 4)  # the last member, through the other
        alls = [i for _, i in r.items if isinstance(i, Receipt) and i.all]
        assert [(i.seqs, i.status) for i in alls] == [((sent.seq,), Status.DELIVERED)]


async def test_random_interleaving_loses_and_repeats_nothing(tmp_path: Path) -> None:
    rnd = random.Random(7)
    url = f"sqlite://{tmp_path}/db.sqlite"
    users = ["u0", "u1", "u2", "u3"]
    async with open_store(url) as a, open_store(url) as b:
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
            got = [i.id for i in page.items if isinstance(i, Deliver)]
            assert sorted(got) == sorted(sent[u])
            assert [i.q for i in page.items if isinstance(i, Deliver)] == sorted(
                i.q for i in page.items if isinstance(i, Deliver))
            assert page.upto == len(page.items)  # dense positions, no gap, no duplicate
