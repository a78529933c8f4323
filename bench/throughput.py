"""1:1 throughput and latency: send -> stored -> delivered -> DELIVERED receipt back at the
sender, against a bare trio relay measured in the same run with the same load client.

The load client (this process, trio) runs P sender/receiver pairs; each sender keeps up to W
messages in flight. Latency is from writing a Send to reading the DELIVERED receipt for it.
A second phase paces the senders at half of the measured peak to read p99 under normal load.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from typing import Any

import trio

from chatd.protocol import frames as F

from .common import (
    ChatdProcess,
    RawClient,
    cpu_seconds,
    free_port,
    percentile,
    save,
    wait_listening,
)

BODY = b"m" * 100


class Pair:
    def __init__(self, sender: RawClient, receiver: RawClient, relay: bool) -> None:
        self.sender, self.receiver, self.relay = sender, receiver, relay
        self.sent_at: dict[str, float] = {}
        self.seq_at: dict[int, float] = {}
        self.n = 0


async def run_pairs(pairs: list[Pair], window: int, seconds: float, rate: float | None,
                    latencies: list[float]) -> int:
    """Run the load for `seconds`; return completed messages, fill latencies (s)."""
    done = 0
    stop_at = trio.current_time() + seconds

    async def sender(p: Pair) -> None:
        nonlocal done
        slots = trio.Semaphore(window)
        interval = 1 / rate if rate else 0.0
        next_at = trio.current_time()

        async def reader() -> None:
            nonlocal done
            while True:
                for f in await p.sender.batch():
                    t = time.perf_counter()
                    if isinstance(f, F.Sent):
                        start = p.sent_at.pop(f.id, None)
                        if start is not None:
                            p.seq_at[f.seq] = start
                    elif isinstance(f, F.Receipt) and f.status == F.Status.DELIVERED:
                        for s in f.seqs:
                            start = p.seq_at.pop(s, None)
                            if start is not None:
                                latencies.append(t - start)
                                done += 1
                                slots.release()
                        await p.sender.send(F.Ack(upto=f.q))
                    elif isinstance(f, F.Deliver) and p.relay:  # relay: the echo is the receipt
                        start = p.sent_at.pop(f.id, None)
                        if start is not None:
                            latencies.append(t - start)
                            done += 1
                            slots.release()

        async with trio.open_nursery() as n:
            n.start_soon(reader)
            while trio.current_time() < stop_at:
                await slots.acquire()
                if interval:
                    next_at += interval
                    await trio.sleep_until(next_at)
                p.n += 1
                cid = f"c{p.n}"
                p.sent_at[cid] = time.perf_counter()
                await p.sender.send(F.Send(id=cid, to=p.receiver_user, body=BODY))
            n.cancel_scope.cancel()

    async def receiver(p: Pair) -> None:
        while True:
            frames = await p.receiver.batch()
            upto, echoes = 0, []
            for f in frames:
                if isinstance(f, F.Deliver):
                    upto = max(upto, f.q)
                    if p.relay:
                        echoes.append(F.Send(id=f.id, to=p.sender_user, body=b""))
            if p.relay and echoes:
                await p.receiver.send(*echoes)
            elif upto:
                await p.receiver.send(F.Ack(upto=upto))

    async with trio.open_nursery() as n:
        for p in pairs:
            n.start_soon(receiver, p)
        async with trio.open_nursery() as senders:
            for p in pairs:
                senders.start_soon(sender, p)
        n.cancel_scope.cancel()
    return done


async def connect_pairs(port: int, npairs: int, token: Any, relay: bool) -> list[Pair]:
    pairs = []
    for i in range(npairs):
        s = await RawClient.connect(port, token(f"s{i}"))
        r = await RawClient.connect(port, token(f"r{i}"))
        p = Pair(s, r, relay)
        p.sender_user, p.receiver_user = f"s{i}", f"r{i}"  # type: ignore[attr-defined]
        pairs.append(p)
    return pairs


async def measure(port: int, pid: int, token: Any, relay: bool, npairs: int, window: int,
                  seconds: float) -> dict[str, Any]:
    pairs = await connect_pairs(port, npairs, token, relay)
    await run_pairs(pairs, window, min(1.0, seconds / 3), None, [])  # warm up
    lat: list[float] = []
    t0, cpu0 = time.perf_counter(), cpu_seconds(pid)
    done = await run_pairs(pairs, window, seconds, None, lat)
    elapsed = time.perf_counter() - t0
    peak, peak_cpu = done / elapsed, (cpu_seconds(pid) - cpu0) / elapsed
    lat.sort()
    half: list[float] = []
    t0, cpu0 = time.perf_counter(), cpu_seconds(pid)
    done_half = await run_pairs(pairs, window, seconds, peak / 2 / npairs, half)
    elapsed = time.perf_counter() - t0
    half_rate, half_cpu = done_half / elapsed, (cpu_seconds(pid) - cpu0) / elapsed
    half.sort()
    for p in pairs:
        await p.sender.stream.aclose()
        await p.receiver.stream.aclose()
    ms = 1000
    return {"msgs_per_s": round(peak), "server_cpu": round(peak_cpu, 2),
            "half_load_server_cpu": round(half_cpu, 2),
            "p50_ms": round(percentile(lat, 50) * ms, 2),
            "p99_ms": round(percentile(lat, 99) * ms, 2),
            "p999_ms": round(percentile(lat, 99.9) * ms, 2),
            "half_load_msgs_per_s": round(half_rate),
            "half_load_p50_ms": round(percentile(half, 50) * ms, 2),
            "half_load_p99_ms": round(percentile(half, 99) * ms, 2)}


def run(npairs: int, window: int, seconds: float, store: str) -> dict[str, Any]:
    users = [f"{k}{i}" for i in range(npairs) for k in ("s", "r")]
    port = free_port()
    relay = subprocess.Popen([sys.executable, "-m", "bench.relay", str(port)])
    try:
        wait_listening(port, relay)
        relay_res = trio.run(measure, port, relay.pid, lambda u: u, True, npairs, window,
                             seconds)
    finally:
        relay.kill()
        relay.wait()
    with tempfile.TemporaryDirectory() as tmp:
        node = ChatdProcess(tmp, users, store=store.replace("TMP", tmp))
        try:
            chatd_res = trio.run(measure, node.port, node.proc.pid, node.token, False, npairs,
                                 window, seconds)
        finally:
            node.stop()
    return {"pairs": npairs, "window": window, "seconds": seconds, "store": store,
            "relay": relay_res, "chatd": chatd_res,
            "ratio_vs_relay": round(chatd_res["msgs_per_s"] / relay_res["msgs_per_s"], 3)}


def main(args: Any) -> None:
    result = run(args.pairs, args.window, args.seconds, args.store)
    for name in ("relay", "chatd"):
        r = result[name]
        print(f"{name:6} {r['msgs_per_s']:8,} msg/s  p50 {r['p50_ms']:7.2f} ms  p99"
              f" {r['p99_ms']:7.2f} ms  p999 {r['p999_ms']:7.2f} ms | at half load"
              f" {r['half_load_msgs_per_s']:7,} msg/s p50 {r['half_load_p50_ms']:6.2f} ms"
              f" p99 {r['half_load_p99_ms']:6.2f} ms | server CPU {r['server_cpu']:.0%} at peak,"
              f" {r['half_load_server_cpu']:.0%} at half")
    print(f"chatd / relay = {result['ratio_vs_relay']:.2f} (bar: >= 0.5)")
    print(f"saved {save('throughput', result)}")
