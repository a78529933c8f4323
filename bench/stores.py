"""1:1 throughput and latency with each store, in the same run: the bare relay (the baseline
of every throughput figure), chatd on the embedded SQLite store, chatd on Cassandra.

A Cassandra 5.0 node is started on loopback for the run (bench/cassandra.py), unless
--cassandra names a running one. Everything shares the machine's cores: the load generator,
chatd and the Cassandra JVM."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from chatd.store.cql import migrate

from .cassandra import CassandraNode
from .common import cpu_seconds, save
from .throughput import chatd_process, measure, relay_process


@contextlib.contextmanager
def cassandra_node(url: str | None) -> Iterator[tuple[str, Callable[[], float]]]:
    """(URL, CPU seconds of the node so far; 0 for a node we did not start)."""
    if url:
        yield url, lambda: 0.0
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


def run(npairs: int, window: int, seconds: float, cassandra: str | None = None
        ) -> dict[str, Any]:
    out: dict[str, Any] = {"pairs": npairs, "window": window, "seconds": seconds}
    with relay_process() as (port, cpu):
        out["relay"] = trio.run(measure, port, cpu, lambda u: u, True, npairs, window, seconds)
    with chatd_process(npairs, "sqlite://TMP/chatd.db", 1) as node:
        out["sqlite"] = trio.run(measure, node.port, node.cpu_seconds, node.token, False,
                                 npairs, window, seconds)
    with cassandra_node(cassandra) as (url, cassandra_cpu):
        trio.run(migrate, url)
        with chatd_process(npairs, url, 1) as node:
            t0, cpu0 = time.perf_counter(), cassandra_cpu()
            out["cassandra"] = trio.run(measure, node.port, node.cpu_seconds, node.token,
                                        False, npairs, window, seconds)
            out["cassandra"]["cassandra_cpu"] = round(
                (cassandra_cpu() - cpu0) / (time.perf_counter() - t0), 2)
    for name in ("sqlite", "cassandra"):
        out[name]["ratio_vs_relay"] = round(
            out[name]["msgs_per_s"] / max(out["relay"]["msgs_per_s"], 1), 3)
    out["cassandra_vs_sqlite"] = round(
        out["cassandra"]["msgs_per_s"] / max(out["sqlite"]["msgs_per_s"], 1), 3)
    return out


def main(args: Any) -> None:
    result = run(args.pairs, args.window, args.seconds, args.cassandra)
    for name in ("relay", "sqlite", "cassandra"):
        r = result[name]
        print(f"{name:9} {r['msgs_per_s']:8,} msg/s  p50 {r['p50_ms']:7.2f} ms  p99"
              f" {r['p99_ms']:7.2f} ms | at half load {r['half_load_msgs_per_s']:7,} msg/s"
              f" p50 {r['half_load_p50_ms']:6.2f} ms p99 {r['half_load_p99_ms']:6.2f} ms |"
              f" chatd CPU {r['server_cpu']:.0%} at peak")
    print(f"Cassandra's own CPU meanwhile: {result['cassandra']['cassandra_cpu']:.0%} (averaged"
          " over the peak and half-load runs; 0 if it was not started here)")
    print(f"cassandra / sqlite = {result['cassandra_vs_sqlite']:.2f}; vs relay: sqlite"
          f" {result['sqlite']['ratio_vs_relay']:.2f}, cassandra"
          f" {result['cassandra']['ratio_vs_relay']:.2f}")
    print(f"saved {save('stores', result)}")
