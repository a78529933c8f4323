"""One node, several worker processes (`chatd serve --workers N`): delivery, receipts, groups and
presence between workers, a device moving between workers, and a worker killed mid-run.

The first tests run two workers inside the test's trio loop (each with its own store
connection, caches and peer socket, exactly as in two processes, on separate ports so each
client picks its worker); the last ones run the real `chatd serve --workers 2`."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import chatd_client as cc
import pytest
import trio

from chatd.auth import load_or_create_secret, make_token
from chatd.core import now_ms
from chatd.server import Config
from chatd.server.app import Worker, serve

from . import scenarios
from .conftest import Node, messages
from .scenarios import first


@pytest.fixture
async def workers(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[list[Node]]:
    data = tmp_path / "data"
    load_or_create_secret(str(data))
    nodes = []
    for i in range(2):
        cfg = Config(host="127.0.0.1", tcp_port=0, ws_port=0, data_dir=str(data),
                     presence_threshold=5)
        server = await nursery.start(lambda task_status, c=cfg, i=i: serve(
            c, worker=Worker(i, 2, str(data / "run")), task_status=task_status))
        nodes.append(Node(server, cfg))
    await nodes[0].add_users("alice", "bob", "carol")
    yield nodes


async def test_messages_and_receipts_cross_workers(workers: list[Node]) -> None:
    await scenarios.one_to_one_with_receipts(workers[0], workers[1], 50)
    assert workers[1].server.stats["peer_items"] > 0  # pushed by the other worker


async def test_group_across_workers(workers: list[Node]) -> None:
    await scenarios.group_message(workers[0], workers[1], workers[1])


async def test_presence_across_workers(workers: list[Node]) -> None:
    await scenarios.presence_seen_elsewhere(workers[0], workers[1])


async def test_a_device_that_moves_worker_replaces_its_old_connection(
        workers: list[Node]) -> None:
    w0, w1 = workers
    with pytest.raises(cc.ChatdError, match="replaced by a newer connection"):
        async with w0.connect("bob", "phone", reconnect=False) as old:
            await first(old, cc.Synced)
            async with w1.connect("bob", "phone") as new:
                await first(new, cc.Synced)
                async with w0.connect("alice") as alice:
                    await alice.send("bob", "to the new one")
                    assert (await messages(new, 1))[0].text == "to the new one"
                with trio.fail_after(5):
                    await old.next_event(cc.Disconnected)


async def test_late_news_of_an_older_connection_ends_no_newer_one(
        workers: list[Node]) -> None:
    """A device's "connected here" news that reaches a process after the same device has
    connected there again (its client gave up on the first and came back quickly) used to
    end that newer connection ("replaced by a newer connection": seen in CI, RELIABILITY.md
    finding 6 (e)). The news says when its connection was made: only older ones end."""
    w0, w1 = workers
    async with w1.connect("bob", "phone", reconnect=False) as bob:
        await first(bob, cc.Synced)
        w1.server.peer_kick("bob", "phone", now_ms() - 1000)  # (an older connection's)
        async with w0.connect("alice") as alice:
            await alice.send("bob", "still connected")
            assert [m.text for m in await messages(bob, 1)] == ["still connected"]
    # (the news of a newer connection ends it: the test above)


# ---- the real thing: chatd serve --workers 2 ---------------------------------------------

CHATD = [sys.executable, "-m", "chatd.cli"]


def start_node(data: Path) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([*CHATD, "serve", "--workers", "2", "--data-dir", str(data),
                             "--tcp-port", "0", "--ws-port", "-1"],
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    m = re.search(r"tcp://127.0.0.1:(\d+).*2 workers", line)
    assert m, line + proc.stderr.read()
    return proc, int(m.group(1))


def worker_pids(supervisor: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(supervisor)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


async def test_workers_share_the_port_and_survive_a_killed_worker(tmp_path: Path) -> None:
    data = tmp_path / "data"
    secret = load_or_create_secret(str(data))
    proc, port = start_node(data)
    url = f"tcp://127.0.0.1:{port}"
    users = [f"u{i}" for i in range(12)]
    try:
        clients = {}
        async with contextlib.AsyncExitStack() as stack:
            for u in users:
                clients[u] = await stack.enter_async_context(cc.connect(
                    url, make_token(secret, u), "phone"))
            seen_workers = set()
            for c in clients.values():
                conn = await first(c, cc.Connected)
                seen_workers.add(conn.session.split("-")[0])  # type: ignore[attr-defined]
            assert seen_workers == {"w0", "w1"}  # the kernel spread them over both
            for i, u in enumerate(users):  # everyone to the next one: crosses workers
                await clients[u].send(users[(i + 1) % len(users)], f"from {u}")
            for i, u in enumerate(users):
                got = await messages(clients[u], 1)
                assert got[0].text == f"from {users[i - 1]}"
            victim = worker_pids(proc.pid)[0]
            os.kill(victim, signal.SIGKILL)
            # every device reconnects (to the survivor, or the restarted worker) and
            # nothing sent before or after is lost
            for i, u in enumerate(users):
                await clients[u].send(users[(i + 1) % len(users)], f"again {u}")
            for i, u in enumerate(users):
                got = await messages(clients[u], 1, timeout=20)
                assert got[0].text == f"again {users[i - 1]}"
            with trio.fail_after(20):
                while len(worker_pids(proc.pid)) < 2 or victim in worker_pids(proc.pid):
                    await trio.sleep(0.1)  # the supervisor restarted it
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


async def test_killing_the_supervisor_takes_its_workers(tmp_path: Path) -> None:
    proc, _ = start_node(tmp_path / "data")
    pids = worker_pids(proc.pid)
    assert len(pids) == 2
    proc.kill()
    proc.wait()
    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
        except FileNotFoundError:
            return False
        return state != "Z"

    with trio.fail_after(10):
        while any(alive(p) for p in pids):
            await trio.sleep(0.05)
