"""chatd against ejabberd and against the bare trio relay, same shapes, same run, back to back.

One load client (this process) per system: P sender/receiver pairs, each sender keeping up to
W messages in flight. chatd and the relay are driven through bench.common.RawClient, ejabberd
through bench.xmpp.XmppClient (the same interface over raw XMPP). Per message:

- chatd: Send -> SENT; the receiver acknowledges once per read (Ack upto) -> DELIVERED
  receipt back at the sender, which acknowledges it (as bench throughput does);
- relay: Send -> Deliver; the receiver echoes each message back (the relay has no receipts);
- ejabberd: <message> -> the receiver answers each with a XEP-0184 <received/> message.

A message completes (its window slot frees) when its receipt reaches the sender. Latency is
send -> delivered at the receiving device (both ends are this process: one clock); the
round trip to the receipt is reported too. Server CPU per message is the CPU (user + system,
/proc/<pid>/stat) of every server process (chatd's supervisor and workers, ejabberd's
beam.smp and helpers, the relay) over the measured phase, divided by the messages completed.

Shapes: fixed message counts (50 pairs x 2,000 x W16, 200 x 500 x W4, 10 x 1,000 x W1), then
paced rates (50 pairs, each at rate/50 msg/s, W16) for a fixed time: 1,000 msg/s and half of
chatd's peak at 50 x 16 in this run. Each system gets a fresh server for each shape.

`--profile`: chatd alone at paced rates and at peak, with /proc CPU per thread, context
switches, store round trips and commits per message (counted in the server by a
sitecustomize hook, no chatd change) and py-spy samples of every worker (docs/PROFILE.md).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import pathlib
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Final

import trio

from chatd.protocol import frames as F

from .common import RawClient, percentile, save
from .throughput import chatd_process, relay_process
from .xmpp import EjabberdProcess, XmppClient, XmppError

BODY: Final = b"m" * 100
SYSTEMS: Final = ("relay", "ejabberd", "chatd")
PACED_PAIRS: Final = 50
PACED_WINDOW: Final = 16


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    pairs: int
    window: int
    count: int | None = None  # messages per sender (None: paced for `seconds`)
    rate: float | None = None  # msg/s over all pairs (None: as fast as the window allows)
    seconds: float = 0.0


FULL: Final = (Shape("50x2000xW16", 50, 16, count=2000), Shape("200x500xW4", 200, 4, count=500),
               Shape("10x1000xW1", 10, 1, count=1000))
QUICK: Final = (Shape("5x100xW4", 5, 4, count=100), Shape("2x50xW1", 2, 1, count=50))


@dataclasses.dataclass
class System:
    name: str
    connect: Callable[[str], Awaitable[Any]]  # user -> RawClient or XmppClient
    cpu: Callable[[], float]  # server CPU seconds so far, every process
    pids: Callable[[], list[int]]
    receipts: bool  # chatd: DELIVERED receipts; else: the receiver echoes each message


@contextlib.contextmanager
def start(name: str, pairs: int, workers: int = 2, store: str = "sqlite://TMP/chatd.db",
          env: dict[str, str] | None = None) -> Iterator[System]:
    """A fresh server of that kind with users s0.., r0.. for `pairs` pairs."""
    if name == "relay":
        with relay_process() as (port, cpu):
            pid = _listener_pid(port)
            yield System(name, lambda u: RawClient.connect(port, u), cpu,
                         lambda: [pid] if pid else [], receipts=False)
    elif name == "ejabberd":
        node = EjabberdProcess()
        try:
            yield System(name, lambda u: XmppClient.connect(node.port, u), node.cpu_seconds,
                         node.pids, receipts=False)
        finally:
            node.stop()
    elif name == "chatd":
        with _env(env or {}), chatd_process(pairs, store, workers) as chatd:
            yield System(name, lambda u: RawClient.connect(chatd.port, chatd.token(u)),
                         chatd.cpu_seconds, chatd.pids, receipts=True)
    else:
        raise ValueError(f"unknown system {name!r}: one of {', '.join(SYSTEMS)}")


@contextlib.contextmanager
def _env(extra: dict[str, str]) -> Iterator[None]:
    """Environment for the child processes started inside (chatd_process has no env)."""
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _listener_pid(port: int) -> int | None:
    """The relay's pid (relay_process gives its CPU only): who listens on the port."""
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].split(":")[1], 16) == port:
                inode = parts[9]
    if inode is None:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return int(pid)
    return None


# -- the load loop ------------------------------------------------------------------------

