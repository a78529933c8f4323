"""SQLite-specific: what survives a reopen, and the bounded in-memory ack index."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatd.core import Delivery, Notice
from chatd.store import NewMessage, open_store
from chatd.store import sqlite as sqlite_store


def msg(i: int) -> NewMessage:
    return NewMessage("alice", "phone", f"m{i}", "d:alice:bob", ("bob",), b"x", 1000 + i)


async def test_everything_survives_a_reopen(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/db.sqlite"
    async with open_store(url) as store:
        await store.attach_device("bob", "phone")
        await store.attach_device("alice", "phone")
        for i in range(5):
            await store.append_message(msg(i))
        await store.ack("bob", "phone", 2, ts=1)
    async with open_store(url) as store:  # caches are cold: acks and sequences use SQL
        assert await store.cursor("bob", "phone") == 2
        r = await store.ack("bob", "phone", 5, ts=2)
        assert [i.seqs for _, i in r.items if isinstance(i, Notice)] == [(3, 4, 5)]
        again = await store.append_message(msg(0))
        assert again.duplicate and again.seq == 1
        new = await store.append_message(msg(99))
        assert new.seq == 6
        page = await store.inbox("alice", "phone", 0, 10)
        assert [i.seqs for i in page.items if isinstance(i, Notice)] == [(1, 2), (3, 4, 5)]


async def test_acks_beyond_the_memory_index_fall_back_to_sql(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_store, "RECENT_PER_USER", 3)
    async with open_store(f"sqlite://{tmp_path}/db.sqlite") as store:
        await store.attach_device("bob", "phone")
        for i in range(10):
            await store.append_message(msg(i))
        r = await store.ack("bob", "phone", 10, ts=1)
        assert [i.seqs for _, i in r.items if isinstance(i, Notice)] == [tuple(range(1, 11))]
        page = await store.inbox("bob", "phone", 0, 100)
        assert len([i for i in page.items if isinstance(i, Delivery)]) == 10


async def test_a_database_from_a_newer_chatd_is_refused(tmp_path: Path) -> None:
    import sqlite3

    from chatd.store import StoreError

    url = f"sqlite://{tmp_path}/db.sqlite"
    async with open_store(url):
        pass  # created at the current schema version, through every migration
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
            str(sqlite_store.SCHEMA_VERSION),)
        db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(StoreError, match="newer"):
        async with open_store(url):
            pass


async def test_an_ack_shares_the_commit_of_the_next_write(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """An Ack does not get a commit (and a thread hand-off) of its own when another write
    comes within ACK_DELAY: at low rates a message's two Acks used to cost two more commits
    (docs/PROFILE.md). It is still durable when it returns."""
    import trio

    monkeypatch.setattr(sqlite_store, "ACK_DELAY", 30.0)  # (a send always comes first here)
    async with open_store(f"sqlite://{tmp_path}/db.sqlite") as store:
        assert isinstance(store, sqlite_store.SqliteStore)
        await store.attach_device("bob", "phone")
        await store.attach_device("alice", "phone")
        await store.append_message(msg(0))
        before = store.batches
        acked = trio.Event()

        async def ack() -> None:
            await store.ack("bob", "phone", 1, ts=2)
            acked.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ack)
            await trio.sleep(0.2)  # the writer is idle, the Ack waits for company
            assert not acked.is_set()
            await store.append_message(msg(1))  # ... which this send is
        assert acked.is_set() and store.batches == before + 1
        assert await store.cursor("bob", "phone") == 1
        monkeypatch.setattr(sqlite_store, "ACK_DELAY", 0.05)
        before = store.batches
        r = await store.ack("alice", "phone", 1, ts=3)  # alone: committed after the delay
        assert [type(i) for _, i in r.items] == [] and store.batches == before + 1


async def test_an_ack_whose_receipt_someone_waits_for_is_not_held(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """lazy=False (the device acknowledged a message: its sender waits for DELIVERED): the
    Ack commits at once, alone, instead of waiting for another write to share its commit."""
    import trio

    monkeypatch.setattr(sqlite_store, "ACK_DELAY", 3600.0)  # held, it would never return
    async with open_store(f"sqlite://{tmp_path}/db.sqlite") as store:
        assert isinstance(store, sqlite_store.SqliteStore)
        await store.attach_device("bob", "phone")
        await store.attach_device("alice", "phone")
        await store.append_message(msg(0))
        before = store.batches
        with trio.fail_after(60):
            r = await store.ack("bob", "phone", 1, ts=2, lazy=False)
        assert [(u, type(i)) for u, i in r.items] == [("alice", Notice)]
        assert store.batches == before + 1


async def test_a_batch_of_sends_costs_the_same_however_many_client_ids_are_kept(
        tmp_path: Path) -> None:
    """Client ids are kept for deduplication as long as messages are (days): a batch must
    look its ids up by key, not read the whole table. Counted in SQLite VM instructions (a
    progress handler every 100), not in time: with a scan, a batch of eight sends cost ~40x
    more after 4,000 stored messages than after 8."""
    import trio

    async with open_store(f"sqlite://{tmp_path}/db.sqlite") as store:
        await store.attach_device("bob", "phone")

        async def sends(tag: str, n: int) -> None:
            async with trio.open_nursery() as nursery:  # queued in one tick: one batch
                for i in range(n):
                    nursery.start_soon(store.append_message, NewMessage(
                        f"u{i}", "phone", f"{tag}{i}", f"d:bob:u{i}", ("bob",), b"x", 1000))

        async def steps_of_eight(tag: str) -> int:
            steps = [0]

            def count() -> int:
                steps[0] += 1
                return 0

            store._db.set_progress_handler(count, 100)
            batches = store.batches
            await sends(tag, 8)
            store._db.set_progress_handler(None, 100)
            assert store.batches == batches + 1
            return steps[0]

        await sends("warm", 8)
        few = await steps_of_eight("a")
        for k in range(40):
            await sends(f"fill{k}-", 100)
        many = await steps_of_eight("b")
        assert many < 2 * few, (few, many)


async def test_expired_client_ids_are_forgotten_a_bounded_number_a_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer does nothing else while a batch runs: after a long stop, the client ids
    that expired meanwhile (a day's worth held it for 4 s) go IDS_PER_BATCH a batch, oldest
    first, all in one collect. Until then a retry is a duplicate; after, a new message."""
    monkeypatch.setattr(sqlite_store, "IDS_PER_BATCH", 4)
    async with open_store(f"sqlite://{tmp_path}/db.sqlite") as store:
        await store.attach_device("bob", "phone")
        for i in range(10):  # one at a time: ts 1000..1009
            await store.append_message(msg(i))
        assert (await store.append_message(msg(0))).duplicate
        sizes: list[int] = []
        real = sqlite_store.SqliteStore._run_batch

        def run_batch(self: sqlite_store.SqliteStore, batch: list) -> None:  # type: ignore[type-arg]
            before = store._db.execute("SELECT COUNT(*) FROM client_ids").fetchone()[0]
            real(self, batch)
            sizes.append(before - store._db.execute("SELECT COUNT(*) FROM client_ids"
                                                    ).fetchone()[0])

        monkeypatch.setattr(sqlite_store.SqliteStore, "_run_batch", run_batch)
        gone = await store.collect(now=10**9, max_age_ms=10**6)  # every one of them expired
        assert max(sizes) <= 4 and sum(sizes) == 10
        assert gone["client_ids"] == 10
        assert not (await store.append_message(msg(0))).duplicate  # (forgotten: new)


