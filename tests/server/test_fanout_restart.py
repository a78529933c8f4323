"""Issue 13, end to end: `chatd serve --workers 2` on one SQLite file, with a backlog of group
fan-out jobs that both workers run, one worker SIGKILLed and restarted by the supervisor in
the middle of it: every member's inbox ends up with each group message exactly once. (Before
the fix this failed every time: both workers opening the store with the jobs pending ran some
twice, and so did the restarted worker.)"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import trio

from chatd.auth import load_or_create_secret
from chatd.store import NewMessage, SqliteStore, open_store

from .test_workers import start_node, worker_pids

MEMBERS = 300
MESSAGES = 150  # 45k inbox appends: a backlog of a few seconds (both workers reload the
# jobs whenever the other one committed)


async def pending_group_messages(url: str) -> None:
    """The store as a node left it: group messages committed, their fan-out not run yet."""
    async with open_store(url) as store:
        assert isinstance(store, SqliteStore)
        store.fanout_mode = "external"  # (the node's workers will run them)
        members = [f"m{i}" for i in range(MEMBERS)]
        now = int(time.time() * 1000)  # (an old TEMPORARY message would be collected)
        await store.create_group("big", "big", "alice", members, ts=now)
        for start in range(0, MESSAGES, 50):
            await store.append_messages([
                NewMessage("alice", "phone", f"c{i}", "g:big", (), b"hi", now, group="big")
                for i in range(start, start + 50)])


def fanout_left(db: sqlite3.Connection) -> tuple[int, int]:
    """(jobs left, inbox appends made)"""
    (jobs,) = db.execute("SELECT COUNT(*) FROM fanout").fetchone()
    (appended,) = db.execute("SELECT COUNT(*) FROM inbox").fetchone()
    return jobs, appended


async def test_a_worker_restarted_during_fanout_repeats_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    load_or_create_secret(str(data))
    path = data / "chatd.db"
    await pending_group_messages(f"sqlite://{path}")
    proc, _ = start_node(data)
    assert proc.stderr is not None
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(proc.stderr or ()), daemon=True).start()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        with trio.fail_after(30):
            while fanout_left(db)[1] < 2_000:  # both workers are at it
                await trio.sleep(0.01)
            victim = worker_pids(proc.pid)[0]
            os.kill(victim, signal.SIGKILL)
            while len(worker_pids(proc.pid)) < 2 or victim in worker_pids(proc.pid):
                await trio.sleep(0.05)  # the supervisor restarts it
            while fanout_left(db)[0]:
                await trio.sleep(0.1)
        twice = db.execute("SELECT user, conv, seq, COUNT(*) FROM inbox GROUP BY user, conv, seq"
                           " HAVING COUNT(*) > 1 LIMIT 5").fetchall()
        assert not twice, twice
        assert fanout_left(db)[1] == MEMBERS * (MESSAGES + 1)
    finally:
        db.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, "".join(log)
