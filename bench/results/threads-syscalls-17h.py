"""Issue 17, eighth batch: chatd alone, N pairs x W in flight for S seconds; CPU per
message of each of the node's threads (/proc/PID/task), and with "strace" the node's
system calls meanwhile (`strace -c -f`, to /tmp/strace.txt; it slows the node ~5x, so
count calls per message, not time). STORE=memory:// for no fsync.
PYTHONPATH=.:clients python bench/results/threads-syscalls-17h.py 10 1 5 [strace]"""
import os, subprocess, sys, time, trio
from bench import throughput as t
from bench.common import cpu_seconds
n, w, s = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
mode = sys.argv[4] if len(sys.argv) > 4 else ""
def threads(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        st = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        name = open(f"/proc/{pid}/task/{tid}/comm").read().strip()
        out[tid] = (name, (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK"), int(st[11])/100, int(st[12])/100)
    return out
with t.chatd_process(n, os.environ.get("STORE", "sqlite://TMP/chatd.db"), 1) as node:
    pid = node.proc.pid
    async def main():
        pairs = await t.connect_pairs(node.port, n, node.token, False)
        await t.run_pairs(pairs, w, 1.0, None, [])
        proc = None
        if mode == "strace":
            proc = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", "/tmp/strace.txt"])
            await trio.sleep(0.5)
        lat = []
        th0 = threads(pid)
        t0, c0 = time.perf_counter(), cpu_seconds(pid)
        done = await t.run_pairs(pairs, w, s, None, lat)
        el = time.perf_counter() - t0
        th1 = threads(pid)
        lat.sort()
        print(f"{done} msgs {done/el:.0f} msg/s  cpu {(cpu_seconds(pid)-c0)/done*1e6:.0f} us/msg  p50 {lat[len(lat)//2]*1e3:.2f} ms p99 {lat[int(len(lat)*.99)]*1e3:.2f}")
        for tid, (nm, c, u, sy) in th1.items():
            if tid in th0:
                d = c - th0[tid][1]
                if d > 0.01: print(f"  {nm:20s} {d/done*1e6:6.0f} us/msg (user {(u-th0[tid][2])/done*1e6:.0f} sys {(sy-th0[tid][3])/done*1e6:.0f})")
        if proc:
            proc.terminate(); proc.wait()
    trio.run(main)
