"""Store alone: one collect() with K DISAPPEARING chats (each is looked at every pass): its
whole time and its longest batch. Usage: K."""
import sys, time, tempfile, trio
from chatd.store import open_store
from chatd.core.modes import Mode
K = int(sys.argv[1])
async def main():
    d = tempfile.mkdtemp()
    async with open_store(f"sqlite://{d}/db.sqlite") as store:
        store._db.execute("BEGIN")
        store._db.executemany("INSERT INTO convs (conv, last_seq, mode, ttl) VALUES (?, 1, ?, 3600)",
                              ((f"d:a{i}:b{i}", int(Mode.DISAPPEARING)) for i in range(K)))
        store._db.execute("COMMIT")
        longest = [0.0]
        store.on_batch = lambda s: longest.__setitem__(0, max(longest[0], s))
        t = time.perf_counter()
        gone = await store.collect(now=10**12, max_age_ms=10**9)
        print(f"{K} disappearing chats: collect {time.perf_counter()-t:.2f} s, longest batch {longest[0]*1000:.0f} ms")
trio.run(main)
