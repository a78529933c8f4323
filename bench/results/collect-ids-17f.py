"""Store alone: one collect() after K client ids expired at once (a long stop): its whole
time and its longest batch (the writer serves no send during a batch). Usage: K."""
import sys, time, tempfile, trio
from chatd.store import open_store
from chatd.store import sqlite as S
K = int(sys.argv[1])
async def main():
    d = tempfile.mkdtemp()
    async with open_store(f"sqlite://{d}/db.sqlite") as store:
        store._db.execute("BEGIN")
        store._db.executemany("INSERT INTO client_ids VALUES (?, ?, 'd:a:b', ?, ?)",
                              ((f"old{i % 1000}", f"c{i}", i, 1000 + i) for i in range(K)))
        store._db.execute("COMMIT")
        longest = [0.0]
        real = store.on_batch
        store.on_batch = lambda s: longest.__setitem__(0, max(longest[0], s))
        t = time.perf_counter()
        gone = await store.collect(now=10**12, max_age_ms=10**9)
        print(f"{K} expired client ids: collect {time.perf_counter()-t:.2f} s in all, longest batch {longest[0]*1000:.0f} ms, {gone.get('client_ids')}")
trio.run(main)
