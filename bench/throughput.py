"""1:1 throughput and latency: send -> stored -> delivered -> DELIVERED receipt back at the
sender, against a bare trio relay measured in the same run with the same load client.

The load client (this process, trio) runs P sender/receiver pairs; each sender keeps up to W
messages in flight. Latency is from writing a Send to reading the DELIVERED receipt for it.
A second phase paces the senders at half of the measured peak to read p99 under normal load.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
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
from .plots import plot_sweep

BODY = b"m" * 100
STUCK_S = 10.0  # a message unanswered this long at the end of a run is reported


class Pair:
    def __init__(self, sender: RawClient, receiver: RawClient, relay: bool) -> None:
        self.sender, self.receiver, self.relay = sender, receiver, relay
        self.sent_at: dict[str, float] = {}
        self.seq_at: dict[int, float] = {}
        self.early: set[int] = set()  # seqs DELIVERED before their Sent came (a forwarded send)
        self.n = 0
        self.run = secrets.token_hex(4)  # client ids unique across runs with the same users


async def run_pairs(pairs: list[Pair], window: int, seconds: float, rate: float | None,
                    latencies: list[float]) -> int:
    """Run the load for `seconds`; return completed messages, fill latencies (s). Answers
    to an earlier run's messages (still in flight when it stopped) count for nothing here:
    each would have given its sender one more message in flight for this whole run."""
    for p in pairs:
        p.sent_at.clear()
        p.seq_at.clear()
        p.early.clear()
    done = 0
    stop_at = trio.current_time() + seconds

    async def sender(p: Pair) -> None:
        nonlocal done
        slots = trio.Semaphore(window)
        interval = 1 / rate if rate else 0.0
        # paced senders start at random phases: in step, every tick would be a burst of
        # one message per pair (measured: p50 28 ms at 87 msg/s with 50 pairs in step)
        next_at = trio.current_time() + (random.uniform(0, interval) if interval else 0.0)

        async def reader() -> None:
            nonlocal done

            def delivered(seq: int, t: float) -> None:
                nonlocal done
                start = p.seq_at.pop(seq, None)
                if start is None:  # its Sent comes later (a send forwarded to another node)
                    p.early.add(seq)
                    return
                latencies.append(t - start)
                done += 1
                slots.release()

            while True:
                for f in await p.sender.batch():
                    t = time.perf_counter()
                    if isinstance(f, F.Sent):
                        start = p.sent_at.pop(f.id, None)
                        if start is not None:
                            p.seq_at[f.seq] = start
                            if f.seq in p.early:
                                p.early.discard(f.seq)
                                delivered(f.seq, t)
                    elif isinstance(f, F.Receipt) and f.status == F.Status.DELIVERED:
                        for s in f.seqs:
                            delivered(s, t)
                        await p.sender.send(F.Ack(upto=f.q))
                    elif isinstance(f, F.Error) and f.ref in p.sent_at and f.retry_ms:
                        n.start_soon(send_again, f.ref, f.retry_ms / 1000)  # (as the SDK)
                    elif isinstance(f, F.Error):
                        raise RuntimeError(f"the node ended {p.sender_user}'s connection: {f}")
                    elif isinstance(f, F.Deliver) and p.relay:  # relay: the echo is the receipt
                        start = p.sent_at.pop(f.id, None)
                        if start is not None:
                            latencies.append(t - start)
                            done += 1
                            slots.release()

        async def send_again(cid: str, delay: float) -> None:
            """A send the node failed alone (e.g. its chat's owner did not answer): again,
            under its id; its latency still counts from the first attempt."""
            await trio.sleep(delay)
            await p.sender.send(F.Send(id=cid, to=p.receiver_user, body=BODY))

        async with trio.open_nursery() as n:
            n.start_soon(reader)
            while trio.current_time() < stop_at:
                with trio.move_on_at(stop_at):  # (a message never answered: the run still ends)
                    await slots.acquire()
                if trio.current_time() >= stop_at:
                    break
                if interval:
                    next_at += interval
                    await trio.sleep_until(next_at)
                p.n += 1
                cid = f"{p.run}-{p.n}"
                p.sent_at[cid] = time.perf_counter()
                await p.sender.send(F.Send(id=cid, to=p.receiver_user, body=BODY))
            n.cancel_scope.cancel()

    async def receiver(p: Pair) -> None:
        while True:
            frames = await p.receiver.batch()
            upto, echoes = 0, []
            for f in frames:
                if isinstance(f, F.Error):
                    raise RuntimeError(f"the node ended {p.receiver_user}'s connection: {f}")
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
    now = time.perf_counter()
    stuck = sum(1 for p in pairs for t in [*p.sent_at.values(), *p.seq_at.values()]
                if now - t > STUCK_S)
    if stuck:
        print(f"  warning: {stuck} message(s) sent over {STUCK_S:g} s ago got no Sent or no"
              " DELIVERED", file=sys.stderr)
    return done


async def connect_pairs(port: int, npairs: int, token: Any, relay: bool,
                        receiver_port: int | None = None) -> list[Pair]:
    """Senders s0.. and receivers r0.. (on receiver_port if given: another node)."""
    pairs = []
    for i in range(npairs):
        s = await RawClient.connect(port, token(f"s{i}"))
        r = await RawClient.connect(receiver_port or port, token(f"r{i}"))
        p = Pair(s, r, relay)
        p.sender_user, p.receiver_user = f"s{i}", f"r{i}"  # type: ignore[attr-defined]
        pairs.append(p)
    return pairs


async def measure(port: int, cpu: Callable[[], float], token: Any, relay: bool, npairs: int,
                  window: int, seconds: float, half_load: bool = True) -> dict[str, Any]:
    """Peak msg/s with W in flight per sender; then (half_load) the same pairs paced at half
    of that peak."""
    pairs = await connect_pairs(port, npairs, token, relay)
    await run_pairs(pairs, window, min(1.0, seconds / 3), None, [])  # warm up
    lat: list[float] = []
    t0, cpu0 = time.perf_counter(), cpu()
    done = await run_pairs(pairs, window, seconds, None, lat)
    elapsed = time.perf_counter() - t0
    peak, peak_cpu = done / elapsed, (cpu() - cpu0) / elapsed
    lat.sort()
    ms = 1000
    out = {"msgs_per_s": round(peak), "server_cpu": round(peak_cpu, 2),
           "p50_ms": round(percentile(lat, 50) * ms, 2),
           "p99_ms": round(percentile(lat, 99) * ms, 2),
           "p999_ms": round(percentile(lat, 99.9) * ms, 2)}
    if half_load:
        half: list[float] = []
        t0, cpu0 = time.perf_counter(), cpu()
        done_half = await run_pairs(pairs, window, seconds, peak / 2 / npairs, half)
        elapsed = time.perf_counter() - t0
        half.sort()
        out.update({"half_load_server_cpu": round((cpu() - cpu0) / elapsed, 2),
                    "half_load_msgs_per_s": round(done_half / elapsed),
                    "half_load_p50_ms": round(percentile(half, 50) * ms, 2),
                    "half_load_p99_ms": round(percentile(half, 99) * ms, 2)})
    for p in pairs:
        await p.sender.stream.aclose()
        await p.receiver.stream.aclose()
    return out


@contextlib.contextmanager
def relay_process() -> Iterator[tuple[int, Callable[[], float]]]:
    port = free_port()
    relay = subprocess.Popen([sys.executable, "-m", "bench.relay", str(port)])
    try:
        wait_listening(port, relay)
        yield port, lambda: cpu_seconds(relay.pid)
    finally:
        relay.kill()
        relay.wait()


@contextlib.contextmanager
def chatd_process(npairs: int, store: str, workers: int, history: int = 0
                  ) -> Iterator[ChatdProcess]:
    users = [f"{k}{i}" for i in range(npairs) for k in ("s", "r")]
    with tempfile.TemporaryDirectory() as tmp:
        if history:
            prefill(store.replace("TMP", tmp), history)
        node = ChatdProcess(tmp, users, store=store.replace("TMP", tmp), workers=workers)
        try:
            yield node
        finally:
            node.stop()


def prefill(url: str, messages: int) -> None:
    """Give a new SQLite database the history a running node has: `messages` delivered
    messages from 1,000 other users, their client ids kept for deduplication (as they are
    for `temporary_max_age`). Written straight into the tables: the store's own path would
    take minutes for a million."""
    from chatd.store.sqlite import SqliteStore

    assert url.startswith("sqlite://"), "--history needs a SQLite store"
    store = SqliteStore(url[len("sqlite://"):])  # (creates the schema)
    db, now = store._db, int(time.time() * 1000)
    db.execute("BEGIN")
    db.executemany("INSERT INTO messages (conv, seq, ts, sender, device, client_id, body)"
                   " VALUES (?, ?, ?, ?, 'phone', ?, ?)",
                   ((f"d:h{i % 1000}:x{i % 1000}", 1 + i // 1000, now, f"h{i % 1000}",
                     f"c{i}", BODY) for i in range(messages)))
    db.executemany("INSERT INTO client_ids VALUES (?, ?, ?, ?, ?)",
                   ((f"h{i % 1000}", f"c{i}", f"d:h{i % 1000}:x{i % 1000}", 1 + i // 1000,
                     now) for i in range(messages)))
    db.execute("COMMIT")
    db.close()


def run(npairs: int, window: int, seconds: float, store: str,
        workers: int = 1, history: int = 0) -> dict[str, Any]:
    with relay_process() as (port, cpu):
        relay_res = trio.run(measure, port, cpu, lambda u: u, True, npairs, window, seconds)
    with chatd_process(npairs, store, workers) as node:
        chatd_res = trio.run(measure, node.port, node.cpu_seconds, node.token, False, npairs,
                             window, seconds)
    out = {"pairs": npairs, "window": window, "seconds": seconds, "store": store,
           "workers": workers, "relay": relay_res, "chatd": chatd_res,
           "ratio_vs_relay": round(chatd_res["msgs_per_s"] / relay_res["msgs_per_s"], 3)}
    if history:
        with chatd_process(npairs, store, workers, history) as node:
            out["chatd_with_history"] = trio.run(
                measure, node.port, node.cpu_seconds, node.token, False, npairs, window,
                seconds)
        out["history"] = history
        out["history_vs_fresh"] = round(
            out["chatd_with_history"]["msgs_per_s"] / max(chatd_res["msgs_per_s"], 1), 3)
    return out


def sweep(pairs: list[int], windows: list[int], seconds: float, store: str,
          workers: int = 1) -> dict[str, Any]:
    """Peak msg/s and latency for every pairs x window, chatd and the relay side by side
    (one relay and one chatd node for the whole sweep)."""
    runs: list[dict[str, Any]] = []
    with relay_process() as (port, cpu):
        for p in pairs:
            for w in windows:
                runs.append({"pairs": p, "window": w, "relay": trio.run(
                    measure, port, cpu, lambda u: u, True, p, w, seconds, False)})
    with chatd_process(max(pairs), store, workers) as node:
        for r in runs:
            r["chatd"] = trio.run(measure, node.port, node.cpu_seconds, node.token, False,
                                  r["pairs"], r["window"], seconds, False)
            r["ratio_vs_relay"] = round(r["chatd"]["msgs_per_s"]
                                        / max(r["relay"]["msgs_per_s"], 1), 3)
            print(f"  {r['pairs']:4} pairs x {r['window']:3} in flight: chatd"
                  f" {r['chatd']['msgs_per_s']:7,} msg/s p99 {r['chatd']['p99_ms']:7.1f} ms |"
                  f" relay {r['relay']['msgs_per_s']:7,} msg/s | ratio {r['ratio_vs_relay']}",
                  flush=True)
    return {"seconds": seconds, "store": store, "workers": workers, "runs": runs}


def main(args: Any) -> None:
    if getattr(args, "sweep", False):
        result = sweep([int(x) for x in args.sweep_pairs.split(",")],
                       [int(x) for x in args.sweep_windows.split(",")], args.seconds,
                       args.store, args.workers)
        path = save("throughput_sweep", result)
        png = plot_sweep(result, path.with_suffix(".png"))
        print(f"saved {path}" + (f" and {png}" if png else ""))
        return
    result = run(args.pairs, args.window, args.seconds, args.store,
                 getattr(args, "workers", 1), getattr(args, "history", 0))
    for name in ("relay", "chatd", "chatd_with_history"):
        if name not in result:
            continue
        r = result[name]
        print(f"{name:6} {r['msgs_per_s']:8,} msg/s  p50 {r['p50_ms']:7.2f} ms  p99"
              f" {r['p99_ms']:7.2f} ms  p999 {r['p999_ms']:7.2f} ms | at half load"
              f" {r['half_load_msgs_per_s']:7,} msg/s p50 {r['half_load_p50_ms']:6.2f} ms"
              f" p99 {r['half_load_p99_ms']:6.2f} ms | server CPU {r['server_cpu']:.0%} at peak,"
              f" {r['half_load_server_cpu']:.0%} at half")
    print(f"chatd / relay = {result['ratio_vs_relay']:.2f} (bar: >= 0.5)")
    if "history" in result:
        print(f"with {result['history']:,} messages already stored / fresh ="
              f" {result['history_vs_fresh']:.2f} (a node must not slow down as it fills)")
    print(f"saved {save('throughput', result)}")
