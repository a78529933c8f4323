"""python -m bench chaos: a Jepsen-style checker. Real chatd processes, real SDK clients, faults
injected while they talk, and the whole history judged at the end (bench/chaos_check.py).

The workload (seeded, so a seed gives the same plan): USERS users, every fourth with two
devices; each user in one-to-one chats with two others and in a group of five; every chat
PERMANENT so its stored history can be read back. Every device sends at a bounded rate (a few
sends in flight at most), unique texts under explicit client ids, reads everything the SDK
gives it, and marks chats read now and then. Some devices go offline for a while (their
network is cut at the proxy, the app stays), one of them for most of the run, so its backlog
spans several inbox pages. Every device reaches its node through a TCP proxy
(bench/chaos_proxy.py), one port per device and node.

Faults (each selectable, with a count, spread over the run; --faults kind=n,...):
  kill-node          SIGKILL a whole node (supervisor and workers), restart it on its port
  kill-worker        SIGKILL one worker of a node (--workers 2+); the supervisor restarts it
  drop               close a device's connection at the proxy (both sides see a close)
  silent             stop forwarding a device's connection without closing it: heartbeats
                     and the idle timeout must notice
  app-restart        a new SDK client for a device (the old one stops, half the time with
                     Goodbye), re-sending its unacknowledged messages under their ids
  redis-restart      kill Redis, start it again empty (--nodes 2)
  failover           SIGKILL a node and keep it down while its users move to the other one
                     (--nodes 2)
  cassandra-restart  kill the Cassandra node and start it again (--store cassandra)

At the end every device comes back online, sends finish, the run waits (bounded) until every
acknowledged message and receipt has arrived, reads back every chat's stored history, stops
everything and judges the history: a JSON summary, a one-line verdict, exit 1 on any violation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import chatd_client as cc
import trio

from chatd.auth import load_or_create_secret, make_token
from chatd.protocol import ErrorCode
from chatd.store import direct_conv, open_store

from . import chaos_check
from .chaos_proxy import Proxy
from .common import children, free_port, save

FAULTS = ("kill-node", "kill-worker", "drop", "silent", "app-restart", "redis-restart",
          "failover", "cassandra-restart")
# what refuses one send for good (anything else: the client went away; the next one resends)
REFUSED = {ErrorCode.FORBIDDEN, ErrorCode.UNKNOWN_TARGET, ErrorCode.TOO_LARGE,
           ErrorCode.INVALID}


@dataclasses.dataclass
class Options:
    seed: int = 1
    duration: float = 20.0  # seconds of traffic
    rate: float = 40.0  # messages per second, all devices together
    users: int = 20
    faults: dict[str, int] = dataclasses.field(default_factory=dict)
    workers: int = 1
    nodes: int = 1
    store: str = "sqlite"  # "sqlite" or "cassandra"
    numbering: str = "paxos"  # Cassandra's numbering: "paxos" or "owner" (conversation owners)
    heartbeat: float = 1.0  # the nodes' --heartbeat: clients ping this often
    idle_timeout: float = 4.0  # the nodes' --idle-timeout
    offline: int = 3  # offline episodes (plus one device offline for most of the run)
    in_flight: int = 3  # sends in flight per device at most
    group_size: int = 5
    settle: float = 90.0  # seconds the end may wait for everything to arrive
    verbose: bool = True


class Restartable(Protocol):
    """A Redis server or Cassandra node the run may stop and start again."""

    def stop(self) -> None: ...

    def start(self) -> None: ...


def parse_faults(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, n = part.partition("=")
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}: one of {', '.join(FAULTS)}")
        out[kind] = int(n or 1)
    return out


# ---- processes -------------------------------------------------------------------------------

class Node:
    """`python -m chatd serve` on a fixed loopback port, started again on the same port after a
    kill. Its stderr goes to a log file (appended across restarts)."""

    def __init__(self, name: str, data_dir: Path, store_url: str, opts: Options,
                 extra: tuple[str, ...] = ()) -> None:
        self.name = name
        self.data_dir = data_dir
        self.store_url = store_url
        self.opts = opts
        self.extra = extra
        self.port = free_port()
        self.log = data_dir.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def _serving_lines(self) -> int:
        try:
            return self.log.read_text(errors="replace").count("chatd serving")
        except FileNotFoundError:
            return 0

    async def start(self, timeout: float = 60) -> None:
        before = self._serving_lines()
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chatd", "serve", "--data-dir", str(self.data_dir),
                 "--store", self.store_url, "--tcp-port", str(self.port), "--ws-port", "-1",
                 "--workers", str(self.opts.workers), "--heartbeat", str(self.opts.heartbeat),
                 "--idle-timeout", str(self.opts.idle_timeout), *self.extra],
                stdout=subprocess.DEVNULL, stderr=err)
        self.starts += 1
        with trio.fail_after(timeout):
            while self._serving_lines() <= before:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):"
                                       f" see {self.log}")
                await trio.sleep(0.05)

    def workers(self) -> list[int]:
        return children(self.proc.pid) if self.proc is not None else []

    async def kill(self) -> None:
        """SIGKILL the node (its workers die with their supervisor); wait until all are gone."""
        assert self.proc is not None
        workers = self.workers()
        self.proc.kill()
        await trio.to_thread.run_sync(self.proc.wait)
        with trio.fail_after(20):
            while any(_alive(w) for w in workers):
                await trio.sleep(0.02)

    async def kill_worker(self, rng: random.Random) -> int:
        """SIGKILL one worker; wait until the supervisor has started another."""
        with trio.fail_after(30):
            while len(pids := self.workers()) < self.opts.workers:
                await trio.sleep(0.05)  # (one is still being restarted)
        victim = rng.choice(sorted(pids))
        os.kill(victim, signal.SIGKILL)
        with trio.fail_after(60):
            while victim in (pids := self.workers()) or len(pids) < self.opts.workers:
                await trio.sleep(0.05)
        return victim

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class RedisProcess:
    """redis-server on a spare loopback port, no persistence: a restart starts empty."""

    def __init__(self, workdir: Path) -> None:
        if shutil.which("redis-server") is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            out = subprocess.run(["redis-cli", "-p", str(self.port), "ping"],
                                 capture_output=True, text=True)
            if out.stdout.strip() == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError("redis did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


# ---- the app on each device -----------------------------------------------------------------

@dataclasses.dataclass
class Chat:
    conv: str
    to: str | None
    group: str | None


class Device:
    """One app on one device: an SDK client (replaced on an app restart), what it has not got
    SENT for yet (its outbox, sent again by the next client under the same ids), a reader that
    records every event the SDK gives it, and a sender at a bounded rate."""

    def __init__(self, run: Run, user: str, name: str, urls: list[str], token: str) -> None:
        self.run = run
        self.user, self.name, self.key = user, name, f"{user}/{name}"
        self.urls, self.token = urls, token
        self.chats: list[Chat] = []
        self.inc = -1
        self.client: cc.Client | None = None
        self.nursery: trio.Nursery | None = None
        self.scope: trio.CancelScope | None = None
        self.outbox: dict[str, tuple[Chat, str]] = {}
        self.sent = 0
        self.newest: dict[str, int] = {}  # conv -> newest seq seen (to mark read)
        self.marked: dict[str, int] = {}
        self.offline = False

    def rec(self, **r: Any) -> None:
        self.run.records.append(r)

    async def life(self) -> None:
        """Clients one after another until the run stops them."""
        while not self.run.closing:
            self.inc += 1
            with trio.CancelScope() as scope:
                self.scope = scope
                try:
                    await self._client(self.inc)
                except Exception as exc:  # the client gave up (refused for good, say)
                    self.run.log(f"{self.key} client {self.inc} ended: {exc!r}")
            self.client = self.nursery = None
            await trio.sleep(0.2)

    async def _client(self, inc: int) -> None:
        client = cc.Client(self.urls, self.token, self.name, max_backoff=1.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read, client, inc)
            while True:
                try:
                    await nursery.start(client.run)
                    break
                except Exception:
                    await trio.sleep(0.5)  # nothing answers now (a node or its store is down)
                    client = cc.Client(self.urls, self.token, self.name, max_backoff=1.0)
                    nursery.start_soon(self._read, client, inc)
            self.client, self.nursery = client, nursery
            nursery.start_soon(self._mark_read, client)
            for cid in list(self.outbox):  # (again, in the order they were made)
                await nursery.start(self._send, client, cid)

    async def restart(self, goodbye: bool) -> None:
        """The app restarts: this client stops (abruptly, or saying Goodbye first)."""
        client, scope = self.client, self.scope
        if client is None or scope is None:
            return
        if goodbye:
            await client.goodbye()
        scope.cancel()

    async def _read(self, client: cc.Client, inc: int) -> None:
        rec = self.rec
        try:
            async for e in client.events():
                if isinstance(e, cc.Message):
                    rec(t="msg", dev=self.key, inc=inc, conv=e.conv, seq=e.seq, **{
                        "from": e.sender}, fdev=e.device, id=e.id, body=e.text,
                        ev=e.event is not None)
                    if e.seq > self.newest.get(e.conv, 0):
                        self.newest[e.conv] = e.seq
                elif isinstance(e, (cc.Delivered, cc.Read)):
                    rec(t="rcpt", dev=self.key, inc=inc, conv=e.conv, seqs=list(e.seqs),
                        by=e.by, kind="read" if isinstance(e, cc.Read) else "delivered")
                elif isinstance(e, cc.Connected):
                    rec(t="conn", dev=self.key, inc=inc, what="connected")
                elif isinstance(e, cc.Synced):
                    rec(t="conn", dev=self.key, inc=inc, what="synced")
                elif isinstance(e, cc.Disconnected):
                    rec(t="conn", dev=self.key, inc=inc, what="disconnected", why=e.reason)
                elif isinstance(e, cc.ServerError):
                    rec(t="error", dev=self.key, inc=inc, code=e.name, message=e.message)
        except Exception:
            pass  # the client stopped; the next one reads on

    async def _mark_read(self, client: cc.Client) -> None:
        rng = random.Random(f"{self.run.opts.seed}-read-{self.key}-{self.inc}")
        while True:
            await trio.sleep(rng.uniform(0.5, 2.0))
            for conv, seq in list(self.newest.items()):
                if seq > self.marked.get(conv, 0) and rng.random() < 0.5:
                    await client.mark_read(conv, seq)
                    self.marked[conv] = seq

    async def new_send(self, chat: Chat) -> None:
        if self.run.closing:
            return
        self.sent += 1
        cid = f"{self.user}.{self.name}.{self.sent}"
        body = f"chaos {self.run.opts.seed} {self.key} #{self.sent}"
        self.rec(t="send", dev=self.key, id=cid, conv=chat.conv, body=body)
        self.outbox[cid] = (chat, body)
        if self.nursery is not None and self.client is not None:
            await self.nursery.start(self._send, self.client, cid)

    async def _send(self, client: cc.Client, cid: str,
                    task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Send one message; started once send() was called: the caller starts the next
        only then, so a device's sends are called (and numbered) in the order made."""
        task_status.started()  # (send() runs up to its first checkpoint before the caller)
        if cid not in self.outbox:
            return
        chat, body = self.outbox[cid]
        try:
            ack = await client.send(chat.to, body, group=chat.group, id=cid)
        except cc.ChatdError as exc:
            if exc.code in REFUSED and cid in self.outbox:
                del self.outbox[cid]
                self.rec(t="fail", dev=self.key, id=cid, error=str(exc))
            return  # else this client stopped: the next one sends it again
        except (cc.ConnectionLost, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if self.outbox.pop(cid, None) is not None:
            self.rec(t="sent", dev=self.key, id=cid, conv=ack.conv, seq=ack.seq)

    async def sender(self, rate: float, until: float) -> None:
        rng = random.Random(f"{self.run.opts.seed}-send-{self.key}")
        while True:
            await trio.sleep(rng.expovariate(rate))
            if trio.current_time() >= until or self.run.closing:
                return
            chat = rng.choice(self.chats)
            if len(self.outbox) < self.run.opts.in_flight:
                await self.new_send(chat)


# ---- one run ---------------------------------------------------------------------------------

class Run:
    def __init__(self, opts: Options, workdir: Path, redis: Any = None,
                 cassandra: Any = None) -> None:
        self.opts = opts
        self.workdir = workdir
        self.redis = redis
        self.cassandra = cassandra
        self.records: list[dict[str, Any]] = []
        self.nodes: list[Node] = []
        self.devices: dict[str, Device] = {}
        self.closing = False
        self.rng = random.Random(opts.seed)
        self.t0 = 0.0
        self.proxy: Proxy | None = None
        self.notes: list[str] = []

    def log(self, text: str) -> None:
        line = f"[{trio.current_time() - self.t0:6.1f}s] {text}"
        self.notes.append(line)
        if self.opts.verbose:
            print(f"chaos {line}", file=sys.stderr, flush=True)

    def fault(self, kind: str, **details: Any) -> None:
        self.records.append({"t": "fault", "kind": kind,
                             "at": round(trio.current_time() - self.t0, 2), **details})
        self.log(f"fault {kind} {details or ''}")

    # ---- set-up ----------------------------------------------------------------------------

    def plan(self) -> tuple[dict[str, list[str]], list[tuple[str, str]], list[list[str]]]:
        users = [f"u{i:02d}" for i in range(self.opts.users)]
        devices = {u: ["a", "b"] if i % 4 == 0 else ["a"] for i, u in enumerate(users)}
        pairs: set[tuple[str, str]] = set()
        for _ in range(2):  # each user in (up to) two one-to-one chats
            order = self.rng.sample(users, len(users))
            for k in range(0, len(order) - 1, 2):
                a, b = sorted((order[k], order[k + 1]))
                pairs.add((a, b))
        order = self.rng.sample(users, len(users))
        size = self.opts.group_size
        groups = [order[k:k + size] for k in range(0, len(order), size)]
        if len(groups) > 1 and len(groups[-1]) < 3:
            groups[-2] += groups.pop()
        return devices, sorted(pairs), groups

    async def start_nodes(self, store_url: str, secret_dir: Path) -> None:
        extra: list[tuple[str, ...]] = [()]
        if self.opts.nodes > 1:
            assert self.redis is not None
            extra = [("--node-id", f"n{i}", "--redis", self.redis.url)
                     for i in range(self.opts.nodes)]
        for i in range(self.opts.nodes):
            node = Node(f"n{i}", secret_dir, store_url, self.opts, extra[i])
            await node.start()
            self.nodes.append(node)

    async def setup(self, nursery: trio.Nursery, store_url: str) -> None:
        data = self.workdir / "data"
        secret = load_or_create_secret(str(data))
        devices, pairs, groups = self.plan()
        async with open_store(store_url) as store:
            for u in devices:
                await store.add_user(u)
        await self.start_nodes(store_url, data)
        self.proxy = Proxy(nursery, silent_hold=self.opts.heartbeat * 2 + 15)
        for n, (u, names) in enumerate(devices.items()):
            for d in names:
                key = f"{u}/{d}"
                urls = []
                for k in range(len(self.nodes)):  # a home node, then the others
                    node = self.nodes[(n + k) % len(self.nodes)]
                    await self.proxy.add(f"{key}@{node.name}", node.port)
                    urls.append(self.proxy.url(f"{key}@{node.name}"))
                self.devices[key] = Device(self, u, d, urls, make_token(secret, u))
        for dev in self.devices.values():
            nursery.start_soon(dev.life)
        with trio.fail_after(60):
            while any(d.client is None for d in self.devices.values()):
                await trio.sleep(0.05)
        convs: dict[str, list[str]] = {}
        for a, b in pairs:
            conv = direct_conv(a, b)
            convs[conv] = [a, b]
            chat_a, chat_b = Chat(conv, b, None), Chat(conv, a, None)
            for d in devices[a]:
                self.devices[f"{a}/{d}"].chats.append(chat_a)
            for d in devices[b]:
                self.devices[f"{b}/{d}"].chats.append(chat_b)
            await self._client(f"{a}/a").set_mode(conv, cc.Mode.PERMANENT)
        for k, members in enumerate(groups):
            creator = self._client(f"{members[0]}/a")
            g = await creator.create_group(f"group {k}", members[1:])
            conv = f"g:{g.group}"
            convs[conv] = list(members)
            for u in members:
                for d in devices[u]:
                    self.devices[f"{u}/{d}"].chats.append(Chat(conv, None, g.group))
            await creator.set_mode(conv, cc.Mode.PERMANENT)
        self.records.append({"t": "setup", "devices": devices, "convs": convs,
                             "options": dataclasses.asdict(self.opts)})
        self.log(f"{len(self.devices)} devices of {len(devices)} users, {len(pairs)} one-to-one"
                 f" chats, {len(groups)} groups, {len(self.nodes)} node(s) with"
                 f" {self.opts.workers} worker(s) each")

    def _client(self, key: str) -> cc.Client:
        client = self.devices[key].client
        assert client is not None
        return client

    async def _ready_client(self, key: str) -> cc.Client:
        while self.devices[key].client is None:  # (between two clients)
            await trio.sleep(0.05)
        return self._client(key)

    # ---- faults ----------------------------------------------------------------------------

    def schedule(self) -> list[tuple[float, str]]:
        kinds = [k for k, n in self.opts.faults.items() for _ in range(n)]
        self.rng.shuffle(kinds)
        d = self.opts.duration
        start, end = 0.1 * d, 0.85 * d
        step = (end - start) / max(len(kinds), 1)
        return [(start + i * step + self.rng.uniform(0, step * 0.5), k)
                for i, k in enumerate(kinds)]

    async def nemesis(self) -> None:
        for at, kind in self.schedule():
            await trio.sleep_until(self.t0 + at)
            await self.inject(kind)

    async def inject(self, kind: str) -> None:
        rng, proxy = self.rng, self.proxy
        assert proxy is not None
        if kind in ("kill-node", "failover"):
            node = rng.choice(self.nodes)
            await node.kill()
            down = rng.uniform(3, 6) if kind == "failover" else rng.uniform(0.1, 1.5)
            self.fault(kind, node=node.name, down_s=round(down, 1))
            await trio.sleep(down)
            await node.start()
        elif kind == "kill-worker":
            node = rng.choice(self.nodes)
            pid = await node.kill_worker(rng)
            self.fault(kind, node=node.name, pid=pid)
        elif kind in ("drop", "silent"):
            keys = sorted(self.devices)
            with trio.move_on_after(15):  # (right after a node kill, every device may be away)
                while True:
                    for key in rng.sample(keys, len(keys)):  # one with a connection now
                        routes = [r for r in proxy.routes if r.startswith(f"{key}@")]
                        if any(proxy.links(r) for r in routes):
                            n = sum(proxy.drop(r, silent=kind == "silent") for r in routes)
                            self.fault(kind, dev=key, connections=n)
                            return
                    await trio.sleep(0.2)
            self.log(f"{kind}: no device connected for 15 s; skipped")
            self.records.append({"t": "skipped", "kind": kind})
        elif kind == "app-restart":
            dev = self.devices[rng.choice(sorted(self.devices))]
            goodbye = rng.random() < 0.5
            await dev.restart(goodbye)
            self.fault(kind, dev=dev.key, goodbye=goodbye)
        elif kind == "redis-restart":
            assert self.redis is not None, "redis-restart needs --nodes 2 (and Redis)"
            await trio.to_thread.run_sync(self.redis.stop)
            down = rng.uniform(0.5, 2)
            self.fault(kind, down_s=round(down, 1))
            await trio.sleep(down)
            await trio.to_thread.run_sync(self.redis.start)
        elif kind == "cassandra-restart":
            assert self.cassandra is not None, "cassandra-restart needs --store cassandra"
            await trio.to_thread.run_sync(self.cassandra.stop)
            down = rng.uniform(1, 3)
            self.fault(kind, down_s=round(down, 1))
            await trio.sleep(down)
            t = trio.current_time()
            await trio.to_thread.run_sync(self.cassandra.start)
            self.log(f"Cassandra back after {trio.current_time() - t:.1f} s")
        else:
            raise ValueError(kind)

    async def offline_episodes(self) -> None:
        """Devices whose network is cut for a while (the app keeps running): one for most of
        the run (its backlog spans inbox pages), others for 10-25% of it."""
        assert self.proxy is not None
        d = self.opts.duration
        keys = sorted(self.devices)
        long_one = next((k for k in keys if k.endswith("/b")), keys[0])
        plan = [(0.05 * d, 0.9 * d, long_one)]
        others = [k for k in keys if k != long_one]
        for _ in range(self.opts.offline):
            start = self.rng.uniform(0.05 * d, 0.7 * d)
            plan.append((start, start + self.rng.uniform(0.1, 0.25) * d,
                         self.rng.choice(others)))

        async def episode(start: float, end: float, key: str) -> None:
            await trio.sleep_until(self.t0 + start)
            self.set_offline(key, True)
            self.records.append({"t": "offline", "dev": key, "at": round(start, 2),
                                 "for_s": round(end - start, 2)})
            await trio.sleep_until(self.t0 + end)
            self.set_offline(key, False)

        async with trio.open_nursery() as nursery:
            for start, end, key in plan:
                nursery.start_soon(episode, start, end, key)

    def set_offline(self, key: str, offline: bool) -> None:
        assert self.proxy is not None
        dev = self.devices[key]
        for r in [r for r in self.proxy.routes if r.startswith(f"{key}@")]:
            self.proxy.block(r) if offline else self.proxy.unblock(r)
        dev.offline = offline

    # ---- the end ---------------------------------------------------------------------------

    async def settle(self) -> dict[str, Any]:
        """Wait until the outboxes are empty and every acknowledged message and receipt has
        arrived (or settle seconds pass); the checker's count of what is still missing."""
        deadline = trio.current_time() + self.opts.settle
        pending: dict[str, Any] = {}
        while trio.current_time() < deadline:
            outboxes = sum(len(d.outbox) for d in self.devices.values())
            if not outboxes:
                res = chaos_check.check(self.records, final=False)
                v = res["violations"]
                pending = {"lost": v["lost"], "receipts": v["receipts"]}
                if not v["lost"] and not v["receipts"]:
                    await trio.sleep(1.0)  # late repeats would show up now
                    return {"outboxes": 0, **pending}
            else:
                pending = {"outboxes": outboxes}
            await trio.sleep(1.0)
        self.log(f"did not settle in {self.opts.settle} s: {pending}")
        return pending

    async def read_history(self) -> None:
        setup = next(r for r in self.records if r["t"] == "setup")
        for conv, members in setup["convs"].items():
            items: list[dict[str, Any]] = []
            before = None
            with trio.fail_after(60):
                client = await self._ready_client(f"{members[0]}/a")
                while True:
                    page = await client.history(conv, before=before, limit=200)
                    items += [{"seq": it.seq, "from": it.sender, "fdev": it.device,
                               "id": it.id, "body": it.body.decode("utf-8", "replace"),
                               "ev": it.event is not None} for it in page.items]
                    if not page.more or not page.items:
                        break
                    before = min(it.seq for it in page.items)
            self.records.append({"t": "history", "conv": conv, "items": items})

    async def main(self, store_url: str) -> dict[str, Any]:
        opts = self.opts
        t_start = time.monotonic()
        self.t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(120):
                    await self.setup(nursery, store_url)
                self.t0 = trio.current_time()
                rate = opts.rate / len(self.devices)
                async with trio.open_nursery() as traffic:
                    for dev in self.devices.values():
                        traffic.start_soon(dev.sender, rate, self.t0 + opts.duration)
                    traffic.start_soon(self.offline_episodes)
                    traffic.start_soon(self.nemesis)
                self.log("traffic over; every device back online, waiting for the rest")
                for key in self.devices:
                    self.set_offline(key, False)
                for node in self.nodes:
                    if node.proc is None or node.proc.poll() is not None:
                        await node.start()
                pending = await self.settle()
                with trio.fail_after(120):
                    await self.read_history()
            finally:
                self.closing = True
                with trio.move_on_after(5) as cleanup:
                    cleanup.shield = True
                    for dev in self.devices.values():
                        await dev.restart(goodbye=True)
                nursery.cancel_scope.cancel()
        for node in self.nodes:
            await trio.to_thread.run_sync(node.stop)
        result = chaos_check.check(self.records)
        assert self.proxy is not None
        result["run"] = {
            "options": dataclasses.asdict(opts), "seconds": round(time.monotonic() - t_start, 1),
            "unsettled": {k: v for k, v in pending.items() if v},
            "proxy": self.proxy.stats, "node_starts": {n.name: n.starts for n in self.nodes},
            "skipped_faults": sum(1 for r in self.records if r["t"] == "skipped"),
            "log": self.notes,
        }
        return result


def start_cassandra(workdir: Path) -> Any:
    from chatd.store.cql import migrate

    from .cassandra import CassandraNode

    node = CassandraNode(workdir / "cassandra")
    node.start()
    trio.run(migrate, node.url())
    return node


@contextlib.contextmanager
def _workdir(path: str | None) -> Iterator[Path]:
    if path:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        yield p
    else:
        with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
            yield Path(tmp)


async def run_async(opts: Options, workdir: Path, redis: Any = None,
                    cassandra: Any = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One run with the given Redis (needed for --nodes 2) and Cassandra node (for the
    Cassandra store; its keyspace migrated and empty): (summary, recorded history)."""
    check_options(opts, redis, cassandra)
    store_url = (cassandra.url(timeout="5", numbering=opts.numbering)
                 if opts.store == "cassandra" else f"sqlite://{workdir.resolve()}/data/chatd.db")
    run = Run(opts, workdir, redis, cassandra)
    limit = opts.duration + opts.settle + 600
    with trio.fail_after(limit):
        result = await run.main(store_url)
    return result, run.records


def check_options(opts: Options, redis: Any, cassandra: Any) -> None:
    f = opts.faults
    if f.get("kill-worker") and opts.workers < 2:
        raise ValueError("kill-worker needs --workers 2 or more")
    if (f.get("failover") or f.get("redis-restart")) and opts.nodes < 2:
        raise ValueError("failover and redis-restart need --nodes 2")
    if opts.nodes > 1 and redis is None:
        raise ValueError("several nodes need Redis")
    if (f.get("cassandra-restart") or opts.store == "cassandra") and cassandra is None:
        raise ValueError("the Cassandra store needs a Cassandra node")
    if f.get("cassandra-restart") and opts.store != "cassandra":
        raise ValueError("cassandra-restart needs --store cassandra")
    if opts.numbering not in ("paxos", "owner"):
        raise ValueError("numbering is paxos or owner")
    if opts.numbering != "paxos" and opts.store != "cassandra":
        raise ValueError("--numbering is Cassandra's: it needs --store cassandra")


def run(opts: Options, workdir: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A whole run from the command line: starts Redis / Cassandra itself when needed."""
    with _workdir(workdir) as wd, contextlib.ExitStack() as stack:
        redis = cassandra = None
        if opts.nodes > 1:
            redis = RedisProcess(wd / "redis")
            stack.callback(redis.stop)
        if opts.store == "cassandra":
            print("chaos: starting a Cassandra node...", file=sys.stderr, flush=True)
            cassandra = start_cassandra(wd)
            stack.callback(cassandra.stop)
        return trio.run(run_async, opts, wd, redis, cassandra)


def main(args: Any) -> None:
    if args.self_test and args.history_in:
        records = json.loads(Path(args.history_in).read_text())
        report = chaos_check.self_test(records, args.seed)
        print(json.dumps(report, indent=2))
        sys.exit(0 if report["ok"] else 1)
    opts = Options(seed=args.seed, duration=args.duration, rate=args.rate, users=args.users,
                   faults=parse_faults(args.faults), workers=args.workers, nodes=args.nodes,
                   store=args.store, numbering=args.numbering, heartbeat=args.heartbeat,
                   idle_timeout=args.idle_timeout, offline=args.offline, settle=args.settle,
                   verbose=not args.quiet, group_size=args.group_size, in_flight=args.in_flight)
    result, records = run(opts, args.workdir)
    if args.history:
        Path(args.history).write_text(json.dumps(records))
    if args.self_test:
        result["self_test"] = chaos_check.self_test(records, args.seed)
    path = save(args.name, result)
    print(json.dumps(result, indent=2))
    print(f"saved {path}", file=sys.stderr)
    line = chaos_check.verdict(result)
    if args.self_test:
        st = result["self_test"]
        caught = sum(c["caught"] for c in st["corruptions"].values())
        line += (f"; self-test: {caught}/{len(st['corruptions'])} corruptions caught,"
                 f" clean history {'passes' if st['clean_history_passes'] else 'FAILS'}")
        print(line)
        sys.exit(0 if st["ok"] else 1)
    print(line)
    sys.exit(0 if result["ok"] else 1)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("chaos", help="faults injected into real nodes while SDK clients talk;"
                       " the history checked (lost, duplicated, reordered, ...); exit 1 on"
                       " any violation")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, default=30, help="seconds of traffic")
    p.add_argument("--rate", type=float, default=40, help="messages/s, all devices together")
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--faults", default="kill-node=1,drop=4,silent=2,app-restart=2",
                   help="kind=count,... of " + ", ".join(FAULTS))
    p.add_argument("--workers", type=int, default=1, help="worker processes per node")
    p.add_argument("--nodes", type=int, default=1, help="nodes (2+: joined through a Redis"
                   " started for the run)")
    p.add_argument("--store", choices=("sqlite", "cassandra"), default="sqlite",
                   help="cassandra: a Cassandra node is started for the run")
    p.add_argument("--numbering", choices=("paxos", "owner"), default="paxos",
                   help="the Cassandra store's numbering (owner: conversation owners, their"
                   " shards moving as nodes are killed and come back)")
    p.add_argument("--heartbeat", type=float, default=1.0, help="the nodes' --heartbeat")
    p.add_argument("--idle-timeout", type=float, default=4.0, help="the nodes' --idle-timeout")
    p.add_argument("--group-size", type=int, default=5, help="members per group")
    p.add_argument("--in-flight", type=int, default=3, help="sends in flight per device")
    p.add_argument("--offline", type=int, default=3, help="offline episodes (besides the"
                   " device offline for most of the run)")
    p.add_argument("--settle", type=float, default=90, help="seconds the end may wait for"
                   " what is still on its way")
    p.add_argument("--history", help="write the recorded history (JSON) here")
    p.add_argument("--history-in", help="with --self-test: corrupt this recorded history"
                   " instead of running")
    p.add_argument("--self-test", action="store_true", help="also corrupt the recorded history"
                   " in each way the checker knows; every corruption must be caught")
    p.add_argument("--workdir", help="keep the nodes' data and logs here (default: a"
                   " temporary dir)")
    p.add_argument("--name", default="chaos", help="results file name (bench/results/NAME.json)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
