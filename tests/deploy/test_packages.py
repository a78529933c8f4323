"""The two distributions, built with the standard backend and installed into fresh venvs
(no -e, no dev extras): `chatd serve` runs, and the SDK from the client wheel alone sends."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

import chatd
from chatd.protocol import PROTOCOL_VERSION

from .conftest import ROOT, Node

HEAVY = ("cassandra", "coredis", "PIL", "boto3", "hypercorn", "prometheus_client")
SEND = """
import importlib.util, sys, trio, chatd_client
heavy = [m for m in sys.argv[3:] if importlib.util.find_spec(m) or m in sys.modules]
assert not heavy, f"the client wheel brought {heavy}"
async def main():
    async with chatd_client.connect(sys.argv[1], token=sys.argv[2]) as c:
        ack = await c.send("bob", "hello from the wheel")
        print(c.server_version, ack.seq)
trio.run(main)
"""


def run(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"{args}: {out.stderr[-2000:]}"
    return out


def fresh_venv(path: Path, *wheels: Path) -> Path:
    venv.EnvBuilder(with_pip=True).create(path)
    run(path / "bin" / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check",
        *wheels)
    return path / "bin"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both projects' sdist, and their wheels built from those sdists (python -m build)."""
    out = tmp_path_factory.mktemp("dist")
    for project in (ROOT / "clients", ROOT):
        run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, project)
    return out


def one(dist: Path, pattern: str) -> Path:
    [found] = dist.glob(pattern)
    return found


def test_versions_agree() -> None:
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((ROOT / "clients" / "pyproject.toml").read_text())["project"]
    assert f"chatd-client=={chatd.__version__}" in server["dependencies"]
    assert client["version"] == chatd.__version__
    assert f"## {chatd.__version__}" in (ROOT / "CHANGELOG.md").read_text()
    out = run(sys.executable, "-m", "chatd", "--version").stdout
    assert out.strip() == (f"chatd {chatd.__version__} (chatd-client {chatd.__version__},"
                           f" protocol {PROTOCOL_VERSION})")


def test_wheels_hold_what_each_distribution_is(dist: Path) -> None:
    v = chatd.__version__
    assert one(dist, f"chatd-{v}.tar.gz") and one(dist, f"chatd_client-{v}.tar.gz")
    server = zipfile.ZipFile(one(dist, f"chatd-{v}-*.whl"))
    client = zipfile.ZipFile(one(dist, f"chatd_client-{v}-*.whl"))
    s, c = set(server.namelist()), set(client.namelist())
    assert {"chatd/__init__.py", "chatd/server/app.py", "chatd/cli.py"} <= s
    assert not [n for n in s if n.startswith(("chatd/protocol/", "chatd_client/", "bench/"))]
    assert {"chatd_client/client.py", "chatd/protocol/frames.py", "chatd/util.py"} <= c
    assert not [n for n in c if n.startswith("chatd/") and not n.startswith(
        ("chatd/protocol/", "chatd/util.py"))]  # (so the two never overwrite each other)
    web = {str(p.relative_to(ROOT)) for p in (ROOT / "chatd" / "web").rglob("*.py")}
    assert web <= s  # the browser app's server side ...
    bundle = ROOT / "clients" / "web" / "dist"
    if (bundle / "index.html").is_file():  # ... and its built bundle (hatch_build.py)
        assert {f"chatd/web/static/{p.relative_to(bundle)}" for p in bundle.rglob("*")
                if p.is_file()} <= s
    meta = client.read(f"chatd_client-{v}.dist-info/METADATA").decode()
    needs = sorted(line.split(":", 1)[1].split(">")[0].split("=")[0].strip()
                   for line in meta.splitlines() if line.startswith("Requires-Dist:"))
    assert needs == ["msgpack", "trio", "trio-websocket"]


def test_installed_wheels_serve_and_the_client_wheel_alone_sends(
        dist: Path, tmp_path: Path, nodes: list[Node]) -> None:
    v = chatd.__version__
    client_whl, server_whl = one(dist, f"chatd_client-{v}-*.whl"), one(dist, f"chatd-{v}-*.whl")
    server = fresh_venv(tmp_path / "server-venv", client_whl, server_whl)
    data = tmp_path / "data"
    version = run(server / "chatd", "--version").stdout
    assert version.strip() == f"chatd {v} (chatd-client {v}, protocol {PROTOCOL_VERSION})"

    # no extras installed: each feature that needs one says which, in one line
    for flags, line in [
        (["--store", "cassandra://127.0.0.1/chatd"],
         "the Cassandra store needs cassandra-driver: pip install 'chatd[cassandra]'"),
        (["--redis", "redis://127.0.0.1:1"],
         "joining other nodes (--redis) needs coredis: pip install 'chatd[redis]'"),
        (["--http-port", "0"],
         "the HTTP listener for images (--http-port) needs pillow: pip install 'chatd[media]'"),
    ]:
        out = subprocess.run([server / "chatd", "serve", "--data-dir", str(data), *flags],
                             capture_output=True, text=True, timeout=60)
        assert (out.returncode, out.stderr) == (2, f"chatd: {line}\n")

    alice = run(server / "chatd", "token", "alice", "--data-dir", data).stdout.strip()
    bob = run(server / "chatd", "token", "bob", "--data-dir", data).stdout.strip()
    node = Node([str(server / "chatd")], data, "--workers", "1")
    nodes.append(node)

    client = fresh_venv(tmp_path / "client-venv", client_whl)
    sent = run(client / "python", "-c", SEND, node.url, alice, *HEAVY).stdout.split()
    assert sent == [f"chatd/{v}", "1"]
    got = run(server / "chatd", "listen", "--url", node.url, "--token", bob, "--count", "1",
              "--timeout", "30").stdout
    [message] = [e for e in map(json.loads, got.splitlines()) if e["event"] == "message"]
    assert (message["from"], message["text"]) == ("alice", "hello from the wheel")
