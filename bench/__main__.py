"""python -m bench {codec,throughput,memory,drain,fanout,connections,cluster,stores,abuse,versus,
media,report,all}: figures, saved to bench/results/ (JSON, PNG plots, and SUMMARY.md from `report`).
python -m bench chaos: faults injected into real nodes, the delivery history checked."""

from __future__ import annotations

import argparse
import os

from . import (
    abuse,
    cluster,
    codec,
    connections,
    drain,
    fanout,
    media,
    memory,
    report,
    stores,
    throughput,
)
from .chaos import add_parser as add_chaos_parser
from .chaos import main as chaos_main
from .versus import add_parser as add_versus_parser
from .versus import main as versus_main


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench")
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("codec", help="encode/decode rates vs plain msgpack")
    c.add_argument("--seconds", type=float, default=0.5)
    t = sub.add_parser("throughput", help="1:1 msg/s and latency vs a bare trio relay")
    t.add_argument("--pairs", type=int, default=50)
    t.add_argument("--window", type=int, default=8)
    t.add_argument("--seconds", type=float, default=5)
    t.add_argument("--store", default="sqlite://TMP/chatd.db",
                   help="store URL for the chatd node (TMP: a temporary dir)")
    t.add_argument("--workers", type=int, default=1, help="chatd worker processes")
    t.add_argument("--history", type=int, default=0,
                   help="also run chatd on a SQLite database already holding this many"
                   " messages (and their client ids), same run: history / fresh")
    t.add_argument("--sweep", action="store_true",
                   help="peak msg/s and latency for every pairs x window (with a plot)")
    t.add_argument("--sweep-pairs", default="10,50,100")
    t.add_argument("--sweep-windows", default="1,4,16,64")
    m = sub.add_parser("memory", help="server memory per idle authenticated connection")
    m.add_argument("--connections", type=int, default=5000)
    m.add_argument("--transport", choices=("tcp", "ws", "both"), default="tcp",
                   help="connections over TCP, over WebSocket, or both (same run)")
    d = sub.add_parser("drain", help="a reconnecting device drains N queued messages")
    d.add_argument("--messages", type=int, default=10_000)
    f = sub.add_parser("fanout", help="send -> last member of a large group, and SENT meanwhile")
    f.add_argument("--members", type=int, default=1024)
    f.add_argument("--messages", type=int, default=20)
    f.add_argument("--store", default="", help="the node's store URL, e.g. a running"
                   " Cassandra node's cassandra://...: then also requests and Paxos rounds"
                   " per group message (default: SQLite in a temporary directory)")
    n = sub.add_parser("connections", help="ramp to N idle authenticated connections, hold"
                       " them; memory, CPU, latency (with a plot)")
    n.add_argument("--target", type=int, default=100_000)
    n.add_argument("--workers", type=int, default=max(6, os.cpu_count() or 1),
                   help="chatd workers (each may hold < 20,000 files here)")
    n.add_argument("--hold", type=float, default=20, help="seconds to hold them")
    n.add_argument("--transport", choices=("tcp", "ws"), default="tcp",
                   help="the connections over TCP or over WebSocket (/ws)")
    n.add_argument("--heartbeat", type=float, default=30)
    n.add_argument("--max-seconds", type=float, default=900,
                   help="the whole run stops by itself after this")
    c2 = sub.add_parser("cluster", help="two nodes through Redis: cross-node vs same-node"
                        " 1:1, and the registry's cost per connect")
    c2.add_argument("--pairs", type=int, default=20)
    c2.add_argument("--window", type=int, default=8)
    c2.add_argument("--seconds", type=float, default=5)
    c2.add_argument("--cassandra", nargs="?", const="", help="on Cassandra, numbering=owner:"
                    " cassandra://... of a running node, or nothing to start one")
    s2 = sub.add_parser("stores", help="1:1 msg/s and latency on SQLite and on Cassandra (and"
                        " the relay), same run")
    s2.add_argument("--pairs", type=int, default=20)
    s2.add_argument("--window", type=int, default=8)
    s2.add_argument("--seconds", type=float, default=5)
    s2.add_argument("--cassandra", help="cassandra://... of a running node (default: start"
                    " one on loopback for the run)")
    s2.add_argument("--cassandra-pid", type=int, help="the process of that node, to count"
                    " its CPU")
    s2.add_argument("--warmup", type=float, default=60, help="seconds of the same load on"
                    " Cassandra before it is measured (its JVM compiles its hot code)")
    ab = sub.add_parser("abuse", help="a victim pair's latency and the node's RSS while"
                        " clients flood, read slowly, loop History, send junk before sign-in;"
                        " the node with its default limits")
    ab.add_argument("--seconds", type=float, default=6,
                    help="each attack (the quiet windows between them: half of it)")
    ab.add_argument("--rate", type=float, default=50, help="victim messages a second")
    ab.add_argument("--attacks", default="flood,slow,junk")
    ab.add_argument("--flooders", type=int, default=8)
    ab.add_argument("--slow-readers", type=int, default=8)
    ab.add_argument("--history-loops", type=int, default=2)
    ab.add_argument("--junk", type=int, default=300, help="junk loops before sign-in")
    ab.add_argument("--silent", type=int, default=1100,
                    help="silent connections (past the default cap of 1024 signing in)")
    md = sub.add_parser("media", help="image uploads/s and MiB/s, dedup hits, downloads, RSS"
                        " during large uploads, and an unrelated chat's latency meanwhile")
    md.add_argument("--quick", action="store_true", help="fewer and smaller runs")
    sub.add_parser("report", help="write bench/results/SUMMARY.md from the saved results")
    add_chaos_parser(sub)
    add_versus_parser(sub)
    a = sub.add_parser("all", help="everything with the defaults")
    a.set_defaults(seconds=5)
    args = p.parse_args()
    if args.what == "chaos":
        chaos_main(args)
        return
    if args.what == "versus":
        versus_main(args)
        return
    if args.what == "all":
        codec.main(argparse.Namespace(seconds=0.5))
        throughput.main(argparse.Namespace(pairs=50, window=8, seconds=5,
                                           store="sqlite://TMP/chatd.db"))
        memory.main(argparse.Namespace(connections=5000))
        drain.main(argparse.Namespace(messages=10_000))
        fanout.main(argparse.Namespace(members=1024, messages=20, store=""))
        report.main(args)
        return
    {"codec": codec, "throughput": throughput, "memory": memory, "drain": drain,
     "fanout": fanout, "connections": connections, "cluster": cluster, "stores": stores,
     "report": report, "abuse": abuse, "media": media}[args.what].main(args)


if __name__ == "__main__":
    main()
