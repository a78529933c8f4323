"""Abuse: a victim pair's latency and the node's memory while other clients attack the node,
against the same pair with no attack, measured in the same run (issue 12).

One node (`chatd serve`, one process, with its DEFAULT limits: no bench overrides). A victim
pair stays connected the whole run: alice sends to bob at a modest paced rate, one message in
flight; latency is from writing the Send to bob reading its Deliver (bob acknowledges).

Windows, one after the other: a quiet one (no attack, half as long) before each attack and
one after the last. The no-attack reference is all the quiet windows pooled: other load on a
shared machine drifts over a run, so it is measured all along it, not only at its start.
  flood   N accounts pipeline sends to each other as fast as they can (reading and acking
          what they get): the per-user send rate should refuse most of them
  slow    K devices of one user that never read, sent 60 KB messages by another user at up to
          the send rate; and History loops (History(limit=200) over a chat of 4 KB messages,
          10 every 20 ms, never reading). Each holds its connection `hold` seconds, reads for
          half a second (to count what it got), and signs in again
  junk    before sign-in: loops sending a 1 MiB-1 length prefix + junk, or a small frame of
          junk, every half second; and silent connections (connect, send nothing) ramping past
          the cap on connections signing in (1024 by default) in the first third of the window

The attackers run in another process (`python -m bench.abuse --attacker KIND ...`), so the
victim's client never waits behind them; the victim shares only the node (and the machine's
CPUs) with them. A probe signs a fresh user in every half second (can a new user get in?).

Reported per window: victim p50/p99/max (and send -> Sent, i.e. stored), p99 against the
quiet windows'; node RSS before / peak / after (sampled every 50 ms from /proc) and its
growth against attacker connections x max_outbound (+10%); node CPU, and the time its threads
waited for a CPU (a busy machine, not the node's own work); store commits and how long they
took; what the attackers sent and got back (RATE_LIMITED, SLOW_CONSUMER, TOO_LARGE, ...
errors, connections closed by the node, refused sign-ins); the node's own counters (/metrics).
Bars: victim p99 under attack within 3x the no-attack p99 (and no message later than
VICTIM_TIMEOUT); RSS growth under attack at most (peak attacker connections x max_outbound)
+ 10%.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import random
import re
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from chatd.auth import load_or_create_secret, make_token
from chatd.protocol import MAX_FRAME_SIZE, Connection, ErrorCode, Frame, ProtocolError, Role
from chatd.protocol import frames as F
from chatd.server.config import load_config
from chatd.store import NewMessage, direct_conv, open_store

from .common import ChatdProcess, RawClient, free_port, percentile, save

BODY = b"v" * 100  # victim and flood messages
BIG = b"B" * 60_000  # what the slow readers are sent
HISTORY_BODY = b"h" * 4096
HISTORY_MESSAGES = 400  # in each History loop's chat
VICTIM_TIMEOUT = 5.0  # a victim message not delivered within this counts as late (and as this)
SETTLE = 1.0  # seconds between phases (before RSS "before")
AFTER = 1.5  # seconds after an attack ends before RSS "after"
LATENCY_BAR = 3.0  # victim p99 under attack / baseline p99
MEMORY_SLACK = 1.10  # RSS growth <= connections x max_outbound x this
DISCONNECT = (EOFError, OSError, trio.BrokenResourceError, trio.ClosedResourceError,
              ProtocolError)
ATTACKS = ("flood", "slow", "junk")


def code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)


# ---- the attackers (another process) -------------------------------------------------------

class Attack:
    """What one attacker process shares between its tasks: how to sign in, and the counts."""

    def __init__(self, port: int, data_dir: str, params: dict[str, Any]) -> None:
        self.port = port
        self.secret = load_or_create_secret(data_dir)
        self.p = params
        self.counts: collections.Counter[str] = collections.Counter()
        self.open = 0
        self.peak = 0

    def opened(self) -> None:
        self.open += 1
        self.counts["connections_opened"] += 1
        self.peak = max(self.peak, self.open)

    def closed(self) -> None:
        self.open -= 1

    def tally(self, frame: Frame) -> None:
        if isinstance(frame, F.Error):
            self.counts[f"error_{code_name(frame.code)}"] += 1
        elif isinstance(frame, F.Sent):
            self.counts["sent_ok"] += 1
        elif isinstance(frame, F.Deliver):
            self.counts["delivered"] += 1
        elif isinstance(frame, F.HistoryPage):
            self.counts["history_pages"] += 1
            self.counts["history_items"] += len(frame.items)

    async def sign_in(self, user: str, device: str = "default",
                      synced: bool = True) -> RawClient | None:
        """A signed-in client (Synced, or only Welcome), or None (counted)."""
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        except OSError:
            self.counts["connect_failed"] += 1
            return None
        self.opened()
        c = RawClient(stream)
        try:
            with trio.fail_after(10):
                await stream.send_all(c.conn.send(F.Hello(
                    version=1, token=make_token(self.secret, user, None), device=device)))
                while True:
                    f = await c.next()
                    if isinstance(f, F.Error):
                        self.counts[f"signin_refused_{code_name(f.code)}"] += 1
                        break
                    if isinstance(f, F.Synced if synced else F.Welcome):
                        return c
        except (*DISCONNECT, trio.TooSlowError):
            self.counts["signin_failed"] += 1
        await self.close(c)
        return None

    async def close(self, c: RawClient) -> None:
        with trio.CancelScope(shield=True):
            await c.stream.aclose()
        self.closed()

    async def drain(self, c: RawClient, seconds: float) -> None:
        """Read what the node sent for up to `seconds` (counted); note whether it closed."""
        with trio.move_on_after(seconds):
            try:
                while True:
                    for f in await c.batch():
                        self.tally(f)
            except DISCONNECT:
                self.counts["closed_by_node"] += 1

    async def session(self, c: RawClient, end: float,
                      *tasks: Callable[[RawClient], Awaitable[None]]) -> None:
        """Run the tasks on one connection until `end`, the first of them returns, or the
        connection is lost (counted)."""
        lost = False

        async def guard(task: Callable[[RawClient], Awaitable[None]],
                        scope: trio.CancelScope) -> None:
            nonlocal lost
            try:
                await task(c)
            except DISCONNECT:
                lost = True
            scope.cancel()

        with trio.move_on_at(end):
            async with trio.open_nursery() as nursery:
                for task in tasks:
                    nursery.start_soon(guard, task, nursery.cancel_scope)
        if lost:
            self.counts["closed_by_node"] += 1

    async def sessions(self, end: float, first: RawClient | None,
                       sign_in: Callable[[], Awaitable[RawClient | None]],
                       *tasks: Callable[[RawClient], Awaitable[None]],
                       drain: float = 0.0) -> None:
        """Sessions one after the other until `end` (at most 1000): sign in again whenever
        the last one ended; read for `drain` seconds (counting) before closing each."""
        c = first
        for _ in range(1000):
            if trio.current_time() >= end:
                break
            if c is None:
                c = await sign_in()
                if c is None:
                    await trio.sleep(0.2)
                    continue
            await self.session(c, end, *tasks)
            if drain:
                await self.drain(c, drain)
            await self.close(c)
            c = None
        if c is not None:
            await self.close(c)


async def read_all(a: Attack, c: RawClient) -> None:
    """Read and count everything; acknowledge deliveries."""
    while True:
        upto = 0
        for f in await c.batch():
            a.tally(f)
            if isinstance(f, F.Deliver):
                upto = f.q
        if upto:
            await c.send(F.Ack(upto=upto))


async def flood(a: Attack, seconds: float, task_status: Any) -> None:
    """N accounts f0.. pipeline sends to each other, batches of 100, as fast as TCP lets them;
    they read and ack everything they get. Lost connections come back."""
    n = a.p["flooders"]
    clients = [await a.sign_in(f"f{i}") for i in range(n)]
    task_status.started()
    end = trio.current_time() + seconds

    async def one(i: int) -> None:
        run, sent = secrets.token_hex(3), [0]
        to = f"f{(i + 1) % n}"

        async def writer(c: RawClient) -> None:
            while True:
                k = sent[0]
                await c.send(*(F.Send(id=f"{run}-{k + j}", to=to, body=BODY)
                               for j in range(100)))
                sent[0] += 100
                a.counts["sends"] += 100

        await a.sessions(end, clients[i], lambda: a.sign_in(f"f{i}"),
                         functools.partial(read_all, a), writer)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)


async def slow(a: Attack, seconds: float, task_status: Any) -> None:
    """K devices of user `slow` that never read, sent 60 KB messages by `spam` at up to the
    send rate; H History loops. Each slow device / History loop holds its connection `hold`
    seconds, then reads for half a second (counting what it got), and signs in again."""
    k_devices, loops, hold = a.p["slow_readers"], a.p["history_loops"], a.p["hold"]
    spam = await a.sign_in("spam")
    devices = [await a.sign_in("slow", f"d{k}", synced=False) for k in range(k_devices)]
    hist = [await a.sign_in(f"h{h}") for h in range(loops)]
    task_status.started()
    end = trio.current_time() + seconds
    run, sent = secrets.token_hex(3), [0]

    async def big_sender(c: RawClient) -> None:
        interval = 1 / a.p["big_rate"]
        next_at = trio.current_time()
        while True:
            await c.send(F.Send(id=f"{run}-{sent[0]}", to="slow", body=BIG))
            sent[0] += 1
            a.counts["sends"] += 1
            next_at = max(next_at + interval, trio.current_time() - 1)
            await trio.sleep_until(next_at)

    async def never_read(c: RawClient) -> None:
        await trio.sleep(hold)

    def history_requests(h: int) -> Callable[[RawClient], Awaitable[None]]:
        conv = direct_conv(f"h{h}", "hpeer")
        rid = [0]

        async def requests(c: RawClient) -> None:
            stop = trio.current_time() + hold
            while trio.current_time() < stop:  # 10 every 20 ms, never reading
                await c.send(*(F.History(rid=rid[0] + j + 1, conv=conv, limit=200)
                               for j in range(10)))
                rid[0] += 10
                a.counts["history_requests"] += 10
                await trio.sleep(0.02)

        return requests

    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(
            a.sessions, end, spam, lambda: a.sign_in("spam"), functools.partial(read_all, a),
            big_sender))
        for k in range(k_devices):
            nursery.start_soon(functools.partial(
                a.sessions, end, devices[k],
                functools.partial(a.sign_in, "slow", f"d{k}", synced=False), never_read,
                drain=0.5))
        for h in range(loops):
            nursery.start_soon(functools.partial(
                a.sessions, end, hist[h], functools.partial(a.sign_in, f"h{h}"),
                history_requests(h), drain=0.5))


async def junk(a: Attack, seconds: float, task_status: Any) -> None:
    """J loops: connect, send a 1 MiB-1 length prefix and junk (or, every other time, a small
    frame of junk), read the answer, close, pause, again. S silent connections (connect, send
    nothing) opened evenly over the first third of the phase and held to its end."""
    loops, silent, pause = a.p["junk"], a.p["silent"], a.p["junk_pause"]
    held: list[trio.SocketStream] = []
    task_status.started()
    start = trio.current_time()
    end = start + seconds

    async def answer(stream: trio.SocketStream, seconds: float, who: str) -> None:
        """Read the node's answer before sign-in until it closes (counted as who_...)."""
        conn = Connection(Role.CLIENT)
        with trio.move_on_after(seconds) as scope:
            try:
                while True:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    while isinstance(ev := conn.next_event(), Frame):
                        if isinstance(ev, F.Error):
                            a.counts[f"{who}_error_{code_name(ev.code)}"] += 1
                    if not data:
                        a.counts[f"{who}_closed_by_node"] += 1
                        return
            except DISCONNECT:
                a.counts[f"{who}_reset_by_node"] += 1
        if scope.cancelled_caught:
            a.counts[f"{who}_no_answer"] += 1

    async def loop(j: int) -> None:
        await trio.sleep(random.uniform(0, pause))
        for cycle in range(10_000):
            if trio.current_time() >= end:
                break
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", a.port)
            except OSError:
                a.counts["connect_failed"] += 1
                await trio.sleep(pause)
                continue
            a.opened()
            try:
                if cycle % 2 == 0:
                    data = (MAX_FRAME_SIZE - 1).to_bytes(4, "big") + os.urandom(4092)
                    a.counts["junk_sent_oversized_prefix"] += 1
                else:
                    data = (200).to_bytes(4, "big") + os.urandom(200)
                    a.counts["junk_sent_junk_frame"] += 1
                await stream.send_all(data)
                await answer(stream, 2.0, "junk")
            except DISCONNECT:
                a.counts["junk_reset_by_node"] += 1
            finally:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
                a.closed()
            await trio.sleep(pause)

    async def silent_ramp() -> None:
        ramp = seconds / 3
        for i in range(silent):
            await trio.sleep_until(start + ramp * i / max(silent, 1))
            try:
                held.append(await trio.open_tcp_stream("127.0.0.1", a.port))
                a.opened()
                a.counts["silent_opened"] += 1
            except OSError:
                a.counts["connect_failed"] += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(silent_ramp)
        for j in range(loops):
            nursery.start_soon(loop, j)
    # what the silent ones got (refused when the cap was full; else no answer: still waiting)
    async with trio.open_nursery() as nursery:
        for s in held:
            nursery.start_soon(answer, s, 0.3, "silent")
    for s in held:
        await s.aclose()
        a.closed()


