"""Shared pieces of the benchmarks: a chatd node in its own process, tokens, RSS, results."""

from __future__ import annotations

import json
import os
import pathlib
import select
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import trio

from chatd.auth import load_or_create_secret, make_token
from chatd.protocol import NEED_DATA, PEER_CLOSED, Connection, Frame, Role
from chatd.protocol import frames as F
from chatd.store import open_store

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


_HANDED_OUT: set[int] = set()


def _share() -> tuple[int, int]:
    """(index, count) of this pytest-xdist worker among the run's workers; (0, 1) outside one.
    Each worker hands out only the ports of its blocks of 64 (block p // 64, modulo count, is
    index), so two test processes running side by side never give one spare port to two
    servers. (Blocks, not p % count: Linux gives bind() to port 0 odd ports only.)"""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if count > 1 and name.startswith("gw") and name[2:].isdigit():
        return int(name[2:]) % count, count
    return 0, 1


def free_port() -> int:
    """A loopback port that is free now and that this process has not handed out before.
    The kernel may give the same spare port to two binds in a row; two servers told to use it
    then collide (SeaweedFS's master and filer once got one gRPC port and `weed` exited).
    Under pytest-xdist, only ports of this worker's share (`_share`)."""
    index, count = _share()
    for _ in range(1000 * count):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if (port >> 6) % count == index and port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no loopback port left that this process has not handed out already")


READY_LINE = b"chatd serving "  # `chatd serve` prints it once every worker is listening


def wait_ready(proc: subprocess.Popen[Any], timeout: float = 60, echo: bool = False,
               log: list[str] | None = None) -> str:
    """Wait for a `chatd serve` process (started with stderr=PIPE) to print its readiness
    line, and return it. Unlike a probe of the port, this cannot be fooled by an earlier
    process that still holds the port while it dies. Its stderr is read on in a thread
    (echoed to ours if `echo`, kept in `log` if given) so the node never blocks writing it."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    end = time.monotonic() + timeout
    seen: list[str] = [] if log is None else log
    buf = b""
    while True:
        if b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            seen.append(line.decode(errors="replace"))
            if echo:
                sys.stderr.write(seen[-1] + "\n")
            if line.startswith(READY_LINE):
                break
            continue
        left = end - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"chatd did not say it was ready within {timeout} s:\n"
                               + "\n".join(seen[-20:]))
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"chatd exited with {proc.wait()}:\n" + "\n".join(seen[-20:]))
            buf += chunk

    def drain() -> None:
        rest = buf
        while chunk := os.read(fd, 65536):
            rest += chunk
            *lines, rest = rest.split(b"\n")
            for line in lines:
                seen.append(line.decode(errors="replace"))
                if echo:
                    sys.stderr.write(seen[-1] + "\n")
            del seen[:-1000]

    threading.Thread(target=drain, daemon=True).start()
    return seen[-1]


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """For processes other than chatd (a bare server, the relay) on a fresh port."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}") from None
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


class ChatdProcess:
    """`python -m chatd serve` on a free port with users registered beforehand; `workers`
    worker processes (1: the whole node in one process).

    bench_limits (the default) lifts the per-user send rate and the frames-per-connection
    queue out of the way of throughput measurements; bench_limits=False runs the node with
    its defaults (bench abuse). `env`: CHATD_* settings without a flag, added to ours."""

    def __init__(self, data_dir: str, users: list[str], store: str = "", workers: int = 1,
                 extra: tuple[str, ...] = (), bench_limits: bool = True,
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.secret = load_or_create_secret(data_dir)
        self.store = store or f"sqlite://{os.path.abspath(data_dir)}/chatd.db"
        if not self.store.startswith("memory"):
            trio.run(self._register, users)
        # CHATD_BENCH_SERVER replaces "python -m chatd", e.g. to run the server under a profiler
        command = os.environ.get("CHATD_BENCH_SERVER", f"{sys.executable} -m chatd").split()
        limits = ("--send-rate", "1e9", "--send-burst", "1e9", "--max-queue", "100000") \
            if bench_limits else ()
        self.proc = subprocess.Popen(
            [*command, "serve", "--data-dir", data_dir, "--store", self.store, "--tcp-port",
             str(self.port), "--ws-port", "-1", *limits, "--workers", str(workers), *extra],
            env={**os.environ, **env} if env else None,
            stderr=subprocess.PIPE)
        # the line comes once every worker listens
        wait_ready(self.proc, echo=bool(os.environ.get("CHATD_BENCH_SERVER")))
        self.workers = workers

    def pids(self) -> list[int]:
        """The processes of the node: the supervisor and its workers (or the one process)."""
        return [self.proc.pid, *children(self.proc.pid)]

    def rss_kib(self) -> int:
        return sum(rss_kib(p) for p in self.pids())

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids())

    async def _register(self, users: list[str]) -> None:
        async with open_store(self.store) as store:
            for u in users:
                await store.add_user(u)

    def token(self, user: str, device: str | None = None) -> str:
        return make_token(self.secret, user, device)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class RawClient:
    """A minimal protocol client for load: no SDK bookkeeping in the measurement."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = Connection(Role.CLIENT)
        self.lock = trio.Lock()

    @classmethod
    async def connect(cls, port: int, token: str, device: str = "default",
                      host: str = "127.0.0.1", wait_synced: bool = True) -> RawClient:
        c = cls(await trio.open_tcp_stream(host, port))
        await c.stream.send_all(c.conn.send(F.Hello(version=1, token=token, device=device)))
        while True:
            frame = await c.next()
            if isinstance(frame, F.Error):
                raise RuntimeError(f"refused: {frame}")
            if isinstance(frame, F.Synced if wait_synced else F.Welcome):
                return c

    async def next(self) -> Frame:
        while True:
            ev = self.conn.next_event()
            if ev is PEER_CLOSED:
                raise EOFError
            if ev is not NEED_DATA:
                assert isinstance(ev, Frame)
                return ev
            self.conn.receive_data(await self.stream.receive_some(262144))

    async def batch(self) -> list[Frame]:
        """Every frame that one read brings (at least one)."""
        frames = [await self.next()]
        while (ev := self.conn.next_event()) is not NEED_DATA and ev is not PEER_CLOSED:
            assert isinstance(ev, Frame)
            frames.append(ev)
        return frames

    async def send(self, *frames: Frame) -> None:
        data = b"".join(self.conn.send(f) for f in frames)
        async with self.lock:
            await self.stream.send_all(data)


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def save(name: str, result: dict[str, Any]) -> pathlib.Path:
    RESULTS.mkdir(exist_ok=True)
    result = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]}, **result}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
