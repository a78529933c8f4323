"""The real `chatd` command in its own process: kill -9, SIGTERM, and the CLI end to end."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import chatd_client as cc
import pytest
import trio

from bench.common import free_port, wait_ready
from chatd.protocol import ErrorCode

CHATD = [sys.executable, "-m", "chatd"]


def cli(*args: str, data_dir: Path, timeout: float = 30) -> str:
    out = subprocess.run([*CHATD, *args], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "CHATD_DATA_DIR": str(data_dir)})
    assert out.returncode == 0, out.stderr
    return out.stdout


class Proc:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: list[str] = []  # the node's stderr

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the node and wait for the line it prints once every worker listens (a
        probe of the port could reach a killed node's worker that has not let go of it)."""
        self.proc = subprocess.Popen(
            [*CHATD, "serve", "--data-dir", str(self.data_dir), "--tcp-port", str(self.port),
             "--ws-port", "-1", "--send-rate", "10000", "--send-burst", "10000"],  # (bursts)
            stderr=subprocess.PIPE)
        try:
            wait_ready(self.proc, timeout=60, log=self.log)
        except RuntimeError as exc:
            raise AssertionError(str(exc)) from None

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Signal the node (its supervisor, which has the workers) and wait until every
        process of it is gone (the workers die with the supervisor, a moment later)."""
        assert self.proc is not None
        pid = self.proc.pid
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                workers = [int(w) for w in f.read().split()]
        except FileNotFoundError:
            workers = []
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=20)
        deadline = time.monotonic() + 10
        while any(os.path.exists(f"/proc/{w}") and not _zombie(w) for w in workers):
            assert time.monotonic() < deadline, "workers outlived their supervisor"
            time.sleep(0.02)
        while _accepts(self.port):  # and nothing of it holds the port any more
            assert time.monotonic() < deadline, "the port is still open after the node died"
            time.sleep(0.02)
        return rc

    def token(self, user: str) -> str:
        return cli("token", user, data_dir=self.data_dir).strip()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture
def chatd_proc(tmp_path: Path) -> Iterator[Proc]:
    p = Proc(tmp_path / "data")
    yield p
    if p.proc is not None and p.proc.poll() is None:
        p.proc.kill()
        p.proc.wait()


async def test_sigkill_after_sent_loses_nothing(chatd_proc: Proc) -> None:
    alice, bob = chatd_proc.token("alice"), chatd_proc.token("bob")
    chatd_proc.start()
    acks: list[cc.SentAck] = []
    async with cc.connect(chatd_proc.url, alice, reconnect=False) as client:
        async def send(i: int) -> None:
            acks.append(await client.send("bob", f"durable {i}"))

        async with trio.open_nursery() as nursery:  # concurrent: several per commit batch
            for i in range(200):
                nursery.start_soon(send, i)
        assert chatd_proc.kill(signal.SIGKILL) == -signal.SIGKILL  # right after SENT
    chatd_proc.start()
    async with cc.connect(chatd_proc.url, bob) as client:
        got = []
        with trio.fail_after(10):
            while len(got) < len(acks):
                m = await client.next_event(cc.Message)
                assert isinstance(m, cc.Message)
                got.append(m)
    assert sorted(m.seq for m in got) == sorted(a.seq for a in acks)
    assert [m.seq for m in got] == sorted(m.seq for m in got)  # in order


async def test_sigterm_tells_devices_and_exits_cleanly(chatd_proc: Proc) -> None:
    token = chatd_proc.token("alice")
    chatd_proc.start()
    async with cc.connect(chatd_proc.url, token, reconnect=False) as client:
        await client.next_event(cc.Synced)
        chatd_proc.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        with trio.fail_after(10):
            err = await client.next_event(cc.ServerError)
        assert isinstance(err, cc.ServerError) and err.code == ErrorCode.SHUTTING_DOWN
    assert chatd_proc.proc.wait(timeout=20) == 0  # type: ignore[union-attr]


def test_cli_send_and_listen(chatd_proc: Proc) -> None:
    alice, bob = chatd_proc.token("alice"), chatd_proc.token("bob")
    chatd_proc.start()
    sent = json.loads(cli("send", "--url", chatd_proc.url, "--token", alice, "--to", "bob",
                          "--id", "cli-1", "hello from the cli", data_dir=chatd_proc.data_dir))
    assert sent["event"] == "sent" and sent["id"] == "cli-1" and sent["seq"] == 1
    lines = cli("listen", "--url", chatd_proc.url, "--token", bob, "--count", "1", "--read",
                data_dir=chatd_proc.data_dir).splitlines()
    events = [json.loads(line) for line in lines]
    msg = next(e for e in events if e["event"] == "message")
    assert (msg["from"], msg["text"], msg["seq"]) == ("alice", "hello from the cli", 1)
    lines = cli("listen", "--url", chatd_proc.url, "--token", alice, "--timeout", "2",
                data_dir=chatd_proc.data_dir).splitlines()
    kinds = [json.loads(line)["event"] for line in lines]
    assert "delivered" in kinds and "read" in kinds, lines


def test_cli_reports_errors_plainly(chatd_proc: Proc) -> None:
    alice = chatd_proc.token("alice")
    chatd_proc.start()
    out = subprocess.run([*CHATD, "send", "--url", chatd_proc.url, "--token", alice, "--to",
                          "ghost", "boo"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "UNKNOWN_TARGET" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([*CHATD, "send", "--url", chatd_proc.url, "--token", "junk", "--to",
                          "bob", "x"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "UNAUTHENTICATED" in out.stderr
    out = subprocess.run([*CHATD, "serve", "--store", "postgres://x"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode != 0 and "unknown store" in out.stderr and "Traceback" not in out.stderr


async def test_sigkill_mid_fanout_loses_nothing(chatd_proc: Proc) -> None:
    from chatd.store import open_store

    members = [f"m{i}" for i in range(1023)]  # a full group: 1,024 with alice
    async with open_store(f"sqlite://{chatd_proc.data_dir}/chatd.db") as store:
        for u in ["alice", *members]:
            await store.add_user(u)
    alice = chatd_proc.token("alice")
    chatd_proc.start()
    async with cc.connect(chatd_proc.url, alice, reconnect=False) as client:
        group = await client.create_group("Everyone", members)
        ack = await client.send(None, "to all 1,023 of you", group=group.group)
        assert chatd_proc.kill(signal.SIGKILL) == -signal.SIGKILL  # right after SENT
    chatd_proc.start()
    for name in (members[0], members[600], members[-1]):
        async with cc.connect(chatd_proc.url, chatd_proc.token(name)) as member:
            with trio.fail_after(10):
                while True:
                    m = await member.next_event(cc.Message)
                    assert isinstance(m, cc.Message)
                    if m.seq == ack.seq:
                        assert m.text == "to all 1,023 of you"
                        break
