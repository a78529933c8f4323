"""`chatd serve --workers N`: one node, N worker processes, every core busy.

The supervisor (the process `chatd serve` starts as) reserves the ports, starts N workers and
restarts any that dies. Each worker is a whole chatd process with its own trio loop: it binds
the TCP and WebSocket ports with SO_REUSEPORT, so the kernel spreads new connections across
the workers; it opens the same store (SQLite is safe with several writer processes, see
chatd.store.sqlite); and it tells the other workers about the inbox items it committed, over
Unix datagram sockets in <data_dir>/run (chatd.router.peers), so a message reaches a device
whichever worker holds it. The store stays the source of truth, so every guarantee of the
one-process server holds: what a worker misses, its devices read from the store.

A worker is killed with its supervisor (PR_SET_PDEATHSIG, and a check of its parent every half
second besides), so `kill -9` of the supervisor leaves no worker holding the ports.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from typing import Any

import trio
from prometheus_client import multiprocess

from . import metrics
from .app import Worker, serve
from .config import Config

log = logging.getLogger("chatd.workers")
PR_SET_PDEATHSIG = 1
READY = b"ready\n"


def reserve_port(host: str, port: int) -> tuple[int, Any]:
    """A port every worker can bind (SO_REUSEPORT); port 0 picks a free one. The socket is
    kept (bound, not listening, so it takes no connections) until the node stops."""
    import socket

    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    return s.getsockname()[1], s


class WorkerFailed(RuntimeError):
    pass


class Supervisor:
    def __init__(self, config: Config, count: int) -> None:
        self.config = config
        self.count = count
        self.run_dir = os.path.join(os.path.abspath(config.data_dir), "run")
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False
        self.restarts = 0
        self._held: list[Any] = []
        self.metrics_dir = os.path.join(self.run_dir, "metrics")
        self.metrics_port = -1

    def worker_config(self) -> dict[str, Any]:
        cfg = dataclasses.replace(self.config)
        cfg.tcp_port, held = reserve_port(cfg.host, cfg.tcp_port)
        self._held.append(held)
        if cfg.ws_port >= 0:
            cfg.ws_port, held = reserve_port(cfg.host, cfg.ws_port)
            self._held.append(held)
        self.config = cfg
        out = dataclasses.asdict(cfg)
        out["store"] = cfg.store_url
        return out

    async def run(self, *, task_status: trio.TaskStatus[Config] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        # What the node writes (sockets, metrics files, by this process, its workers and the
        # libraries they use) is for the node's user only, whatever the umask it started with.
        os.umask(0o077)
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        os.chmod(self.run_dir, 0o700)
        shutil.rmtree(self.metrics_dir, ignore_errors=True)  # values of an earlier run
        os.makedirs(self.metrics_dir, mode=0o700)
        spec = json.dumps({"config": self.worker_config(), "count": self.count,
                           "run_dir": self.run_dir})
        try:
            async with trio.open_nursery() as nursery:
                for i in range(self.count):
                    await nursery.start(self._keep_running, i, spec)
                if self.config.metrics_port >= 0:
                    self.metrics_port = metrics.serve_metrics(
                        self.config.host, self.config.metrics_port, self.metrics_dir,
                        self.workers_down)
                task_status.started(self.config)
        finally:
            for s in self._held:
                s.close()

    def workers_down(self) -> str:
        """/readyz: a worker that is not running ("" when all are)."""
        down = [i for i, p in self.procs.items() if p.poll() is not None]
        return f"worker {down[0]} of {self.count} is not running" if down else ""

    async def _keep_running(self, index: int, spec: str, *,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                            ) -> None:
        env = dict(os.environ, CHATD_WORKER=spec, CHATD_WORKER_INDEX=str(index),
                   PROMETHEUS_MULTIPROC_DIR=self.metrics_dir)
        backoff = 0.5
        while True:
            # Spawned from this (the main) thread, so PR_SET_PDEATHSIG fires only when the
            # supervisor itself dies (trio's open_process forks from a cache thread).
            proc = subprocess.Popen([sys.executable, "-m", "chatd.server.workers"], env=env,
                                    stdout=subprocess.PIPE, preexec_fn=_die_with_parent)
            self.procs[index] = proc
            assert proc.stdout is not None
            line = b""
            out = trio.lowlevel.FdStream(os.dup(proc.stdout.fileno()))
            proc.stdout.close()
            try:
                with trio.move_on_after(60):
                    while not line.endswith(b"\n"):
                        chunk = await out.receive_some(64)
                        if not chunk:
                            break
                        line += chunk
            finally:
                await out.aclose()
            if line == READY:
                if task_status is not trio.TASK_STATUS_IGNORED:
                    task_status.started()
                    task_status = trio.TASK_STATUS_IGNORED
                backoff = 0.5
            elif task_status is not trio.TASK_STATUS_IGNORED:  # never came up: give up
                proc.kill()
                raise WorkerFailed(f"worker {index} did not start (exit {await wait(proc)})")
            rc = await wait(proc)
            multiprocess.mark_process_dead(proc.pid, self.metrics_dir)  # type: ignore[no-untyped-call]
            if self.stopping:
                return
            self.restarts += 1
            log.error("worker %d exited (%s); restarting in %.1fs", index, rc, backoff)
            print(f"chatd: worker {index} exited ({rc}); restarting", file=sys.stderr,
                  flush=True)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 10)

    async def stop(self) -> None:
        """SIGTERM every worker (each drains like a one-process node), then wait."""
        self.stopping = True
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.config.shutdown_grace + 5):
            for proc in self.procs.values():
                await wait(proc)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()


async def wait(proc: subprocess.Popen[bytes]) -> int:
    """Wait for a child without a thread: its pidfd becomes readable when it exits."""
    if proc.poll() is None:
        fd = os.pidfd_open(proc.pid)
        try:
            await trio.lowlevel.wait_readable(fd)
        finally:
            os.close(fd)
    return proc.wait()


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the supervisor dies."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


async def watch_parent(parent: int) -> None:
    """End this worker at once when its supervisor is gone (killed with SIGKILL, say): an
    orphan must not keep serving the port. (PR_SET_PDEATHSIG would fire when the *thread*
    that spawned the worker ends, and trio spawns from its thread cache.)"""
    while True:
        await trio.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


async def worker_main(spec: dict[str, Any], index: int, parent: int) -> None:
    cfg = Config()
    cfg.update(spec["config"], "supervisor")
    cfg.validate()
    worker = Worker(index, spec["count"], spec["run_dir"])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_parent, parent)
        server = await nursery.start(lambda task_status: serve(
            cfg, worker=worker, task_status=task_status))
        os.write(1, READY)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                server.stop()
                break
        await server.stopped.wait()
        nursery.cancel_scope.cancel()


def main() -> None:
    parent = os.getppid()
    spec = json.loads(os.environ["CHATD_WORKER"])
    index = int(os.environ["CHATD_WORKER_INDEX"])
    logging.basicConfig(level=os.environ.get("CHATD_LOG_LEVEL", "WARNING"),
                        format=f"%(asctime)s w{index} %(name)s %(levelname)s %(message)s")
    trio.run(worker_main, spec, index, parent)


if __name__ == "__main__":
    main()
