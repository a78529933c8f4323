"""Store alone: 10 tasks appending and acknowledging in turn (batches of ~10 ops), after
K client ids are already kept (rows written straight into client_ids, as a day of traffic
would leave them). Prints process CPU per batch and per op."""
import sys, time, tempfile, sqlite3
import trio
from chatd.store import NewMessage, open_store
K = int(sys.argv[1]); P = 10; N = 3000
async def main():
    d = tempfile.mkdtemp()
    with sqlite3.connect(f"{d}/db.sqlite") as db:
        pass
    async with open_store(f"sqlite://{d}/db.sqlite") as store:
        store._db.executemany("INSERT INTO client_ids VALUES (?, ?, 'd:a:b', ?, ?)",
                              ((f"old{i % 1000}", f"c{i}", i, 10**12) for i in range(K)))
        for p in range(P):
            await store.attach_device(f"r{p}", "phone")
        b0, o0 = store.batches, store.ops
        t0 = time.process_time(); w0 = time.perf_counter()
        async def sender(p):
            for i in range(N // P):
                await store.append_message(NewMessage(f"s{p}", "phone", f"m{i}", f"d:r{p}:s{p}", (f"r{p}",), b"x" * 40, 1000 + i))
                await store.ack(f"r{p}", "phone", i + 1, ts=1, lazy=False)
        async with trio.open_nursery() as n:
            for p in range(P):
                n.start_soon(sender, p)
        cpu = time.process_time() - t0; wall = time.perf_counter() - w0
        ops = store.ops - o0; b = store.batches - b0
        print(f"kept {K:>8} client ids: {ops/b:.1f} ops/batch, CPU {cpu/b*1e6:7.0f} us/batch {cpu/ops*1e6:6.0f} us/op, {ops/wall:6.0f} ops/s")
trio.run(main)
