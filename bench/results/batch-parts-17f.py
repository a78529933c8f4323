"""Store alone: where a batch's CPU goes in the writer thread (time.thread_time around each
step of _run_batch), P tasks appending and acknowledging in turn. Usage: P N."""
import sys, time, tempfile, os, collections, sqlite3, threading
import trio
from chatd.store import NewMessage, open_store
from chatd.store import sqlite as S
from chatd.store.base import StoreError
P = int(sys.argv[1]); N = int(sys.argv[2])
acc = collections.Counter()
def _run_batch(self, batch):
    db = self._db; tt = time.thread_time
    t0 = tt()
    db.execute("BEGIN IMMEDIATE"); t1 = tt(); acc["begin"] += t1 - t0
    (version,) = db.execute("PRAGMA data_version").fetchone()
    if version != self._data_version:
        self._reset_caches(); self._data_version = version
    t2 = tt(); acc["data_version"] += t2 - t1
    self._prefetch_ids(db, [k for op in batch if op.ids for k in op.ids]); t3 = tt(); acc["prefetch"] += t3 - t2
    for op in batch:
        op.result = op.fn(db)
    t4 = tt(); acc["ops"] += t4 - t3
    self._buf.flush(db); t5 = tt(); acc["flush"] += t5 - t4
    db.execute("COMMIT"); t6 = tt(); acc["commit"] += t6 - t5
    self.batches += 1; self.ops += len(batch)
    acc["thread_total"] += t6 - t0
S.SqliteStore._run_batch = _run_batch

async def main():
    d = tempfile.mkdtemp()
    async with open_store(f"sqlite://{d}/db.sqlite") as store:
        for p in range(P):
            await store.attach_device(f"r{p}", "phone")
        for p in range(P):
            await store.append_message(NewMessage(f"s{p}", "phone", f"w{p}", f"d:r{p}:s{p}", (f"r{p}",), b"x" * 40, 1))
        acc.clear()
        b0 = store.batches; t0 = time.process_time(); m0 = time.thread_time()
        async def sender(p):
            for i in range(N // P):
                await store.append_message(NewMessage(f"s{p}", "phone", f"m{i}", f"d:r{p}:s{p}", (f"r{p}",), b"x" * 40, 1000 + i))
                await store.ack(f"r{p}", "phone", i + 2, ts=1, lazy=False)
        async with trio.open_nursery() as n:
            for p in range(P):
                n.start_soon(sender, p)
        b = store.batches - b0
        cpu = time.process_time() - t0; main_cpu = time.thread_time() - m0
        print(f"P={P} batches={b} ops/batch={2*N/b:.1f} process {cpu/b*1e6:.0f} us/batch, loop thread {main_cpu/b*1e6:.0f}; writer parts per batch:",
              " ".join(f"{k} {v/b*1e6:.0f}" for k, v in acc.items()))
trio.run(main)
