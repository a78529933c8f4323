"""/healthz and /readyz on the metrics port of a real node started from deploy/chatd.toml,
and the health-check command the image and the unit run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.server.redis_servers import RedisServer

from .conftest import DEPLOY, Node

CHATD = [sys.executable, "-m", "chatd"]


def until(node: Node, path: str, status: int, timeout: float = 60) -> str:
    """Poll path until it answers status; its body."""
    end = time.monotonic() + timeout
    while True:
        got, body = node.http(path)
        if got == status:
            return body
        assert time.monotonic() < end, f"{path} still answers {got} {body!r}"
        time.sleep(0.2)


def image_health_check(node: Node) -> subprocess.CompletedProcess[str]:
    """The Containerfile's HEALTHCHECK command, aimed at node's metrics port."""
    text = (DEPLOY / "Containerfile").read_text().replace("\\\n", " ")
    [argv] = [json.loads(m) for m in re.findall(r"^HEALTHCHECK .*? CMD (\[.*\])$", text, re.M)]
    assert argv[0] == "python"
    argv = [sys.executable, *argv[1:-1], argv[-1].replace(":9464/", f":{node.metrics_port}/")]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_ready_only_while_redis_answers(tmp_path: Path, nodes: list[Node]) -> None:
    redis = RedisServer(tmp_path)
    try:
        node = Node(CHATD, tmp_path / "data", "--config", str(DEPLOY / "chatd.toml"),
                    "--redis", redis.url, "--node-id", "n1")  # (workers: one per core)
        nodes.append(node)
        assert node.http("/healthz") == (200, "ok\n")
        until(node, "/readyz", 200)
        assert image_health_check(node).returncode == 0

        redis.stop()
        assert until(node, "/readyz", 503) == "redis does not answer\n"
        assert node.http("/healthz") == (200, "ok\n")  # up, but take no traffic
        check = image_health_check(node)
        assert check.returncode == 1 and "redis does not answer" in check.stderr

        redis.start()
        until(node, "/readyz", 200)
    finally:
        redis.stop()


def test_one_process_node_is_ready_and_exports_its_probe(tmp_path: Path,
                                                        nodes: list[Node]) -> None:
    node = Node(CHATD, tmp_path / "data", "--workers", "1")
    nodes.append(node)
    until(node, "/readyz", 200)
    status, text = node.http("/metrics")
    assert status == 200
    assert re.search(r"^chatd_store_up 1\.0$", text, re.M)
    assert re.search(r"^chatd_data_dir_bytes [1-9]", text, re.M)  # the SQLite file, at least
