"""Where a message's latency goes at a paced rate: the client's round trip (send -> its
DELIVERED back) against the server's own arrival -> Deliver queued (its histogram)."""
import sys, tempfile, urllib.request, trio
sys.path.insert(0, "/work/main")
from bench.common import ChatdProcess, free_port
from bench.throughput import connect_pairs, run_pairs, percentile

RATE = float(sys.argv[1]); PAIRS = 50; WINDOW = 16

def hist(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    b = {}
    for line in text.splitlines():
        if line.startswith("chatd_delivery_latency_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            b[float(le)] = float(line.rsplit(" ", 1)[1])
    return b

def q(b0, b1, p):
    les = sorted(b1); tot = b1[les[-1]] - b0.get(les[-1], 0)
    for le in les:
        if b1[le] - b0.get(le, 0) >= p * tot:
            return le
    return float("inf")

with tempfile.TemporaryDirectory() as tmp:
    users = [f"{k}{i}" for i in range(PAIRS) for k in ("s", "r")]
    mport = free_port()
    node = ChatdProcess(tmp, users, extra=("--metrics-port", str(mport)))
    try:
        async def main():
            pairs = await connect_pairs(node.port, PAIRS, node.token, False)
            await run_pairs(pairs, WINDOW, 1.0, RATE / PAIRS, [])
            b0 = hist(mport)
            lat = []
            done = await run_pairs(pairs, WINDOW, 5.0, RATE / PAIRS, lat)
            b1 = hist(mport)
            lat.sort()
            print(f"rate {RATE:.0f}: {done/5:.0f} msg/s; client round trip p50 {percentile(lat,50)*1e3:.1f} p99 {percentile(lat,99)*1e3:.1f} ms;"
                  f" server arrival->Deliver queued p50 <= {q(b0,b1,.5)*1e3:.0f} ms, p99 <= {q(b0,b1,.99)*1e3:.0f} ms (bucket bounds)")
        trio.run(main)
    finally:
        node.stop()