@dataclasses.dataclass
class Tally:
    done: int = 0
    last_done: float = 0.0
    delivered: list[float] = dataclasses.field(default_factory=list)  # send -> receiving device
    round_trip: list[float] = dataclasses.field(default_factory=list)  # send -> receipt
    acks: int = 0  # Ack frames the clients sent (chatd)
    closed: list[str] = dataclasses.field(default_factory=list)  # the server ended them
    errors: list[str] = dataclasses.field(default_factory=list)  # Error frames received


async def drive(system: System, pairs: list[tuple[Any, Any, str, str]], shape: Shape,
                count: int | None, seconds: float, tally: Tally, drain: float = 30) -> None:
    """Run one phase: each sender sends `count` messages (or for `seconds` at the shape's
    rate), then waits up to `drain` s for the receipts of what is still in flight. A pair
    whose connection the server closes stops there (counted in tally.closed); the others go
    on."""
    sent_at: dict[str, float] = {}
    interval = shape.pairs / shape.rate if shape.rate else 0.0
    stop_at = trio.current_time() + seconds if count is None else float("inf")
    run = secrets.token_hex(4)

    async def pair(k: int, s: Any, r: Any, s_user: str, r_user: str) -> None:
        slots = trio.Semaphore(shape.window)
        by_seq: dict[int, str] = {}
        early: set[int] = set()  # DELIVERED before SENT (another worker was quicker)

        def complete(cid: str | None) -> None:
            start = sent_at.pop(cid, None) if cid is not None else None
            if start is not None:
                now = time.perf_counter()
                tally.round_trip.append(now - start)
                tally.done += 1
                tally.last_done = now
                slots.release()

        async def reader() -> None:  # the sender's connection
            while True:
                for f in await s.batch():
                    if isinstance(f, F.Sent):
                        if f.seq in early:
                            early.discard(f.seq)
                            complete(f.id)
                        else:
                            by_seq[f.seq] = f.id
                    elif isinstance(f, F.Receipt) and f.status == F.Status.DELIVERED:
                        for seq in f.seqs:
                            if seq in by_seq:
                                complete(by_seq.pop(seq))
                            else:
                                early.add(seq)
                        tally.acks += 1
                        await s.send(F.Ack(upto=f.q))
                    elif isinstance(f, F.Deliver) and not system.receipts:
                        complete(f.id)  # the echo, or the XEP-0184 receipt
                    elif isinstance(f, F.Error):
                        tally.errors.append(f"{s_user}: {f}"[:300])

        async def receiver() -> None:
            while True:
                frames = await r.batch()
                now = time.perf_counter()
                upto, echoes = 0, []
                for f in frames:
                    if isinstance(f, F.Deliver):
                        start = sent_at.get(f.id)
                        if start is not None:
                            tally.delivered.append(now - start)
                        upto = max(upto, f.q)
                        if not system.receipts:
                            echoes.append(F.Send(id=f.id, to=s_user, body=b""))
                    elif isinstance(f, F.Error):
                        tally.errors.append(f"{r_user}: {f}"[:300])
                if echoes:
                    await r.send(*echoes)
                elif upto and system.receipts:
                    tally.acks += 1
                    await r.send(F.Ack(upto=upto))

        async def until_closed(fn: Callable[[], Awaitable[None]], who: str,
                               scope: trio.CancelScope) -> None:
            try:
                await fn()
            except (EOFError, XmppError, trio.BrokenResourceError) as e:
                tally.closed.append(f"{who}: {type(e).__name__} {e}"[:300])
                scope.cancel()

        async with trio.open_nursery() as n:
            n.start_soon(until_closed, reader, s_user, n.cancel_scope)
            n.start_soon(until_closed, receiver, r_user, n.cancel_scope)
            next_at = trio.current_time() + (random.uniform(0, interval) if interval else 0)
            i = 0
            try:
                while (count is None or i < count) and trio.current_time() < stop_at:
                    await slots.acquire()
                    if interval:
                        next_at += interval
                        await trio.sleep_until(next_at)
                    i += 1
                    cid = f"{run}-{k}-{i}"
                    sent_at[cid] = time.perf_counter()
                    await s.send(F.Send(id=cid, to=r_user, body=BODY))
            except trio.BrokenResourceError as e:
                tally.closed.append(f"{s_user}: {e}"[:300])
                n.cancel_scope.cancel()
            with trio.move_on_after(drain):
                for _ in range(shape.window):
                    await slots.acquire()
            n.cancel_scope.cancel()

    async with trio.open_nursery() as n:
        for k, (s, r, s_user, r_user) in enumerate(pairs):
            n.start_soon(pair, k, s, r, s_user, r_user)


