"""Real Redis servers for tests, on spare loopback ports: one server, or a three-master Redis
Cluster. Needs `redis-server` and `redis-cli` (Debian's redis-server package; .ci/run
installs it)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from bench.common import free_port


def require_redis() -> None:
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed: apt-get install redis-server"
                           " (.ci/run does it)")


def wait_ping(port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server on {port} exited ({proc.returncode})")
        out = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                             text=True)
        if out.stdout.strip() == "PONG":
            return
        time.sleep(0.05)
    raise RuntimeError(f"redis on {port} did not answer")


class RedisServer:
    def __init__(self, workdir: Path, port: int = 0, cluster: bool = False) -> None:
        require_redis()
        self.port = port or free_port()
        self.fixed_port = bool(port)
        self.started = False
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        for attempt in range(5):  # the free port may be taken meanwhile: pick another
            try:
                self._start()
                self.started = True
                return
            except RuntimeError:
                if self.proc is not None and self.proc.poll() is None:
                    raise
                if attempt == 4 or self.fixed_port or self.started:
                    raise  # (a restart keeps its port: clients know it)
                self.port = free_port()
                self.dir = self.dir.parent / f"redis-{self.port}"
                self.dir.mkdir(parents=True, exist_ok=True)

    def _start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.dir), "--protected-mode", "no"]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file",
                     str(self.dir / "nodes.conf"), "--cluster-node-timeout", "2000"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ping(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"


class RedisCluster:
    """Three masters, no replicas, created with redis-cli --cluster create."""

    def __init__(self, workdir: Path) -> None:
        self.servers: list[RedisServer] = []
        try:
            for _ in range(3):
                self.servers.append(RedisServer(workdir, cluster=True))
            self._create()
        except BaseException:
            self.stop()  # no server left behind by a cluster that did not come up
            raise

    def _create(self) -> None:
        out = subprocess.run(
            ["redis-cli", "--cluster", "create",
             *[f"127.0.0.1:{s.port}" for s in self.servers], "--cluster-replicas", "0",
             "--cluster-yes"], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"cluster create failed: {out.stdout}{out.stderr}")
        end = time.monotonic() + 20
        while time.monotonic() < end:
            info = subprocess.run(["redis-cli", "-p", str(self.servers[0].port), "cluster",
                                   "info"], capture_output=True, text=True).stdout
            if "cluster_state:ok" in info:
                return
            time.sleep(0.1)
        raise RuntimeError("cluster did not become ok")

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def stop(self) -> None:
        for s in self.servers:
            s.stop()
