"""`chatd serve --workers N`: one node, N worker processes, every core busy.

The supervisor (the process `chatd serve` starts as) reserves the ports, starts N workers and
restarts any that dies. Each worker is a whole chatd process with its own trio loop: it binds
the TCP and WebSocket ports with SO_REUSEPORT, so the kernel spreads new connections across
the workers; it opens the same store (SQLite is safe with several writer processes, see
chatd.store.sqlite); and it tells the other workers about the inbox items it committed, over
Unix datagram sockets in <data_dir>/run (chatd.router.peers), so a message reaches a device
whichever worker holds it. The store stays the source of truth, so every guarantee of the
one-process server holds: what a worker misses, its devices read from the store.

A worker dies with its supervisor (PR_SET_PDEATHSIG), so `kill -9` of the supervisor leaves no
worker holding the ports.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
from typing import Any

import trio
from prometheus_client import multiprocess

from . import metrics
from .app import Worker, serve
from .config import Config

log = logging.getLogger("chatd.workers")
READY = b"ready\n"
PR_SET_PDEATHSIG = 1


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
        self.procs: dict[int, trio.Process] = {}
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
        os.makedirs(self.run_dir, exist_ok=True)
        shutil.rmtree(self.metrics_dir, ignore_errors=True)  # values of an earlier run
        os.makedirs(self.metrics_dir)
        spec = json.dumps({"config": self.worker_config(), "count": self.count,
                           "run_dir": self.run_dir})
        try:
            async with trio.open_nursery() as nursery:
                for i in range(self.count):
                    await nursery.start(self._keep_running, i, spec)
                if self.config.metrics_port >= 0:
                    self.metrics_port = metrics.serve_metrics(
                        self.config.host, self.config.metrics_port, self.metrics_dir)
                task_status.started(self.config)
        finally:
            for s in self._held:
                s.close()

    async def _keep_running(self, index: int, spec: str, *,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                            ) -> None:
        env = dict(os.environ, CHATD_WORKER=spec, CHATD_WORKER_INDEX=str(index),
                   PROMETHEUS_MULTIPROC_DIR=self.metrics_dir)
        backoff = 0.5
        while True:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "chatd.server.workers"], env=env, stdout=-1)
            self.procs[index] = proc
            assert proc.stdout is not None
            line = b""
            with trio.move_on_after(60):
                while not line.endswith(b"\n"):
                    chunk = await proc.stdout.receive_some(64)
                    if not chunk:
                        break
                    line += chunk
            if line == READY:
                if task_status is not trio.TASK_STATUS_IGNORED:
                    task_status.started()
                    task_status = trio.TASK_STATUS_IGNORED
                backoff = 0.5
            elif task_status is not trio.TASK_STATUS_IGNORED:  # never came up: give up
                proc.kill()
                raise WorkerFailed(f"worker {index} did not start (exit {await proc.wait()})")
            rc = await proc.wait()
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
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.config.shutdown_grace + 5):
            for proc in self.procs.values():
                await proc.wait()
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.kill()


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the worker outlives a killed supervisor
        pass


async def worker_main(spec: dict[str, Any], index: int) -> None:
    cfg = Config()
    for k, v in spec["config"].items():
        setattr(cfg, k, v)
    worker = Worker(index, spec["count"], spec["run_dir"])
    async with trio.open_nursery() as nursery:
        server = await nursery.start(lambda task_status: serve(
            cfg, worker=worker, task_status=task_status))
        os.write(1, READY)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                server.stop()
                break


def main() -> None:
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # the supervisor died before the line above
        sys.exit(1)
    spec = json.loads(os.environ["CHATD_WORKER"])
    index = int(os.environ["CHATD_WORKER_INDEX"])
    logging.basicConfig(level=os.environ.get("CHATD_LOG_LEVEL", "WARNING"),
                        format=f"%(asctime)s w{index} %(name)s %(levelname)s %(message)s")
    trio.run(worker_main, spec, index)


if __name__ == "__main__":
    main()