async def measure(system: System, shape: Shape,
                  between: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Connect the pairs, warm up, run the measured phase; figures of that phase.
    `between("start" | "end")` is called just outside the measured phase (profiling)."""
    pairs = []
    for i in range(shape.pairs):
        pairs.append((await system.connect(f"s{i}"), await system.connect(f"r{i}"),
                      f"s{i}", f"r{i}"))
    warm = Tally()
    if shape.count is not None:
        await drive(system, pairs, shape, max(1, shape.count // 10), 0, warm)
    else:
        await drive(system, pairs, shape, None, min(1.0, shape.seconds / 3), warm)
    await trio.sleep(0.2)  # let the warm-up's tail settle
    if between:
        between("start")
    tally = Tally()
    cpu0, me0 = system.cpu(), time.process_time()
    t0 = time.perf_counter()
    await drive(system, pairs, shape, shape.count, shape.seconds, tally)
    elapsed = max(tally.last_done - t0, 1e-9)
    cpu = system.cpu() - cpu0
    client_cpu = time.process_time() - me0
    if between:
        between("end")
    for s, r, _, _ in pairs:
        with contextlib.suppress(Exception):
            await s.stream.aclose()
            await r.stream.aclose()
    expected = shape.pairs * shape.count if shape.count is not None else None
    return figures(tally, elapsed, cpu, client_cpu, expected)


def figures(tally: Tally, elapsed: float, cpu: float, client_cpu: float,
            expected: int | None) -> dict[str, Any]:
    d, rt = sorted(tally.delivered), sorted(tally.round_trip)
    n = max(tally.done, 1)
    ms = 1000
    out: dict[str, Any] = {"messages": tally.done, "seconds": round(elapsed, 3),
           "msgs_per_s": round(tally.done / elapsed),
           "p50_ms": round(percentile(d, 50) * ms, 2), "p99_ms": round(percentile(d, 99) * ms, 2),
           "round_trip_p50_ms": round(percentile(rt, 50) * ms, 2),
           "round_trip_p99_ms": round(percentile(rt, 99) * ms, 2),
           "server_cpu_us_per_msg": round(cpu / n * 1e6, 1),
           "server_cores": round(cpu / elapsed, 2),
           "client_cpu_us_per_msg": round(client_cpu / n * 1e6, 1)}
    if tally.acks:
        out["client_acks_per_msg"] = round(tally.acks / n, 2)
    if tally.closed:
        out["connections_closed"] = tally.closed[:10]
    if tally.errors:
        out["error_frames"] = len(tally.errors)
        out["first_errors"] = tally.errors[:5]
    if expected is not None and tally.done != expected:
        out["incomplete"] = f"{tally.done} of {expected} completed"
    return out


# -- the comparison ------------------------------------------------------------------------

def load() -> dict[str, Any]:
    """How busy the box was: 1-minute load average, and the cores' busy share over 1 s."""
    def busy() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v) - v[3] - v[4], sum(v)

    b0, t0 = busy()
    time.sleep(1)
    b1, t1 = busy()
    with open("/proc/loadavg") as f:
        la = f.read().split()[:3]
    return {"loadavg": " ".join(la), "busy_share_1s": round((b1 - b0) / max(t1 - t0, 1), 2)}


def run_shape(shape: Shape, systems: tuple[str, ...], workers: int, store: str,
              quiet: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"shape": dataclasses.asdict(shape)}
    for name in systems:
        with start(name, shape.pairs, workers, store) as system:
            out[name] = trio.run(measure, system, shape)
        if not quiet:
            r = out[name]
            print(f"  {shape.name:14} {name:9} {r['msgs_per_s']:7,} msg/s  delivered p50"
                  f" {r['p50_ms']:8.2f} p99 {r['p99_ms']:8.2f} ms  round trip p99"
                  f" {r['round_trip_p99_ms']:8.2f} ms  server {r['server_cpu_us_per_msg']:6.1f}"
                  f" us/msg ({r['server_cores']} cores)"
                  + (f"  {r['incomplete']}" if "incomplete" in r else "")
                  + (f"  closed: {r['connections_closed'][0]}" if "connections_closed" in r
                     else ""),
                  flush=True)
    for other in ("ejabberd", "relay"):
        if "chatd" in out and other in out:
            c, o = out["chatd"], out[other]
            out[f"chatd_vs_{other}"] = {
                "msgs_per_s": round(c["msgs_per_s"] / max(o["msgs_per_s"], 1), 3),
                "p99": round(c["p99_ms"] / max(o["p99_ms"], 1e-3), 2),
                "cpu_per_msg": round(c["server_cpu_us_per_msg"]
                                     / max(o["server_cpu_us_per_msg"], 1e-3), 2)}
    return out


