"""COMMIT times and WAL bytes of the SQLite store alone under a steady write load (batches of
PER_BATCH sends over 50 chats): python bench/results/wal-pages-17g.py BATCHES PER_BATCH on|off [PAGE_SIZE].
"on": SQLite checkpoints the WAL itself (every 1,000 pages); "off": never (the WAL then holds
every byte written). The batches counted include the 50 device attachments made first."""
import sys, time, trio, tempfile, sqlite3
sys.path.insert(0, "/work/main")
from chatd.store import open_store
from chatd.store import NewMessage

times = []

async def main(n_batches, per_batch, ckpt):
    d = tempfile.mkdtemp()
    if PAGE:
        c = sqlite3.connect(f"{d}/x.db"); c.execute(f"PRAGMA page_size={PAGE}"); c.execute("PRAGMA journal_mode=WAL"); c.close()
    async with open_store(f"sqlite://{d}/x.db") as st:
        if ckpt == "off":
            st._db.execute("PRAGMA wal_autocheckpoint=0")
        orig = st._run_batch
        def timed(batch):
            t = time.perf_counter(); orig(batch); times.append(time.perf_counter() - t)
        st._run_batch = timed
        for u in range(50):
            await st.attach_device(f"r{u}", "p")
        k = 0
        for b in range(n_batches):
            async with trio.open_nursery() as n:
                for i in range(per_batch):
                    k += 1
                    u = i % 50
                    n.start_soon(st.append_message, NewMessage(f"s{u}", "p", f"c{k}", f"d:r{u}:s{u}", (f"r{u}",), b"x" * 60, 1000))
        import os
        print("page", st._db.execute("PRAGMA page_size").fetchone()[0], "wal bytes at end", os.path.getsize(f"{d}/x.db-wal"), "per message", os.path.getsize(f"{d}/x.db-wal") // (k or 1))
    times.sort()
    n = len(times)
    print(f"ckpt={ckpt}: {n} batches of {per_batch}: p50 {times[n//2]*1e3:.2f} p90 {times[n*9//10]*1e3:.2f} p99 {times[n*99//100]*1e3:.2f} max {times[-1]*1e3:.2f} ms; sum of the top 1% {sum(times[n*99//100:])*1e3:.0f} ms of {sum(times)*1e3:.0f}")

PAGE = int(sys.argv[4]) if len(sys.argv) > 4 else 0
trio.run(main, int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
