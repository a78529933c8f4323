"""Helpers for the deployment tests: real `chatd serve` processes and HTTP probes."""

from __future__ import annotations

import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from bench.common import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def get(url: str) -> tuple[int, str]:
    """(status, body) of a GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Node:
    """`chatd serve` in its own process, on loopback."""

    def __init__(self, chatd: Sequence[str], data_dir: Path, *args: str,
                 env: dict[str, str] | None = None) -> None:
        self.tcp_port = free_port()
        self.metrics_port = free_port()
        self.log: list[str] = []
        self.proc = subprocess.Popen(
            [*chatd, "serve", "--data-dir", str(data_dir), "--tcp-port", str(self.tcp_port),
             "--ws-port", "-1", "--metrics-port", str(self.metrics_port), *args],
            stderr=subprocess.PIPE, env=env)
        try:
            wait_ready(self.proc, timeout=60, log=self.log)
        except RuntimeError as exc:
            self.stop()
            raise AssertionError(str(exc)) from None

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.tcp_port}"

    def http(self, path: str) -> tuple[int, str]:
        return get(f"http://127.0.0.1:{self.metrics_port}{path}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    """Nodes a test starts (append them); each is stopped after the test."""
    started: list[Node] = []
    yield started
    for node in started:
        node.stop()
