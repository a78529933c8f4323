"""SQLite-specific: what survives a reopen, and the bounded in-memory ack index."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from chatd.core import Delivery, Item, Notice
from chatd.protocol.frames import Status
from chatd.store import NewMessage, StoreError, open_store
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


class _HeldCommit:
    """The store's connection, with each COMMIT held until the test lets it go (or fail, as a
    crash before the commit would): what is handed out before the commit is observable."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.reached = threading.Event()  # a COMMIT is waiting
        self.go = threading.Event()
        self.fail = False
        self.commits = 0

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT":
            self.reached.set()
            self.go.wait()
            if self.fail:
                raise sqlite3.OperationalError("disk I/O error (the test's)")
            self.commits += 1
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


async def _receipt_before_commit(store: sqlite_store.SqliteStore, held: _HeldCommit,
                                 upto: int) -> tuple[str, Item]:
    """Bob acknowledges a message (lazy=False: its sender waits): the DELIVERED receipt
    must reach the listener while the Ack's COMMIT is still held."""
    handed: list[tuple[str, Item]] = []
    store.on_append = lambda items: handed.extend(items)
    held.reached.clear()
    held.go.clear()
    store._db = held  # type: ignore[assignment]
    commits = held.commits
    async with trio.open_nursery() as nursery:

        async def ack() -> None:
            with contextlib.suppress(StoreError):
                await store.ack("bob", "phone", upto, ts=2, lazy=False)

        nursery.start_soon(ack)
        try:
            await trio.to_thread.run_sync(held.reached.wait)
            await trio.testing.wait_all_tasks_blocked()
            receipts = [(u, i) for u, i in handed if isinstance(i, Notice)]
            assert held.commits == commits  # the Ack's batch has not committed
            assert [(u, i.receipt.status) for u, i in receipts] == [("alice", Status.DELIVERED)]
        finally:
            held.go.set()  # (else the writer thread would wait for ever)
    store._db = held.db
    assert [(u, i) for u, i in handed if isinstance(i, Notice)] == receipts  # handed once
    return receipts[0]


async def test_a_delivered_receipt_goes_out_before_the_acks_commit(tmp_path: Path) -> None:
    """The sender's DELIVERED receipt does not wait for the fsync of the recipient's Ack
    (issue 17): it is handed out while that commit runs, once, and committed with it."""
    async with open_store(f"sqlite://{tmp_path}/db.sqlite") as store:
        assert isinstance(store, sqlite_store.SqliteStore)
        for u in ("alice", "bob"):
            await store.attach_device(u, "phone")
        await store.append_message(msg(0))
        await store.ack("bob", "phone", 1, ts=1, lazy=False)  # (reserves alice's positions)
        await store.append_message(msg(1))
        _, receipt = await _receipt_before_commit(store, _HeldCommit(store._db), 2)
        assert await store.cursor("bob", "phone") == 2
        page = await store.inbox("alice", "phone", 0, 10)
        assert [i.q for i in page.items if isinstance(i, Notice)][-1] == receipt.q


async def test_a_position_handed_out_before_a_failed_commit_is_never_reused(
        tmp_path: Path) -> None:
    """A receipt handed out early whose commit never happens (a crash, a failed fsync): the
    sender's device has its position q and may acknowledge it, so no later item may get q,
    neither in this process nor after a restart (the device would skip that item)."""
    url = f"sqlite://{tmp_path}/db.sqlite"
    async with open_store(url) as store:
        assert isinstance(store, sqlite_store.SqliteStore)
        for u in ("alice", "bob"):
            await store.attach_device(u, "phone")
        await store.append_message(msg(0))
        await store.ack("bob", "phone", 1, ts=1, lazy=False)
        await store.append_message(msg(1))
        held = _HeldCommit(store._db)
        held.fail = True
        _, receipt = await _receipt_before_commit(store, held, 2)
        assert await store.cursor("bob", "phone") == 1  # the Ack was not stored
        later = await store.append_message(NewMessage(
            "bob", "phone", "b1", "d:alice:bob", ("alice",), b"y", 2000))
        assert next(i.q for u, i in later.items if u == "alice") > receipt.q
    # the same, then the process ends (a crash after the hand-out leaves the file so)
    async with open_store(url) as store:
        assert isinstance(store, sqlite_store.SqliteStore)
        await store.append_message(msg(2))
        await store.ack("bob", "phone", 3, ts=1, lazy=False)  # (first after a start: waits)
        await store.append_message(msg(3))
        held = _HeldCommit(store._db)
        held.fail = True
        _, receipt = await _receipt_before_commit(store, held, 4)
    async with open_store(url) as store:  # reopened cold
        again = await store.append_message(NewMessage(
            "bob", "phone", "b2", "d:alice:bob", ("alice",), b"z", 3000))
        assert next(i.q for u, i in again.items if u == "alice") > receipt.q
