"""1:1 throughput and latency with each store, in the same run: the bare relay (the baseline
of every throughput figure), chatd on the embedded SQLite store, chatd on Cassandra.

A Cassandra 5.0 node is started on loopback for the run (bench/cassandra.py), unless
--cassandra names a running one. Everything shares the machine's cores: the load generator,
chatd and the Cassandra JVM."""

from __future__ import annotations

import contextlib
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from chatd.store.cql import migrate

from .cassandra import CassandraNode
from .common import ChatdProcess, cpu_seconds, free_port, save
from .throughput import chatd_process, measure, relay_process

COUNTED = ("chatd_messages_received_total", "chatd_cassandra_requests", "chatd_cassandra_paxos")
BY_STATEMENT = "chatd_cassandra_requests_by_statement{"


def counts(port: int) -> dict[str, float]:
    """The node's counters of COUNTED from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = dict.fromkeys(COUNTED, 0.0)
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith(BY_STATEMENT):  # (its own key per statement)
            name = name[len(BY_STATEMENT):].split('"')[1]
            out[name] = out.get(name, 0.0) + float(value)
        elif name in out:
            out[name] += float(value)
    return out


@contextlib.contextmanager
def cassandra_node(url: str | None, pid: int | None = None
                   ) -> Iterator[tuple[str, Callable[[], float]]]:
    """(URL, CPU seconds of the node so far: of process `pid` for a node we did not start, or
    0 without it)."""
    if url:
        yield url, (lambda: cpu_seconds(pid) if pid else 0.0)
        return
    with tempfile.TemporaryDirectory() as tmp:
        node = CassandraNode(Path(tmp))
        try:
            print("  starting a Cassandra node...", flush=True)
            node.start()
            assert node.proc is not None
            pid = node.proc.pid  # (run.sh execs java)
            yield node.url("chatd_bench"), lambda: cpu_seconds(pid)
        finally:
            node.stop()


def run(npairs: int, window: int, seconds: float, cassandra: str | None = None,
        cassandra_pid: int | None = None, warmup: float = 0) -> dict[str, Any]:
    """`warmup`: seconds of the same load on Cassandra before it is measured. A JVM just
    started compiles its hot code while it serves: measured at once, it cost 2.44 ms of CPU
    a message; after four minutes of load, 0.63-0.77 (docs/CASSANDRA.md)."""
    out: dict[str, Any] = {"pairs": npairs, "window": window, "seconds": seconds,
                           "cassandra_warmup_s": warmup}
    with relay_process() as (port, cpu):
        out["relay"] = trio.run(measure, port, cpu, lambda u: u, True, npairs, window, seconds)
    with chatd_process(npairs, "sqlite://TMP/chatd.db", 1) as node:
        out["sqlite"] = trio.run(measure, node.port, node.cpu_seconds, node.token, False,
                                 npairs, window, seconds)
    with cassandra_node(cassandra, cassandra_pid) as (url, cassandra_cpu):
        trio.run(migrate, url)
        users = [f"{k}{i}" for i in range(npairs) for k in ("s", "r")]
        mport = free_port()
        with tempfile.TemporaryDirectory() as tmp:
            node = ChatdProcess(tmp, users, store=url, extra=("--metrics-port", str(mport)))
            try:
                warm: dict[str, Any] = {"msgs_per_s": 0}
                if warmup > 0:
                    print(f"  warming Cassandra up: {warmup:g} s of the same load...", flush=True)
                    warm = trio.run(measure, node.port, node.cpu_seconds, node.token, False,
                                    npairs, window, warmup, False)
                t0, cpu0 = time.perf_counter(), cassandra_cpu()
                before = counts(mport)
                out["cassandra"] = trio.run(measure, node.port, node.cpu_seconds, node.token,
                                            False, npairs, window, seconds)
                out["cassandra"]["warmup_msgs_per_s"] = warm["msgs_per_s"]
                jvm = cassandra_cpu() - cpu0
                out["cassandra"]["cassandra_cpu"] = round(jvm / (time.perf_counter() - t0), 2)
                time.sleep(2.5)  # (the Cassandra counts are sampled every 2 s)
                after = counts(mport)
            finally:
                node.stop()
        sent = max(after[COUNTED[0]] - before[COUNTED[0]], 1)
        out["cassandra"]["requests_per_msg"] = round(
            (after[COUNTED[1]] - before[COUNTED[1]]) / sent, 2)
        out["cassandra"]["paxos_per_msg"] = round(
            (after[COUNTED[2]] - before[COUNTED[2]]) / sent, 3)
        out["cassandra"]["cassandra_cpu_ms_per_msg"] = round(jvm * 1000 / sent, 2)
        out["cassandra"]["requests_per_msg_by_statement"] = dict(sorted((
            (k, round((after[k] - before.get(k, 0.0)) / sent, 3)) for k in after
            if k not in COUNTED and after[k] > before.get(k, 0.0)), key=lambda kv: -kv[1]))
    for name in ("sqlite", "cassandra"):
        out[name]["ratio_vs_relay"] = round(
            out[name]["msgs_per_s"] / max(out["relay"]["msgs_per_s"], 1), 3)
    out["cassandra_vs_sqlite"] = round(
        out["cassandra"]["msgs_per_s"] / max(out["sqlite"]["msgs_per_s"], 1), 3)
    return out


def main(args: Any) -> None:
    result = run(args.pairs, args.window, args.seconds, args.cassandra, args.cassandra_pid,
                 args.warmup)
    for name in ("relay", "sqlite", "cassandra"):
        r = result[name]
        print(f"{name:9} {r['msgs_per_s']:8,} msg/s  p50 {r['p50_ms']:7.2f} ms  p99"
              f" {r['p99_ms']:7.2f} ms | at half load {r['half_load_msgs_per_s']:7,} msg/s"
              f" p50 {r['half_load_p50_ms']:6.2f} ms p99 {r['half_load_p99_ms']:6.2f} ms |"
              f" chatd CPU {r['server_cpu']:.0%} at peak")
    c = result["cassandra"]
    print(f"Cassandra requests per message {c['requests_per_msg']}, of which Paxos rounds"
          f" {c['paxos_per_msg']} (a message: send, stored, delivered, DELIVERED back);"
          f" Cassandra CPU {c['cassandra_cpu_ms_per_msg']} ms per message")
    print("  by statement, per message: " + ", ".join(
        f"{k} {v}" for k, v in c["requests_per_msg_by_statement"].items()))
    if result["cassandra_warmup_s"]:
        print(f"Cassandra measured after {result['cassandra_warmup_s']:g} s of warm-up"
              f" ({c['warmup_msgs_per_s']:,} msg/s meanwhile)")
    print(f"Cassandra's own CPU meanwhile: {result['cassandra']['cassandra_cpu']:.0%} (averaged"
          " over the peak and half-load runs; 0 if it was not started here)")
    print(f"cassandra / sqlite = {result['cassandra_vs_sqlite']:.2f}; vs relay: sqlite"
          f" {result['sqlite']['ratio_vs_relay']:.2f}, cassandra"
          f" {result['cassandra']['ratio_vs_relay']:.2f}")
    print(f"saved {save('stores', result)}")