async def attacker(kind: str, port: int, data_dir: str, seconds: float,
                   params: dict[str, Any]) -> None:
    a = Attack(port, data_dir, params)
    started = time.monotonic()
    with trio.move_on_after(seconds + 60):  # stops by itself, whatever happens to the parent
        async with trio.open_nursery() as nursery:
            await nursery.start({"flood": flood, "slow": slow, "junk": junk}[kind], a, seconds)
            print(json.dumps({"ready": True, "connections": a.open,
                              "setup_s": round(time.monotonic() - started, 2)}), flush=True)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"done": True, "peak_connections": a.peak, "counts": dict(a.counts),
                      "cpu_s": round(ru.ru_utime + ru.ru_stime, 2)}), flush=True)


# ---- the victim, the probe and the orchestrator ---------------------------------------------

class Victim:
    def __init__(self, alice: RawClient, bob: RawClient) -> None:
        self.alice, self.bob = alice, bob
        self.waiting: dict[str, list[Any]] = {}  # client id -> [Event, delivered at]
        self.errors: collections.Counter[str] = collections.Counter()
        self.run = secrets.token_hex(4)
        self.n = 0
        self.sent_at: dict[str, float] = {}  # client id -> when alice read its Sent

    async def bob_reader(self) -> None:
        while True:
            frames = await self.bob.batch()
            t = time.perf_counter()
            upto = 0
            for f in frames:
                if isinstance(f, F.Deliver):
                    upto = max(upto, f.q)
                    slot = self.waiting.pop(f.id, None)
                    if slot is not None:
                        slot[1] = t
                        slot[0].set()
                elif isinstance(f, F.Error):
                    self.errors[code_name(f.code)] += 1
            if upto:
                await self.bob.send(F.Ack(upto=upto))

    async def alice_reader(self) -> None:
        while True:
            upto = 0
            frames = await self.alice.batch()
            t = time.perf_counter()
            for f in frames:
                if isinstance(f, F.Sent):
                    self.sent_at[f.id] = t
                elif isinstance(f, F.Receipt):
                    upto = max(upto, f.q)
                elif isinstance(f, F.Error):
                    self.errors[code_name(f.code)] += 1
            if upto:
                await self.alice.send(F.Ack(upto=upto))

    async def measure(self, seconds: float, rate: float, lat: list[float]) -> dict[str, Any]:
        """alice -> bob at `rate` msg/s, one in flight: send -> Deliver at bob (seconds,
        appended to lat)."""
        late = 0
        next_at = start = trio.current_time()
        end = next_at + seconds
        by_second: dict[int, list[float]] = collections.defaultdict(list)
        stored: list[float] = []  # send -> Sent at alice (stored), for what was delivered
        while trio.current_time() < end:
            self.n += 1
            cid = f"{self.run}-{self.n}"
            slot: list[Any] = [trio.Event(), 0.0]
            self.waiting[cid] = slot
            t0 = time.perf_counter()
            await self.alice.send(F.Send(id=cid, to="bob", body=BODY))
            with trio.move_on_after(VICTIM_TIMEOUT):
                await slot[0].wait()
            if slot[0].is_set():
                lat.append(slot[1] - t0)
                with trio.move_on_after(1):  # (the Sent may come a moment after the Deliver)
                    while cid not in self.sent_at:
                        await trio.sleep(0.001)
                if cid in self.sent_at:
                    stored.append(self.sent_at.pop(cid) - t0)
            else:
                late += 1
                lat.append(VICTIM_TIMEOUT)
                self.waiting.pop(cid, None)
            by_second[int(next_at - start)].append(lat[-1])
            next_at = max(next_at + 1 / rate, trio.current_time())
            await trio.sleep_until(next_at)
        lat.sort()
        stored.sort()
        self.sent_at.clear()
        ms = 1000
        return {"messages": len(lat), "late": late,
                "stored_p50_ms": round(percentile(stored, 50) * ms, 2),
                "p50_ms": round(percentile(lat, 50) * ms, 2),
                "p99_ms": round(percentile(lat, 99) * ms, 2),
                "max_ms": round(lat[-1] * ms, 2) if lat else None,
                "by_second": [{"s": k, "n": len(v), "p50_ms": round(sorted(v)[len(v) // 2] * ms, 1),
                               "max_ms": round(max(v) * ms, 1)} for k, v in by_second.items()]}


async def probe_sign_ins(node: ChatdProcess, end: float, out: collections.Counter[str],
                         times: list[float]) -> None:
    """A fresh sign-in (carol, to Synced) every half second until `end`."""
    while trio.current_time() < end:
        t0 = time.perf_counter()
        try:
            with trio.fail_after(3):
                c = await RawClient.connect(node.port, node.token("carol"), "probe")
            times.append(time.perf_counter() - t0)
            out["ok"] += 1
            await c.stream.aclose()
        except RuntimeError as exc:  # an Error frame: "refused: Error(code=7, ...)"
            m = re.search(r"code=(\d+)", str(exc))
            out[f"refused_{code_name(int(m.group(1))) if m else '?'}"] += 1
        except (*DISCONNECT, trio.TooSlowError) as exc:
            out[f"failed_{type(exc).__name__}"] += 1
        await trio.sleep_until(min(end, trio.current_time() + 0.5))


def runqueue_seconds(pids: list[int]) -> float:
    """Time the threads of these processes spent runnable but waiting for a CPU."""
    total = 0
    for pid in pids:
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / 1e9


def cpu_pressure_seconds() -> float:
    """The machine's CPU pressure: time some task waited for a CPU (PSI), 0 if unknown."""
    try:
        with open("/proc/pressure/cpu") as f:
            return int(f.readline().rsplit("total=", 1)[1]) / 1e6
    except (OSError, IndexError, ValueError):
        return 0.0


def scrape(port: int) -> dict[str, float]:
    """The node's counters of refusals (from its Prometheus /metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("chatd_slow_consumers_total", "chatd_rate_limited_total",
                            "chatd_connections_refused_total", "chatd_messages_received_total",
                            "chatd_background_failures_total",
                            "chatd_store_commit_seconds_sum",
                            "chatd_store_commit_seconds_count",
                            "chatd_store_commit_seconds_bucket")):
            name, value = line.rsplit(" ", 1)
            out[name.replace("chatd_", "").replace("_total", "")] = float(value)
    return out


async def run_phases(node: ChatdProcess, metrics_port: int, cfg: Any, seconds: float,
                     quiet_seconds: float, rate: float, params: dict[str, Any],
                     attacks: tuple[str, ...] = ATTACKS, settle: float = SETTLE
                     ) -> dict[str, Any]:
    """The windows one after the other; the quiet ones (no attack) between the attacks are
    the reference: other load on the machine drifts over a run, so the no-attack figure is
    taken all along it, not only at its start."""
    samples: list[tuple[float, int]] = []  # (trio time, node RSS KiB)

    async def sample_rss() -> None:
        while True:
            samples.append((trio.current_time(), node.rss_kib()))
            await trio.sleep(0.05)

    async def follow(p: trio.Process, lines: list[dict[str, Any]], got: trio.Event) -> None:
        assert p.stdout is not None
        buf = b""
        async for chunk in p.stdout:
            buf += chunk
            *done, buf = buf.split(b"\n")
            for line in done:
                lines.append(json.loads(line))
                got.set()

    alice = await RawClient.connect(node.port, node.token("alice"))
    bob = await RawClient.connect(node.port, node.token("bob"))
    victim = Victim(alice, bob)
    windows: list[dict[str, Any]] = []
    quiet_lat: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(victim.bob_reader)
        nursery.start_soon(victim.alice_reader)
        nursery.start_soon(sample_rss)
        await victim.measure(1.0, rate, [])  # warm up
        names = [x for i, kind in enumerate(attacks) for x in (f"quiet{i + 1}", kind)]
        for name in [*names, f"quiet{len(attacks) + 1}"]:
            kind = name if name in ATTACKS else None
            proc: trio.Process | None = None
            attack: dict[str, Any] = {}
            lines: list[dict[str, Any]] = []
            got_line = trio.Event()
            if kind is not None:  # started now: it imports while the node settles, then waits
                proc = await trio.lowlevel.open_process(
                    [sys.executable, "-m", "bench.abuse", "--attacker", kind, str(node.port),
                     node.data_dir, str(seconds), json.dumps(params)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                nursery.start_soon(follow, proc, lines, got_line)
            await trio.sleep(settle)
            counters0 = await trio.to_thread.run_sync(scrape, metrics_port)
            rss0, ta = node.rss_kib(), trio.current_time()
            if proc is not None:
                assert proc.stdin is not None
                await proc.stdin.send_all(b"go\n")
                with trio.move_on_after(60):
                    await got_line.wait()
                if not lines:
                    proc.kill()
                    raise RuntimeError(f"attacker {kind} did not start")
                attack["setup"] = lines[0]
            t0, cpu0, started_at = trio.current_time(), node.cpu_seconds(), time.time()
            wait0, psi0 = runqueue_seconds(node.pids()), cpu_pressure_seconds()
            probes: collections.Counter[str] = collections.Counter()
            sign_in_s: list[float] = []
            lat_raw: list[float] = []
            length = seconds if kind else quiet_seconds
            async with trio.open_nursery() as probing:
                probing.start_soon(probe_sign_ins, node, t0 + length, probes, sign_in_s)
                lat = await victim.measure(length, rate, lat_raw)
                probing.cancel_scope.cancel()
            elapsed = trio.current_time() - t0
            cpu = (node.cpu_seconds() - cpu0) / elapsed
            runq = (runqueue_seconds(node.pids()) - wait0) / elapsed
            psi = (cpu_pressure_seconds() - psi0) / elapsed
            if kind is None:
                quiet_lat += lat_raw
            if proc is not None:
                with trio.move_on_after(seconds + 30):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                await trio.sleep(0.1)  # the last line read
                done = [x for x in lines if x.get("done")]
                attack.update(done[0] if done else {"done": False})
            if kind is not None:
                await trio.sleep(settle * AFTER / SETTLE)
            rss1 = node.rss_kib()
            peak = max([kib for t, kib in samples if ta <= t] + [rss0, rss1])
            counters1 = await trio.to_thread.run_sync(scrape, metrics_port)
            node_counts = {k: round(v - counters0.get(k, 0)) for k, v in counters1.items()
                           if v != counters0.get(k, 0) and not k.startswith("store_commit")}
            # batches by duration: how long the longest ones held everyone behind them
            commit_le = {k.split('le="')[1].rstrip('"}'): round(v - counters0.get(k, 0))
                         for k, v in counters1.items() if k.startswith("store_commit_seconds_b")}
            commits = counters1.get("store_commit_seconds_count", 0) \
                - counters0.get("store_commit_seconds_count", 0)
            commit_s = counters1.get("store_commit_seconds_sum", 0) \
                - counters0.get("store_commit_seconds_sum", 0)
            conns = attack.get("peak_connections", 0)
            budget = conns * cfg.max_outbound // 1024
            sign_in_s.sort()
            w = {
                "window": name, "attack_kind": kind, "started_at": round(started_at, 3),
                "victim": lat,
                "victim_errors": dict(victim.errors), "node_cpu": round(cpu, 2),
                # a CPU's worth of time the node's threads waited for one (machine busy)
                "node_runqueue_wait": round(runq, 2),
                "machine_cpu_pressure": round(psi, 2),  # share of time something waited
                "store_commits": round(commits),
                "store_commit_mean_ms": round(commit_s / commits * 1000, 1) if commits else None,
                "store_commits_by_le_seconds": commit_le,
                "rss_before_kib": rss0, "rss_peak_kib": peak, "rss_after_kib": rss1,
                "rss_growth_kib": peak - rss0,
                "attacker_connections": conns,
                "budget_kib": budget, "budget_bound_kib": round(budget * MEMORY_SLACK),
                "growth_kib_per_attacker_connection": round((peak - rss0) / conns, 1)
                if conns else None,
                "attack": attack, "node_counters": node_counts,
                "sign_in_probe": {**probes, "p50_ms": round(percentile(sign_in_s, 50) * 1000, 1)
                                  if sign_in_s else None},
            }
            victim.errors.clear()
            windows.append(w)
            print(f"  {name:7} victim p50 {lat['p50_ms']:7.2f} ms p99 {lat['p99_ms']:7.2f} ms"
                  f" | RSS {rss0 / 1024:6.1f} -> peak {peak / 1024:6.1f} MiB | node CPU"
                  f" {cpu:.0%}, waiting for a CPU {runq:.0%} | commits {round(commits)}"
                  + (f" mean {commit_s / commits * 1000:.1f} ms" if commits else "")
                  + (f" | attackers {conns}" if kind else ""), flush=True)
        nursery.cancel_scope.cancel()
    for c in (alice, bob):
        await c.stream.aclose()
    quiet_lat.sort()
    ms = 1000
    quiet = {"messages": len(quiet_lat), "p50_ms": round(percentile(quiet_lat, 50) * ms, 2),
             "p99_ms": round(percentile(quiet_lat, 99) * ms, 2)}
    base = quiet["p99_ms"]
    for i, w in enumerate(windows):
        w["p99_vs_quiet"] = round(w["victim"]["p99_ms"] / base, 2) if base else None
        if w["attack_kind"]:
            before = windows[i - 1]["victim"]["p99_ms"]
            w["p99_vs_quiet_before"] = round(w["victim"]["p99_ms"] / before, 2) if before \
                else None
            w["latency_bar_met"] = w["p99_vs_quiet"] is not None \
                and w["p99_vs_quiet"] <= LATENCY_BAR and not w["victim"]["late"]
            w["memory_bar_met"] = w["rss_growth_kib"] <= w["budget_bound_kib"]
    return {"quiet": quiet, "windows": windows}


async def prefill(url: str, users: list[str], loops: int) -> None:
    """Register everyone; give each History loop a chat of 4 KB messages to page through."""
    async with open_store(url) as store:
        for u in users:
            await store.add_user(u)
        ts = int(time.time() * 1000)
        for h in range(loops):
            msgs = [NewMessage(sender=f"h{h}", device="default", client_id=f"p{i}",
                               conv=direct_conv(f"h{h}", "hpeer"), recipients=("hpeer",),
                               body=HISTORY_BODY, ts=ts) for i in range(HISTORY_MESSAGES)]
            for i in range(0, len(msgs), 100):
                await store.append_messages(msgs[i:i + 100])


def run(seconds: float = 6, quiet_seconds: float = 3, rate: float = 50, flooders: int = 8,
        slow_readers: int = 8, history_loops: int = 2, junk: int = 300, silent: int = 1100,
        hold: float = 3.0, big_rate: float = 100, junk_pause: float = 0.5,
        attacks: tuple[str, ...] = ATTACKS, settle: float = SETTLE) -> dict[str, Any]:
    params = {"flooders": flooders, "slow_readers": slow_readers,
              "history_loops": history_loops, "junk": junk, "silent": silent, "hold": hold,
              "big_rate": big_rate, "junk_pause": junk_pause}
    users = ["alice", "bob", "carol", "spam", "slow", "hpeer",
             *(f"f{i}" for i in range(flooders)), *(f"h{h}" for h in range(history_loops))]
    cfg = load_config(None, {}, dict(os.environ))  # the node's defaults (and CHATD_* if set)
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite://{os.path.abspath(tmp)}/chatd.db"
        load_or_create_secret(tmp)
        trio.run(prefill, url, users, history_loops)
        metrics_port = free_port()
        node = ChatdProcess(tmp, [], store=url, bench_limits=False,
                            extra=("--metrics-port", str(metrics_port)))
        try:
            result = trio.run(run_phases, node, metrics_port, cfg, seconds, quiet_seconds,
                              rate, params, attacks, settle)
            alive = node.proc.poll() is None
        finally:
            node.stop()
    limits = {k: getattr(cfg, k) for k in (
        "max_outbound", "max_queue", "max_unauthenticated", "send_rate", "send_burst",
        "request_rate", "request_burst", "auth_timeout")}
    attacked = [w for w in result["windows"] if w["attack_kind"]]
    return {"seconds": seconds, "quiet_seconds": quiet_seconds, "victim_rate": rate,
            "params": params, "limits": limits, "node_alive_at_end": alive, **result,
            "latency_bar_met": all(w["latency_bar_met"] for w in attacked),
            "memory_bar_met": all(w["memory_bar_met"] for w in attacked),
            "wall_seconds": round(time.monotonic() - t_start, 1)}


def _fmt_counts(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(d.items())) or "-"


def print_table(result: dict[str, Any]) -> None:
    q = result["quiet"]
    print("\nCPU: the node's use of a core; wait: a core's worth of time its threads waited for"
          " one (the machine busy with others)")
    print(f"\nno attack (quiet windows pooled, {q['messages']} msgs): p50 {q['p50_ms']} ms,"
          f" p99 {q['p99_ms']} ms")
    print(f"{'window':7} | {'p50 ms':>7} {'p99 ms':>8} {'max ms':>8} {'xquiet':>6} |"
          f" {'RSS MiB':>7} {'peak':>6} {'after':>6} {'growth':>6} | {'conns':>5}"
          f" {'bound MiB':>9} | {'CPU':>4} {'wait':>4} | sign-ins")
    for w in result["windows"]:
        v = w["victim"]
        probe = w["sign_in_probe"]
        tries = sum(n for k, n in probe.items() if k != "p50_ms")
        bound = f"{w['budget_bound_kib'] / 1024:9.1f}" if w["attack_kind"] else f"{'':9}"
        conns = f"{w['attacker_connections']:5}" if w["attack_kind"] else f"{'':5}"
        print(f"{w['window']:7} | {v['p50_ms']:7.2f} {v['p99_ms']:8.2f} {v['max_ms']:8.2f}"
              f" {w['p99_vs_quiet']:6.2f} | {w['rss_before_kib'] / 1024:7.1f}"
              f" {w['rss_peak_kib'] / 1024:6.1f} {w['rss_after_kib'] / 1024:6.1f}"
              f" {w['rss_growth_kib'] / 1024:+6.1f} | {conns} {bound} | {w['node_cpu']:4.0%}"
              f" {w['node_runqueue_wait']:4.0%} |"
              f" {probe.get('ok', 0)}/{tries} ok"
              + (f" p50 {probe['p50_ms']} ms" if probe.get("p50_ms") is not None else ""))
    for w in result["windows"]:
        if w["attack_kind"]:
            print(f"  {w['window']}: attackers ({w['attack'].get('cpu_s')} s of CPU) got"
                  f" {_fmt_counts(w['attack'].get('counts', {}))}")
            print(f"  {w['window']}: node counted {_fmt_counts(w['node_counters'])}")
        refused = {k: n for k, n in w["sign_in_probe"].items() if k not in ("ok", "p50_ms")}
        if refused:
            print(f"  {w['window']}: fresh sign-ins refused or failed: {_fmt_counts(refused)}")
        if w["victim"]["late"] or w["victim_errors"]:
            print(f"  {w['window']}: victim late {w['victim']['late']}, errors"
                  f" {w['victim_errors']}")


def main(args: Any) -> None:
    print(f"abuse: a victim pair at {args.rate:g} msg/s; attacks of {args.seconds:g}s between"
          f" quiet windows of {args.seconds / 2:g}s; the node with its default limits")
    result = run(seconds=args.seconds, quiet_seconds=args.seconds / 2, rate=args.rate,
                 flooders=args.flooders, slow_readers=args.slow_readers,
                 history_loops=args.history_loops, junk=args.junk, silent=args.silent,
                 attacks=tuple(args.attacks.split(",")))
    print_table(result)
    print(f"saved {save('abuse', result)}")
    attacks = [w for w in result["windows"] if w["attack_kind"]]
    lat = ", ".join(f"{w['window']} {w['p99_vs_quiet']}x" for w in attacks)
    mem = ", ".join(f"{w['window']} {w['rss_growth_kib'] / 1024:.1f} of"
                    f" {w['budget_bound_kib'] / 1024:.0f} MiB" for w in attacks)
    print(f"bars: victim p99 under attack <= {LATENCY_BAR:g}x no attack:"
          f" {'MET' if result['latency_bar_met'] else 'NOT MET'} ({lat});"
          f" RSS growth <= connections x max_outbound + 10%:"
          f" {'MET' if result['memory_bar_met'] else 'NOT MET'} ({mem});"
          f" node alive at the end: {result['node_alive_at_end']}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--attacker"]:
        kind, port, data_dir, secs, params = sys.argv[2:7]
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        sys.stdin.readline()  # "go" (imports done while the node settles)
        trio.run(attacker, kind, int(port), data_dir, float(secs), json.loads(params))
