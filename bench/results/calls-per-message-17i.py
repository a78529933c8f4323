"""Issue 17, ninth batch: the node's main (trio) thread under cProfile at 10 pairs x 1 in flight
(SQLite, fsync on, 4 s after a 1 s warm-up), then its Python-level calls per message sent,
grouped by where the function lives. From the tree's root:
PYTHONPATH=.:clients python bench/results/calls-per-message-17i.py [OUT.prof]"""
import collections, os, pstats, sys, trio
sys.path[:0] = [".", "clients"]
OUT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "calls.prof")
os.environ["CHATD_BENCH_SERVER"] = f"{sys.executable} -m cProfile -o {OUT} -m chatd"
from bench import throughput as t
from bench.common import cpu_seconds
with t.chatd_process(10, "sqlite://TMP/chatd.db", 1) as node:
    r = trio.run(t.measure, node.port, lambda: cpu_seconds(node.proc.pid), node.token, False,
                 10, 1, 4.0, False)
print(f"{r['msgs_per_s']} msg/s under the profiler")
s = pstats.Stats(OUT)  # (written when the node stopped)
msgs = [v[1] for k, v in s.stats.items() if k[2] == "sent" and "analytics/events" in k[0]][0]
print(f"{msgs} messages sent, {s.total_calls} calls ({s.total_calls / msgs:.0f} a message)")
own, calls = collections.Counter(), collections.Counter()
for (f, _line, name), (_cc, nc, tt, _ct, _callers) in s.stats.items():
    if "site-packages/" in f:
        k = f.split("site-packages/")[1].split("/")[0]
    elif "/chatd/" in f:
        k = "chatd/" + f.split("/chatd/")[-1].split("/")[0]
    else:
        k = "builtin:" + name[:40] if f == "~" else "stdlib"
    own[k] += tt
    calls[k] += nc
total = sum(own.values())
print("share of profiled time (own time; epoll.poll includes idle waiting), calls a message")
for k, v in own.most_common(25):
    print(f"{100 * v / total:5.1f}% {calls[k] / msgs:7.1f}  {k}")
