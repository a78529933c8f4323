"""A real Cassandra 5.0 node on spare loopback ports, for the tests (one per test session) and
the benchmarks (scripts/cassandra-fetch gets the jars from Maven Central, cached;
scripts/cassandra/run.sh runs it). It may be stopped and started again: the data stays in its
directory."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from .common import free_port

ROOT = Path(__file__).resolve().parent.parent
KEYSPACE = "chatd_test"


class CassandraNode:
    def __init__(self, workdir: Path) -> None:
        self.lib = subprocess.run([ROOT / "scripts" / "cassandra-fetch"], check=True,
                                  capture_output=True, text=True).stdout.strip()
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        yaml = (ROOT / "scripts" / "cassandra" / "cassandra.yaml").read_text()
        yaml = yaml.replace("native_transport_port: 9042",
                            f"native_transport_port: {self.port}")
        yaml = yaml.replace("storage_port: 7000", f"storage_port: {free_port()}")
        self.yaml = self.dir / "cassandra.yaml"
        self.yaml.write_text(yaml)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "stdout.log"
        self._cluster: Any = None
        self._session: Any = None

    def url(self, keyspace: str = KEYSPACE, **opts: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"timeout": "10", **opts}.items())
        return f"cassandra://127.0.0.1:{self.port}/{keyspace}?{query}"

    def start(self, timeout: float = 180) -> None:
        env = {**os.environ, "CASSANDRA_YAML": str(self.yaml)}
        with self.log.open("a") as f:
            f.write("== start\n")
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [ROOT / "scripts" / "cassandra" / "run.sh", self.lib, self.dir / "node"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Cassandra exited ({self.proc.returncode}): see {self.log}")
            if "Startup complete" in self.log.read_text(errors="replace").split(
                    "== start")[-1]:
                return
            time.sleep(0.2)
        raise RuntimeError(f"Cassandra did not start in {timeout} s: see {self.log}")

    def truncate(self, keyspace: str = KEYSPACE) -> None:
        """Empty every table (faster than a new keyspace: schema changes are slow)."""
        from chatd.store.cql import TABLES

        if self._session is None:
            from cassandra.cluster import Cluster

            self._cluster = Cluster([("127.0.0.1", self.port)], protocol_version=5)
            self._session = self._cluster.connect()
        for t in TABLES:
            if t != "meta":
                self._session.execute(f"TRUNCATE {keyspace}.{t}", timeout=60)

    def stop(self) -> None:
        if self._cluster is not None:
            self._cluster.shutdown()
            self._cluster = self._session = None
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
