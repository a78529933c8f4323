"""Store-only: P tasks, each appending messages one at a time (await each), for N total.
Prints process CPU us per op, ops per batch, wall ms per op."""
import sys, time, tempfile, os, resource
import trio
from chatd.store import NewMessage, open_store

P = int(sys.argv[1]); N = int(sys.argv[2])

async def main():
    d = tempfile.mkdtemp()
    async with open_store(f"sqlite://{d}/db.sqlite") as store:
        for p in range(P):
            await store.attach_device(f"r{p}", "phone")
        for p in range(P):  # warm
            await store.append_message(NewMessage(f"s{p}", "phone", f"w{p}", f"d:r{p}:s{p}", (f"r{p}",), b"x" * 40, 1))
        b0, o0 = store.batches, store.ops
        T0 = os.times(); t0 = time.process_time(); w0 = time.perf_counter()
        async def sender(p):
            for i in range(N // P):
                await store.append_message(NewMessage(f"s{p}", "phone", f"m{i}", f"d:r{p}:s{p}", (f"r{p}",), b"x" * 40, 1000 + i))
                await store.ack(f"r{p}", "phone", i + 2, ts=1, lazy=False)
        async with trio.open_nursery() as n:
            for p in range(P):
                n.start_soon(sender, p)
        cpu = time.process_time() - t0; wall = time.perf_counter() - w0
        ops = store.ops - o0; batches = store.batches - b0
        T1 = os.times(); print(f"user {(T1.user-T0.user)/batches*1e6:.0f} sys {(T1.system-T0.system)/batches*1e6:.0f} per batch; ", end="")
        print(f"P={P} ops={ops} batches={batches} ops/batch={ops/batches:.2f} cpu us/op={cpu/ops*1e6:.1f} cpu us/batch={cpu/batches*1e6:.1f} wall us/op={wall/ops*1e6:.1f}")

trio.run(main)
