"""Issue 17, eighth batch: 10 pairs x 1 in flight (4 s, after a 1 s warm-up) on the bare
relay, chatd on SQLite (synchronous=FULL) and chatd on memory:// (SQLite in memory: no
fsync, no disk), in the order given. From the tree's root:
PYTHONPATH=.:clients python bench/results/tenx1-nofsync-17h.py relay sqlite memory ..."""
import sys, time, trio
from bench import throughput as t
from bench.common import cpu_seconds
n, w, s = 10, 1, 4.0
def run(kind):
    if kind == "relay":
        with t.relay_process() as (port, cpu):
            return trio.run(t.measure, port, cpu, lambda u: u, True, n, w, s, False)
    store = "sqlite://TMP/chatd.db" if kind == "sqlite" else "memory://"
    with t.chatd_process(n, store, 1) as node:
        return trio.run(t.measure, node.port, lambda: cpu_seconds(node.proc.pid), node.token, False, n, w, s, False)
for kind in sys.argv[1:]:
    r = run(kind)
    print(f"{kind:7s} {r['msgs_per_s']:6d} msg/s p50 {r['p50_ms']:6.2f} ms p99 {r['p99_ms']:6.2f} cpu {r['server_cpu']*1e6/r['msgs_per_s']:5.0f} us/msg", flush=True)
