"""Browser tests: real headless Chromium (Debian's `chromium`) driven by Playwright, against a
real `chatd serve` process (TCP, WebSocket and the HTTP listener that serves the web app) on
spare loopback ports. Screenshots go to tests/web/artifacts/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from bench.common import free_port, wait_ready
from chatd.auth import load_or_create_secret, make_token
from chatd.store import open_store

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = os.environ.get("CHATD_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium's connections are refused here.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
USERS = ["alice", "bob", "carol", "dave"]


class WebNode:
    """`chatd serve` with the web app, restartable on the same ports and data dir."""

    def __init__(self, data_dir: Path, extra: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = env
        self.tcp_port, self.ws_port, self.http_port = free_port(), free_port(), free_port()
        self.extra = extra
        self.secret = load_or_create_secret(str(data_dir))
        self.store = f"sqlite://{data_dir}/chatd.db"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: list[str] = []
        trio.run(self._register)

    async def _register(self) -> None:
        async with open_store(self.store) as store:
            for user in USERS:
                await store.add_user(user)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/"

    def token(self, user: str) -> str:
        return make_token(self.secret, user)

    def link(self, user: str) -> str:
        return f"{self.url}#token={self.token(user)}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chatd", "serve", "--data-dir", str(self.data_dir),
             "--tcp-port", str(self.tcp_port), "--ws-port", str(self.ws_port),
             "--http-port", str(self.http_port), "--workers", "1", "--heartbeat", "5",
             *self.extra],
            stderr=subprocess.PIPE, env={**os.environ, **self.env} if self.env else None)
        wait_ready(self.proc, log=self.log)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def bundle() -> Path:
    """The built web app (built now if missing or stale, as scripts/serve does)."""
    if shutil.which("npm") is None:
        pytest.fail("the web tests need Node.js and npm (scripts/test installs them)")
    subprocess.run([ROOT / "clients" / "web" / "build-if-stale"], check=True)
    return ROOT / "clients" / "web" / "dist"


@pytest.fixture
def node(tmp_path: Path, bundle: Path) -> Iterator[WebNode]:
    n = WebNode(tmp_path / "data")
    n.start()
    try:
        yield n
    finally:
        n.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM} (scripts/test installs Debian's chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def contexts(browser: Any) -> Iterator[Any]:
    """new(width=...) makes a browser context (a separate browser profile: one person)."""
    made: list[Any] = []

    def new(width: int = 1000, height: int = 700) -> Any:
        ctx = browser.new_context(viewport={"width": width, "height": height})
        ctx.set_default_timeout(15_000)
        made.append(ctx)
        return ctx

    yield new
    for ctx in made:
        ctx.close()