def run(quick: bool = False, systems: tuple[str, ...] = SYSTEMS, workers: int = 0,
        store: str = "sqlite://TMP/chatd.db", rates: tuple[str, ...] = ("1000", "half"),
        seconds: float = 5, repeat: int = 1, quiet: bool = False,
        progress: Callable[[dict[str, Any]], object] | None = None) -> dict[str, Any]:
    """Every shape on every system, back to back; then the paced rates ("half": half of
    chatd's peak at the first shape in this run). `progress` gets the result so far after
    each shape (a long run on a busy box keeps what it measured)."""
    shapes = QUICK if quick else FULL
    seconds = 1.0 if quick else seconds
    runs: list[dict[str, Any]] = []
    out = {"quick": quick, "systems": list(systems), "workers": workers, "store": store,
           "fsync": "on (SQLite synchronous=FULL, the default)", "repeat": repeat,
           "load_before": load(), "runs": runs}

    def add(r: dict[str, Any]) -> None:
        with open("/proc/loadavg") as f:
            r["loadavg_after"] = " ".join(f.read().split()[:3])
        runs.append(r)
        if progress is not None:
            progress(out)

    for rep in range(repeat):
        for shape in shapes:
            add({"repeat": rep, **run_shape(shape, systems, workers, store, quiet)})
        peak = next((r["chatd"]["msgs_per_s"] for r in runs
                     if r["repeat"] == rep and "chatd" in r), None)
        for rate in rates:
            if rate == "half":
                if peak is None:
                    continue
                value, label = peak / 2, f"half of chatd's peak ({peak // 2:,}/s)"
            else:
                value, label = float(rate), f"{float(rate):,.0f}/s"
            pairs = min(PACED_PAIRS, max(s.pairs for s in shapes))
            value = max(value, pairs * 0.5)
            shape = Shape(f"paced {value:,.0f}/s", pairs, PACED_WINDOW, rate=value,
                          seconds=seconds)
            add({"repeat": rep, "paced": label,
                 **run_shape(shape, systems, workers, store, quiet)})
    out["load_after"] = load()
    return out


