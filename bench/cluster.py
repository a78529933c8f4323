"""Several nodes through Redis: cross-node 1:1 throughput and latency against same-node, in the
same run, and what the registry costs a connect + disconnect.

A Redis server and two chatd nodes (`--node-id`, `--redis`, one process each, one shared
SQLite file) run on loopback. Same-node: every sender and receiver on node A. Cross-node:
senders on A, receivers on B, so every message and every receipt crosses Redis (an XADD per
flush to the other node's stream). Registry cost: connect + Welcome + Synced + close cycles
against a node with Redis and against a node without it (no registry), same client.

With --cassandra (a URL, or nothing: a node started for the run) the two nodes share
Cassandra with numbering=owner instead, and the comparison is sends made on the node that
owns their chat against sends forwarded to it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import trio

from chatd.core.convs import direct
from chatd.core.owners import owner, shard_of
from chatd.store.cql import migrate
from chatd.util import redact

from .common import ChatdProcess, RawClient, free_port, percentile, save
from .stores import cassandra_node
from .throughput import Pair, connect_pairs, run_pairs


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], int]:
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", workdir],
                            stdout=subprocess.DEVNULL)
    for _ in range(200):
        out = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                             text=True)
        if out.stdout.strip() == "PONG":
            return proc, port
        time.sleep(0.05)
    raise RuntimeError("redis did not start")


async def owned_pairs(a: ChatdProcess, b: ChatdProcess, npairs: int, forwarded: bool
                      ) -> list[Pair]:
    """numbering=owner (nodes "a" and "b"): each pair's receiver on the node that owns its
    chat, its sender there too, or (forwarded) on the other node, so that every send is
    forwarded to the owner and its Sent comes back. The inbox owners are the same both ways."""
    pairs = []
    for i in range(npairs):
        conv = direct(f"s{i}", f"r{i}")
        home, away = (a, b) if owner(shard_of(conv), ["a", "b"]) == "a" else (b, a)
        s = await RawClient.connect((away if forwarded else home).port, a.token(f"s{i}"))
        p = Pair(s, await RawClient.connect(home.port, a.token(f"r{i}")), False)
        p.sender_user, p.receiver_user = f"s{i}", f"r{i}"  # type: ignore[attr-defined]
        pairs.append(p)
    return pairs


async def load(a: ChatdProcess, b: ChatdProcess, npairs: int, window: int, seconds: float,
               rate: float | None, forwarded: bool | None = None) -> dict[str, Any]:
    """Senders on a, receivers on b; with `forwarded` set, placed by chat owner instead."""
    pairs = await (connect_pairs(a.port, npairs, a.token, False, receiver_port=b.port)
                   if forwarded is None else owned_pairs(a, b, npairs, forwarded))
    await trio.sleep(1.0)  # the registry entries are written and routes can be found
    await run_pairs(pairs, window, min(1.0, seconds / 3), rate, [])  # warm up
    lat: list[float] = []
    t0 = time.perf_counter()
    done = await run_pairs(pairs, window, seconds, rate, lat)
    elapsed = time.perf_counter() - t0
    for p in pairs:
        await p.sender.stream.aclose()
        await p.receiver.stream.aclose()
    lat.sort()
    return {"msgs_per_s": round(done / elapsed), "p50_ms": round(percentile(lat, 50) * 1000, 2),
            "p99_ms": round(percentile(lat, 99) * 1000, 2)}


async def churn(node: ChatdProcess, n: int) -> float:
    """Connect + Synced + close, n times (20 at a time): cycles per second."""
    limiter = trio.CapacityLimiter(20)

    async def one(i: int) -> None:
        async with limiter:
            c = await RawClient.connect(node.port, node.token(f"churn{i}"))
            await c.stream.aclose()

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return n / (time.perf_counter() - t0)


@contextlib.contextmanager
def two_nodes(tmp: str, users: list[str], store: str = "") -> Iterator[
        tuple[ChatdProcess, ChatdProcess]]:
    """Redis and two nodes "a" and "b" joined through it (users registered through a)."""
    redis, rport = start_redis(tmp)
    try:
        extra = ("--redis", f"redis://127.0.0.1:{rport}")
        a = ChatdProcess(tmp, users, store=store, extra=("--node-id", "a", *extra))
        try:
            b = ChatdProcess(tmp, [], store=store, extra=("--node-id", "b", *extra))
            try:
                yield a, b
            finally:
                b.stop()
        finally:
            a.stop()
    finally:
        redis.kill()
        redis.wait()


def run_owner(npairs: int, window: int, seconds: float, cassandra: str | None
              ) -> dict[str, Any]:
    """Two nodes on Cassandra with numbering=owner: sends made on their chat's owner against
    sends forwarded to it (same pairs, same run)."""
    users = [f"{k}{i}" for i in range(npairs) for k in ("s", "r")]
    with cassandra_node(cassandra) as (url, _), tempfile.TemporaryDirectory() as tmp:
        trio.run(migrate, url)
        if "numbering=" not in url:
            url += ("&" if "?" in url else "?") + "numbering=owner"
        with two_nodes(tmp, users, url) as (a, b):
            time.sleep(7)  # two heartbeats: each node sees the other alive (same owners)
            trio.run(load, a, b, npairs, window, seconds, None, True)  # leases taken
            out = {"on_owner": trio.run(load, a, b, npairs, window, seconds, None, False),
                   "forwarded": trio.run(load, a, b, npairs, window, seconds, None, True)}
    return {"pairs": npairs, "window": window, "seconds": seconds, "store": redact(url),
            **out, "forwarded_vs_on_owner": round(out["forwarded"]["msgs_per_s"] / max(
                out["on_owner"]["msgs_per_s"], 1), 3)}


def run(npairs: int = 20, window: int = 8, seconds: float = 5, churn_n: int = 2000
        ) -> dict[str, Any]:
    users = [f"{k}{i}" for i in range(npairs) for k in ("s", "r")]
    with tempfile.TemporaryDirectory() as tmp:
        with two_nodes(tmp, users) as (a, b):
            same = trio.run(load, a, a, npairs, window, seconds, None)
            cross = trio.run(load, a, b, npairs, window, seconds, None)
            light = {"same": trio.run(load, a, a, npairs, 1, seconds, 20 / npairs),
                     "cross": trio.run(load, a, b, npairs, 1, seconds, 20 / npairs)}
            with_registry = trio.run(churn, a, churn_n)
        plain = ChatdProcess(os.path.join(tmp, "plain"), [])
        try:
            without = trio.run(churn, plain, churn_n)
        finally:
            plain.stop()
    return {"pairs": npairs, "window": window, "seconds": seconds, "same_node": same,
            "cross_node": cross, "cross_vs_same": round(cross["msgs_per_s"]
                                                        / max(same["msgs_per_s"], 1), 3),
            "light_load_20_msgs_per_s": light,
            "connect_cycles_per_s": {"with_redis": round(with_registry),
                                     "without": round(without)},
            "registry_cost_us_per_cycle": round((1 / with_registry - 1 / without) * 1e6)}


def main(args: Any) -> None:
    if args.cassandra is not None:
        r = run_owner(args.pairs, args.window, args.seconds, args.cassandra or None)
        for name in ("on_owner", "forwarded"):
            x = r[name]
            print(f"{name:10} {x['msgs_per_s']:7,} msg/s  p50 {x['p50_ms']:7.2f} ms  p99"
                  f" {x['p99_ms']:7.2f} ms")
        print(f"forwarded / on owner = {r['forwarded_vs_on_owner']}")
        print(f"saved {save('cluster-owner', r)}")
        return
    r = run(args.pairs, args.window, args.seconds)
    for name in ("same_node", "cross_node"):
        x = r[name]
        print(f"{name:10} {x['msgs_per_s']:7,} msg/s  p50 {x['p50_ms']:7.2f} ms  p99"
              f" {x['p99_ms']:7.2f} ms")
    lt = r["light_load_20_msgs_per_s"]
    print(f"cross / same = {r['cross_vs_same']}; at 20 msg/s: same p50 {lt['same']['p50_ms']}"
          f" ms p99 {lt['same']['p99_ms']} ms, cross p50 {lt['cross']['p50_ms']} ms p99"
          f" {lt['cross']['p99_ms']} ms")
    c = r["connect_cycles_per_s"]
    print(f"connect+close cycles/s: {c['with_redis']:,} with the registry, {c['without']:,}"
          f" without ({r['registry_cost_us_per_cycle']} us per cycle)")
    print(f"saved {save('cluster', r)}")