async def test_disappearing_chats_expire_a_bounded_number_a_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every DISAPPEARING chat is looked at in each collect: 100,000 of them held the writer
    335 ms in one batch (a million, seconds). They go CONVS_PER_BATCH a batch, every expired
    message of every one of them in one collect."""
    from chatd.protocol.frames import Mode
    from chatd.store import direct_conv

    monkeypatch.setattr(sqlite_store, "CONVS_PER_BATCH", 2)
    async with open_store(f"sqlite://{tmp_path}/db.sqlite") as store:
        hour = 3600_000
        peers = [f"p{i}" for i in range(5)]
        for p in peers:
            conv = direct_conv("alice", p)
            await store.set_mode(conv, Mode.DISAPPEARING, 3600, "alice", ts=1000)
            await store.append_message(NewMessage("alice", "phone", f"to-{p}", conv, (p,),
                                                  b"x", 2000))
        batches = store.batches
        gone = await store.collect(now=2000 + hour + 1, max_age_ms=30 * 24 * hour)
        # the first pass, then 2 + 2 + 1 chats, then the client ids: 5 batches at least
        assert store.batches - batches >= 5
        assert gone["expired"] == 5 + 5  # (each chat's mode-change event too)
        for p in peers:
            assert [h.id for h in await store.history(direct_conv("alice", p), None, 10)] == []


async def test_deleting_a_user_costs_the_same_however_many_chats_others_have(
        tmp_path: Path) -> None:
    """`chatd admin delete-user` removes the user's watermark rows (member_state, keyed by
    chat first). Found by the user, not by reading every chat's rows: with a scan, deleting a
    user took ~12,000 SQLite VM instructions once others had 4,000 rows, against under 100
    with 10 (a progress handler every 100 counts them; no timing). By the index, under 100
    both times."""

    async with open_store(f"sqlite://{tmp_path}/db.sqlite") as store:
        assert isinstance(store, sqlite_store.SqliteStore)
        db = store._db

        def others(tag: str, n: int) -> None:  # (the writer thread is idle: no batch runs)
            db.execute("BEGIN")
            db.executemany("INSERT INTO member_state VALUES (?, ?, 0, 0)",
                           [(f"g:{tag}{i}", f"{tag}{i}") for i in range(n)])
            db.execute("COMMIT")

        async def steps_to_delete(user: str) -> int:
            await store.attach_device(user, "phone")
            await store.append_message(NewMessage("zoe", "phone", f"to-{user}",
                                                  f"d:{user}:zoe", (user,), b"x", 1000))
            steps = [0]

            def count() -> int:
                steps[0] += 1
                return 0

            db.set_progress_handler(count, 100)
            await store.delete_user(user)
            db.set_progress_handler(None, 100)
            return steps[0]

        others("a", 10)
        few = await steps_to_delete("carol")
        others("b", 4000)
        many = await steps_to_delete("dave")
        assert many < 2 * few + 5, (few, many)
        assert not await store.has_user("dave")