def plot(result: dict[str, Any], path: pathlib.Path) -> pathlib.Path | None:
    """msg/s, delivery p99 and server CPU per message for every shape, one bar per system."""
    from .plots import _pyplot

    plt = _pyplot()
    if plt is None:
        return None
    runs = [r for r in result["runs"] if r["repeat"] == 0]
    names = [r["shape"]["name"] for r in runs]
    systems = result["systems"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    width = 0.8 / len(systems)
    for k, name in enumerate(systems):
        xs = [i + (k - (len(systems) - 1) / 2) * width for i in range(len(runs))]
        for ax, key in zip(axes, ("msgs_per_s", "p99_ms", "server_cpu_us_per_msg"), strict=True):
            ax.bar(xs, [r[name][key] if name in r else 0 for r in runs], width,
                   label=name, color={"relay": "C2", "ejabberd": "C1", "chatd": "C0"}[name])
    for ax, label in zip(axes, ("msg/s (send -> receipt at the sender)",
                                "p99 send -> receiving device (ms, log)",
                                "server CPU per message (us)"), strict=True):
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels(names, rotation=25, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    axes[1].set_yscale("log")
    workers = result["workers"] or "default"
    fig.suptitle(f"chatd ({workers} workers, {result['store'].split(':')[0]}, fsync on) vs"
                 " ejabberd 23.01 (online only) vs a bare trio relay, same run")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- the profile ---------------------------------------------------------------------------

# Loaded by every chatd process of a profile run (PYTHONPATH), it counts the store's round
# trips (operations awaited, by kind), batches (one COMMIT each) and writes to devices'
# TCP sockets (socket_writes) and writes them to
# $CHATD_PROFILE_COUNTS/<pid>.json every 0.1 s. No chatd file changes.
GIL_RATE: Final = 100  # samples/s of py-spy --gil (which thread holds the GIL)
SITECUSTOMIZE: Final = '''
import json, os, sys, threading, time
_dir = os.environ.get("CHATD_PROFILE_COUNTS")
if _dir:
    import collections, functools
    sys.path.insert(0, os.getcwd())  # the chatd that `python -m chatd` here would run
    from chatd.store import sqlite as _sq
    _counts = collections.Counter()
    import sqlite3
    class _Timed(sqlite3.Connection):  # the time of BEGIN IMMEDIATE (the lock) and COMMIT
        def execute(self, sql, *a):
            if sql == "COMMIT" or sql.startswith("BEGIN"):
                t = time.perf_counter()
                try:
                    return super().execute(sql, *a)  # BEGIN or COMMIT
                finally:
                    _counts["ms_" + sql.split()[0].lower()] += (time.perf_counter() - t) * 1e3
            return super().execute(sql, *a)
    _connect = sqlite3.connect
    def _timed_connect(*a, **k):
        k.setdefault("factory", _Timed)
        return _connect(*a, **k)
    sqlite3.connect = _timed_connect
    _run_batch = _sq.SqliteStore._run_batch
    def _counted_batch(self, batch):
        _counts["commits"] += 1
        _counts["ops"] += len(batch)
        resets = getattr(self, "resets", 0)
        t = time.perf_counter()
        try:
            return _run_batch(self, batch)
        finally:  # resets: another worker committed since, so the caches are read again
            _counts["cache_resets"] += getattr(self, "resets", 0) - resets
            _counts["ms_batch"] += (time.perf_counter() - t) * 1e3
    _sq.SqliteStore._run_batch = _counted_batch
    for _name in ("append_messages", "ack", "inbox", "cursor", "mark_read", "receipt_state",
                  "attach_device", "set_last_seen"):
        def _wrap(fn, name=_name):
            @functools.wraps(fn)
            async def counted(*a, **k):
                _counts["call." + name] += 1
                return await fn(*a, **k)
            return counted
        setattr(_sq.SqliteStore, _name, _wrap(getattr(_sq.SqliteStore, _name)))
    import inspect
    from chatd.server import transport as _tr
    for _name in ("send", "send_nowait"):  # writes to devices' sockets (TCP)
        _fn = getattr(_tr.StreamTransport, _name, None)
        if _fn is None:
            continue
        if inspect.iscoroutinefunction(_fn):
            async def _write(self, data, _fn=_fn):
                _counts["socket_writes"] += 1
                return await _fn(self, data)
        else:
            def _write(self, data, _fn=_fn):
                _counts["socket_writes"] += 1
                return _fn(self, data)
        setattr(_tr.StreamTransport, _name, _write)
    def _dump():
        path = os.path.join(_dir, f"{os.getpid()}.json")
        while True:
            time.sleep(0.1)
            with open(path + ".tmp", "w") as f:
                json.dump(dict(_counts), f)
            os.replace(path + ".tmp", path)
    threading.Thread(target=_dump, daemon=True).start()
'''


def _counts(d: str) -> collections.Counter[str]:
    total: collections.Counter[str] = collections.Counter()
    for name in os.listdir(d):
        if name.endswith(".json"):
            with contextlib.suppress(OSError, ValueError), open(os.path.join(d, name)) as f:
                total.update(json.load(f))
    return total


def _threads(pids: list[int]) -> dict[str, dict[str, float]]:
    """CPU seconds and context switches per thread (pid/tid: comm) of the given processes."""
    tck = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    raw = f.read()
                comm = raw[raw.index("(") + 1: raw.rindex(")")]
                fields = raw.rsplit(")", 1)[1].split()
                ctx = {}
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if "ctxt_switches" in line:
                            k, v = line.split(":")
                            ctx[k] = int(v)
                out[f"{pid}/{tid}:{comm}"] = {
                    "user": int(fields[11]) / tck, "system": int(fields[12]) / tck,
                    "voluntary": ctx.get("voluntary_ctxt_switches", 0),
                    "involuntary": ctx.get("nonvoluntary_ctxt_switches", 0)}
    return out


# where a py-spy sample's CPU goes: the first rule matching a frame, from the leaf up
CATEGORIES: Final = (
    ("store: COMMIT (fsync)", re.compile(r"_run_batch .*sqlite\.py:\d+\)$"), "COMMIT"),
    ("store: BEGIN IMMEDIATE (write lock)", re.compile(r"_run_batch .*sqlite\.py:\d+\)$"),
     "BEGIN"),
    ("store: SQL in the writer thread", re.compile(r"chatd/store/sqlite\.py"), "thread"),
    ("metrics (prometheus_client)", re.compile(r"prometheus_client/"), ""),
    ("protocol encode/decode", re.compile(r"chatd/protocol/|msgpack"), ""),
    ("store: queueing on the event loop", re.compile(r"chatd/store/"), ""),
    ("router / peers", re.compile(r"chatd/router/"), ""),
    ("presence", re.compile(r"chatd/server/presence\.py"), ""),
    ("session (reader, handlers, writer)", re.compile(r"chatd/server/session\.py"), ""),
    ("server: app / transport / workers", re.compile(r"chatd/server/"), ""),
    ("trio thread hand-off (to_thread)", re.compile(r"trio/_threads\.py|trio/_core/_thread_cache"),
     ""),
    ("trio socket I/O", re.compile(r"trio/_highlevel_socket|trio/_socket"), ""),
    ("trio scheduling / epoll", re.compile(r"trio/"), ""),
)


def _hook_line(marker: str) -> int:
    """The line of SITECUSTOMIZE (as written to sitecustomize.py) holding `marker`."""
    return next(i + 1 for i, t in enumerate(SITECUSTOMIZE.splitlines()) if marker in t)


def categorize(stack: list[str], lines: dict[str, set[int]]) -> str:
    leaf = stack[-1]
    if leaf.startswith("_Timed.execute") and f":{_hook_line('# BEGIN or COMMIT')})" in leaf:
        return "store: BEGIN IMMEDIATE + COMMIT (lock wait, fsync)"
    in_writer = any("_run_batch" in fr for fr in stack)
    for fr in reversed(stack):
        for name, pattern, flag in CATEGORIES:
            if not pattern.search(fr):
                continue
            if flag in ("COMMIT", "BEGIN"):
                line = int(fr.rsplit(":", 1)[1].rstrip(")"))
                if fr is not stack[-1] or line not in lines.get(flag, ()):
                    continue
            elif flag == "thread" and not in_writer:
                continue
            return name
    return "other (stdlib, threading, GC)"


def summarize_pyspy(raw: str, lines: dict[str, set[int]], top: int = 25) -> dict[str, Any]:
    """Samples by category, by thread, and the top functions (self and total) of a py-spy
    `--format raw` output (collapsed stacks: 'frame;frame;... count')."""
    cats: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    self_t: collections.Counter[str] = collections.Counter()
    total_t: collections.Counter[str] = collections.Counter()
    n = 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        stack_s, _, count_s = line.rpartition(" ")
        count = int(count_s)
        frames = stack_s.split(";")
        stack = [fr for fr in frames if not fr.startswith(("thread", "process"))]
        if not stack or any("sitecustomize.py" in fr and "_dump" in fr for fr in stack):
            continue  # (the profile's own counters)
        n += count
        threads["writer thread" if any("WorkerThread._work" in fr for fr in stack) else
                "event loop" if any("trio/_core/_run.py" in fr for fr in stack) else
                "other threads"] += count
        cats[categorize(stack, lines)] += count
        self_t[stack[-1]] += count
        for fr in set(re.sub(r":\d+\)$", ")", fr) for fr in stack):
            total_t[fr] += count

    def pct(c: collections.Counter[str], k: int | None = None) -> list[tuple[str, float]]:
        return [(key, round(100 * v / max(n, 1), 1)) for key, v in c.most_common(k)]

    return {"samples": n, "categories": pct(cats), "threads": pct(threads),
            "top_self": pct(self_t, top), "top_total": pct(total_t, top)}


def _sql_lines() -> dict[str, set[int]]:
    """Lines of chatd/store/sqlite.py that run COMMIT or BEGIN (to tell their samples)."""
    import chatd.store.sqlite as sq

    text = pathlib.Path(sq.__file__).read_text().splitlines()
    return {k: {i + 1 for i, t in enumerate(text) if f'execute("{k}' in t}
            for k in ("COMMIT", "BEGIN")}


def profile(rates: list[str], seconds: float = 8, workers: int = 0, pyspy_rate: int = 250,
            store: str = "sqlite://TMP/chatd.db", quiet: bool = False) -> dict[str, Any]:
    """chatd alone: peak at 50 x 16, then paced at each rate ("peak": that peak again,
    "half": half of it),
    a fresh node each; per phase /proc CPU per thread, store counts and py-spy samples."""
    pyspy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(pyspy):
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
    before = load()
    spy_seconds = int(seconds * 0.8) or 1
    phases: list[dict[str, Any]] = []
    peak: int | None = None
    for rate in ["peak-find", *rates]:
        if rate == "peak-find":
            shape = Shape("peak 50xW16", PACED_PAIRS, PACED_WINDOW, seconds=seconds)
        else:
            value = float(peak if rate == "peak" and peak else
                          peak / 2 if rate == "half" and peak else rate)
            shape = Shape(f"paced {value:,.0f}/s", PACED_PAIRS, PACED_WINDOW, rate=value,
                          seconds=seconds)
        with tempfile.TemporaryDirectory() as tmp:
            hook = os.path.join(tmp, "hook")
            counts = os.path.join(tmp, "counts")
            os.makedirs(hook)
            os.makedirs(counts)
            pathlib.Path(hook, "sitecustomize.py").write_text(SITECUSTOMIZE)
            pythonpath = os.pathsep.join(p for p in (hook, os.environ.get("PYTHONPATH")) if p)
            env = {"PYTHONPATH": pythonpath, "CHATD_PROFILE_COUNTS": counts}
            with start("chatd", shape.pairs, workers, store, env) as system:
                state: dict[str, Any] = {}

                def between(when: str, system: System = system, state: dict[str, Any] = state,
                            counts: str = counts, tmp: str = tmp) -> None:
                    pids = system.pids()
                    if when == "start":
                        state["threads"], state["counts"] = _threads(pids), _counts(counts)
                        # on-CPU samples of every thread; and (--gil) of the GIL's holder
                        state["spies"] = [subprocess.Popen(
                            [pyspy, "record", "--pid", str(p), "--rate", str(hz),
                             "--duration", str(spy_seconds), "--format", "raw",
                             "--threads", "--nonblocking", *extra, "--output",
                             os.path.join(tmp, f"{kind}-{p}.txt")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                            for p in pids[1:] or pids
                            for kind, hz, extra in (("spy", pyspy_rate, ()),
                                                      ("gil", GIL_RATE, ("--gil",)))]
                        return
                    time.sleep(0.3)  # the counters are written every 0.1 s
                    t1, c1 = _threads(pids), _counts(counts)
                    state["thread_delta"] = {
                        k: {f: round(v[f] - state["threads"].get(k, {}).get(f, 0), 3)
                            for f in v} for k, v in t1.items()}
                    state["count_delta"] = dict(c1 - state["counts"])

                res = trio.run(measure, system, shape, between)
                for spy in state["spies"]:
                    try:
                        spy.wait(seconds + 30)
                    except subprocess.TimeoutExpired:
                        spy.kill()
                raw, gil = ("".join(pathlib.Path(tmp, f).read_text() for f in os.listdir(tmp)
                                    if f.startswith(kind)) for kind in ("spy-", "gil-"))
                workers_sampled = len(state["spies"]) // 2
            n = max(res["messages"], 1)
            per_thread = sorted(state["thread_delta"].items(),
                                key=lambda kv: -(kv[1]["user"] + kv[1]["system"]))
            phase = {"phase": shape.name, "target_rate": shape.rate, **res,
                     "store_per_msg": {k: round(v / n, 3)
                                       for k, v in sorted(state["count_delta"].items())
                                       if not k.startswith("ms_")},
                     "ms_per_commit": {k[3:]: round(v / max(state["count_delta"].get(
                         "commits", 0), 1), 2) for k, v in state["count_delta"].items()
                         if k.startswith("ms_")},
                     "threads_us_per_msg": [
                         {"thread": k, "cpu_us": round((v["user"] + v["system"]) / n * 1e6, 1),
                          "system_share": round(v["system"] / max(v["user"] + v["system"],
                                                                  1e-9), 2),
                          "voluntary_switches_per_msg": round(v["voluntary"] / n, 2),
                          "involuntary_switches_per_msg": round(v["involuntary"] / n, 2)}
                         for k, v in per_thread if v["user"] + v["system"] > 0],
                     "pyspy": summarize_pyspy(raw, _sql_lines())}
            held = summarize_pyspy(gil, _sql_lines())
            phase["gil"] = {
                "held_share": round(held["samples"] / max(1, GIL_RATE * spy_seconds
                                                          * workers_sampled), 2),
                "threads": held["threads"], "categories": held["categories"][:8]}
            phases.append(phase)
            if rate == "peak-find":
                peak = res["msgs_per_s"]
            if not quiet:
                print(f"  {shape.name:14} {res['msgs_per_s']:7,} msg/s  p50 {res['p50_ms']:8.2f}"
                      f" p99 {res['p99_ms']:8.2f} ms  server {res['server_cpu_us_per_msg']:6.1f}"
                      f" us/msg  commits/msg {phase['store_per_msg'].get('commits', 0)}"
                      f"  store ops/msg {phase['store_per_msg'].get('ops', 0)}  socket writes/msg"
                      f" {phase['store_per_msg'].get('socket_writes', 0)}", flush=True)
    return {"workers": workers, "store": store, "seconds": seconds, "pyspy_rate_hz": pyspy_rate,
            "load_before": before, "load_after": load(), "phases": phases}


def profile_text(result: dict[str, Any]) -> str:
    """The small text summary kept in bench/results/profile.txt."""
    out = [f"chatd profile: {result['workers']} workers, {result['store']}, fsync on;"
           f" load before {result['load_before']}, after {result['load_after']}"]
    for p in result["phases"]:
        out.append("")
        out.append(f"== {p['phase']}: {p['msgs_per_s']:,} msg/s, delivered p50 {p['p50_ms']} ms"
                   f" p99 {p['p99_ms']} ms, server CPU {p['server_cpu_us_per_msg']} us/msg"
                   f" ({p['server_cores']} cores), load client {p['client_cpu_us_per_msg']}"
                   " us/msg")
        out.append("store per message: " + ", ".join(f"{k} {v}"
                                                     for k, v in p["store_per_msg"].items()))
        out.append("ms per commit (batch = its whole time in the writer thread): " + ", ".join(
            f"{k} {v}" for k, v in p["ms_per_commit"].items()))
        out.append("threads (CPU us/msg, system share, voluntary/involuntary switches per msg):")
        for t in p["threads_us_per_msg"]:
            out.append(f"  {t['thread']:40} {t['cpu_us']:7.1f}  sys {t['system_share']:.2f}"
                       f"  vol {t['voluntary_switches_per_msg']:5.2f}"
                       f"  invol {t['involuntary_switches_per_msg']:5.2f}")
        spy = p["pyspy"]
        out.append(f"py-spy ({spy['samples']} on-CPU samples, every worker):")
        out.append("  by category: " + "; ".join(f"{k} {v}%" for k, v in spy["categories"]))
        out.append("  by thread: " + "; ".join(f"{k} {v}%" for k, v in spy["threads"]))
        gil = p["gil"]
        out.append(f"GIL held {gil['held_share']:.0%} of the time per worker; by thread: "
                   + "; ".join(f"{k} {v}%" for k, v in gil["threads"]) + "; by category: "
                   + "; ".join(f"{k} {v}%" for k, v in gil["categories"]))
        out.append("  top self:")
        out += [f"    {v:5.1f}%  {k}" for k, v in spy["top_self"][:15]]
        out.append("  top total:")
        out += [f"    {v:5.1f}%  {k}" for k, v in spy["top_total"][:20]]
    return "\n".join(out) + "\n"


# -- the command ---------------------------------------------------------------------------

def add_parser(sub: Any) -> None:
    v = sub.add_parser("versus", help="chatd vs ejabberd vs a bare trio relay, same shapes and"
                       " run: msg/s, p50/p99, server CPU per message (--profile: chatd's"
                       " hot path at paced rates)")
    v.add_argument("--quick", action="store_true", help="small shapes, 1 s paced phases")
    v.add_argument("--systems", default=",".join(SYSTEMS))
    v.add_argument("--workers", type=int, default=0,
                   help="chatd worker processes (0: chatd's default, 1 on SQLite)")
    v.add_argument("--store", default="sqlite://TMP/chatd.db")
    v.add_argument("--rates", default="1000,half",
                   help="paced msg/s over 50 pairs ('half': half of chatd's peak;"
                   " with --profile 'peak': that peak)")
    v.add_argument("--seconds", type=float, default=5, help="each paced phase")
    v.add_argument("--repeat", type=int, default=1)
    v.add_argument("--profile", action="store_true")


def main(args: Any) -> None:
    if args.profile:
        result = profile(args.rates.split(","), args.seconds, args.workers, store=args.store)
        path = save("profile", result)
        text = profile_text(result)
        path.with_suffix(".txt").write_text(text)
        print(text)
        print(f"saved {path} and {path.with_suffix('.txt')}")
        return
    systems = tuple(s for s in args.systems.split(",") if s)
    name = "versus_quick" if args.quick else "versus"
    result = run(args.quick, systems, args.workers, args.store,
                 tuple(r for r in args.rates.split(",") if r), args.seconds, args.repeat,
                 progress=lambda partial: save(name, {**partial, "partial": True}))
    path = save(name, result)
    png = plot(result, path.with_suffix(".png"))
    print(f"load before {result['load_before']}, after {result['load_after']}")
    print(f"saved {path}" + (f" and {png}" if png else ""))


if __name__ == "__main__":
    sys.exit("run it as: python -m bench versus")
