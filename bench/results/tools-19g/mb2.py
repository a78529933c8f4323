import sys, time, os
TREE = os.environ.get("TREE", "/work/wt21")
sys.path[:0] = [TREE, TREE + "/clients"]
import trio
from chatd.store.cql import CassandraURL, Session
from chatd.store.cassandra import STATEMENTS
url = open("/tmp/wt21/node.info").read().split()[1]
async def main():
    s = Session(CassandraURL.parse(url)); await s.connect("chatd_bench")
    await s.prepare({k: STATEMENTS[k] for k in ("own_q",)})
    N, C = 4000, 40
    async def worker(k):
        for i in range(N // C):
            await s.run(s.batch([("own_q", (i, f"mb{k}"))]))
    for rep in range(3):
        t, c = time.perf_counter(), time.process_time()
        async with trio.open_nursery() as n:
            for k in range(C): n.start_soon(worker, k)
        el, cpu = time.perf_counter() - t, time.process_time() - c
        print(f"{TREE}: {N/el:.0f} req/s, client CPU {cpu/N*1e6:.0f} us/request")
    await s.close()
trio.run(main)
