import re, os, sys, subprocess, tempfile, time, json
TREE = os.environ.get("TREE", "/work/wt21")
sys.path[:0] = [TREE, TREE + "/clients"]
import trio
from bench.common import ChatdProcess, cpu_seconds
from bench.throughput import connect_pairs, run_pairs
from chatd.store.cql import migrate
pid, url = open("/tmp/wt21/node.info").read().split()
url += "&numbering=owner"
label = sys.argv[1]; secs = float(sys.argv[2]) if len(sys.argv) > 2 else 8
spy = len(sys.argv) > 3 and sys.argv[3] == "spy"
trio.run(migrate, url)
users = [f"{k}{i}" for i in range(20) for k in ("s", "r")]
def threads(p, jvm=False):
    out = {}
    for t in os.listdir(f"/proc/{p}/task"):
        with open(f"/proc/{p}/task/{t}/stat") as f:
            s = f.read(); name = s[s.index("(")+1:s.rindex(")")]
            fields = s.rsplit(")", 1)[1].split()
        k = re.sub(r"[-:#]?\d+$", "", name) if jvm else f"{t}:{name}"
        out[k] = out.get(k, 0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out
with tempfile.TemporaryDirectory() as tmp:
    node = ChatdProcess(tmp, users, store=url)
    try:
        async def main():
            pairs = await connect_pairs(node.port, 20, node.token, False)
            await run_pairs(pairs, 8, 2.0, None, [])
            jt0 = threads(int(pid), True); th0, j0, t0 = threads(node.proc.pid), cpu_seconds(int(pid)), time.perf_counter()
            sp = None
            if spy:
                sp = subprocess.Popen(["/work/main/.venv/bin/py-spy", "record", "-p", str(node.proc.pid), "-d", str(int(secs)), "-r", "200", "--threads", "--nonblocking", "-f", "raw", "-o", f"/tmp/wt21/{label}.txt"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            lat = []
            done = await run_pairs(pairs, 8, secs, None, lat)
            el = time.perf_counter() - t0
            jt1 = threads(int(pid), True); th1, j1 = threads(node.proc.pid), cpu_seconds(int(pid))
            if sp: sp.wait()
            lat.sort()
            res = {"label": label, "load": open("/proc/loadavg").read().split()[0], "msgs_per_s": round(done/el), "p50_ms": round(lat[len(lat)//2]*1000,1),
                   "chatd_us_per_msg": round(sum(th1.values())-sum(th0.values()), 3)*1e6/done,
                   "jvm_us_per_msg": round((j1-j0)*1e6/done),
                   "chatd_cpu": round((sum(th1.values())-sum(th0.values()))/el, 2), "jvm_cpu": round((j1-j0)/el, 2),
                   "threads_us_per_msg": {k: round((th1[k]-th0.get(k,0))*1e6/done) for k in th1 if th1[k]-th0.get(k,0) > 0}}
            res["jvm_threads_us_per_msg"] = dict(sorted(((k, round((jt1[k]-jt0.get(k,0))*1e6/done)) for k in jt1 if jt1[k]-jt0.get(k,0) > 0), key=lambda kv: -kv[1]))
            res["chatd_us_per_msg"] = round(res["chatd_us_per_msg"])
            print(json.dumps(res))
            open("/tmp/wt21/prof.jsonl", "a").write(json.dumps(res) + "\n")
            for p in pairs:
                await p.sender.stream.aclose(); await p.receiver.stream.aclose()
        trio.run(main)
    finally:
        node.stop()
