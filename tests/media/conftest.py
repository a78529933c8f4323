"""Blob stores for the media tests: the filesystem, and a real SeaweedFS (S3) on spare loopback
ports, one for the whole run (scripts/seaweedfs-fetch builds `weed` once, cached)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.common import free_port

ROOT = Path(__file__).resolve().parents[2]
S3_KEYS: dict[str, Any] = {"access_key": "chatd", "secret_key": "chatd-secret"}


class SeaweedNode:
    def __init__(self, workdir: Path) -> None:
        self.weed = subprocess.run([ROOT / "scripts" / "seaweedfs-fetch"], check=True,
                                   capture_output=True, text=True).stdout.strip()
        self.workdir = workdir
        self.s3_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, timeout: float = 60, tries: int = 3) -> None:
        """Start `weed server`. If another process took one of its spare ports between our
        choosing it and weed binding it, weed exits; we try again on new ports, in a new
        directory (weed keeps its first addresses in its master's raft state)."""
        for attempt in range(tries):
            data = self.workdir / f"run{attempt}"
            data.mkdir()
            try:
                return self._start_in(data, timeout)
            except RuntimeError:
                log = (data / "weed.log").read_text(errors="replace")
                if self.proc is None or self.proc.poll() is None \
                        or "address already in use" not in log or attempt == tries - 1:
                    raise
                self.log.close()
                self.s3_port = free_port()

    def _start_in(self, data: Path, timeout: float) -> None:
        ports = {name: free_port() for name in ("master", "volume", "filer")}
        grpc = {name: free_port() for name in ports}
        args = [self.weed, "server", f"-dir={data}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", "-s3", f"-s3.port={self.s3_port}",
                f"-s3.port.grpc={free_port()}", "-s3.port.iceberg=0",
                "-master.volumeSizeLimitMB=16", "-volume.max=1000", "-master.telemetry=false",
                f"-filer.localSocket={data}/filer.sock"]
        for name, port in ports.items():
            args += [f"-{name}.port={port}", f"-{name}.port.grpc={grpc[name]}"]
        self.log = open(data / "weed.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited: see {data / 'weed.log'}")
            try:
                socket.create_connection(("127.0.0.1", self.s3_port), 0.5).close()
            except OSError:
                time.sleep(0.2)
                continue
            if self._bucket_works():
                return
            time.sleep(0.5)
        raise RuntimeError(f"SeaweedFS did not start in {timeout}s: see {data / 'weed.log'}")

    def _bucket_works(self) -> bool:
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                          aws_access_key_id=S3_KEYS["access_key"],
                          aws_secret_access_key=S3_KEYS["secret_key"])
        try:
            s3.create_bucket(Bucket="probe")
            s3.put_object(Bucket="probe", Key="k", Body=b"x")
            return bool(s3.get_object(Bucket="probe", Key="k")["Body"].read() == b"x")
        except Exception:
            return False
        finally:
            s3.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.log.close()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedNode]:
    node = SeaweedNode(tmp_path_factory.mktemp("seaweedfs"))
    try:
        node.start()
        yield node
    finally:
        node.stop()

