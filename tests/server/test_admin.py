"""`chatd admin` against real nodes: revoking a device (its open connection ends, its token is
refused, the user's other devices carry on), revoking every device across two workers, and
deleting a user (connections end, groups see them leave, their data goes)."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
from pathlib import Path
from typing import Any

import chatd_client as cc
import msgpack
import pytest
import trio

from chatd import cli
from chatd.auth import _b64, load_or_create_secret, make_token
from chatd.server import Config
from chatd.server.app import Worker, serve

from .conftest import Node, StartNode, messages
from .scenarios import first


async def admin(node: Node, *args: str) -> int:
    """Run `chatd admin ARGS` against the node's store (as an operator would: its own
    process's trio run, in a thread here)."""
    cfg = node.config
    argv = ["admin", *args[:1], "--data-dir", cfg.data_dir, "--store", cfg.store_url, *args[1:]]
    return await trio.to_thread.run_sync(cli.main, argv)


async def ended_as_revoked(connecting: Any, sessions: list[str] | None = None) -> None:
    """The connection (a cc.connect(...) not entered yet) ends with the server's
    UNAUTHENTICATED error. Its session name goes to `sessions` once it is up."""
    with pytest.raises(cc.ChatdError, match="revoked") as info:
        with trio.fail_after(15):  # (the poll runs every second; this is only a safety net)
            async with connecting as client:
                await first(client, cc.Synced)
                if sessions is not None:
                    sessions.append(client.session)
                await trio.sleep_forever()
    assert info.value.name == "UNAUTHENTICATED"


@pytest.fixture
async def revocable(start_node: StartNode) -> Node:
    n: Node = await start_node()
    await n.add_users("alice", "bob", "carol")
    return n


async def test_a_revoked_device_is_closed_refused_and_the_others_carry_on(
        revocable: Node, capsys: pytest.CaptureFixture[str]) -> None:
    node = revocable
    token = node.token("bob")  # (no device in it: any device name)
    async with node.connect("alice") as alice, \
            cc.connect(node.tcp, token, "laptop") as laptop:
        await first(laptop, cc.Synced)
        phone = cc.connect(node.tcp, token, "phone", reconnect=False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ended_as_revoked, phone)
            with trio.fail_after(10):
                while ("bob", "phone") not in {(s.user, s.device)
                                               for s in node.server.sessions()}:
                    await trio.sleep(0.01)
            assert await admin(node, "revoke", "bob", "--device", "phone") == 0
        assert "revoked the tokens of device 'phone'" in capsys.readouterr().out
        # the laptop, with the very same token, still works
        await alice.send("bob", "still here?")
        assert [m.text for m in await messages(laptop, 1)] == ["still here?"]
    # the phone's token is refused from now on; a token made after the revocation works
    with pytest.raises(cc.ChatdError, match="revoked"):
        async with cc.connect(node.tcp, token, "phone", reconnect=False):
            pass
    await trio.sleep(0.002)  # (a token of the revocation's very millisecond is void too)
    async with cc.connect(node.tcp, node.token("bob"), "phone") as phone:
        assert [m.text for m in await messages(phone, 1)] == ["still here?"]
    assert await admin(node, "devices", "bob", "--json") == 0
    listing = json.loads(capsys.readouterr().out)
    devices = {d["device"]: d for d in listing["devices"]}
    assert set(devices) == {"laptop", "phone"}
    assert devices["phone"]["revoked_at"] > 0 and devices["laptop"]["revoked_at"] == 0


async def test_old_tokens_without_issue_time_work_until_a_revocation(revocable: Node) -> None:
    node = revocable
    payload = msgpack.packb([1, "carol", None, 2**40])  # as chatd made them before 0.2.0
    sig = hmac.new(node.server.secret, payload, hashlib.sha256).digest()
    old = f"{_b64(payload)}.{_b64(sig)}"
    async with cc.connect(node.tcp, old, "phone") as carol:
        await first(carol, cc.Synced)
    assert await admin(node, "revoke", "carol") == 0
    with pytest.raises(cc.ChatdError, match="revoked"):
        async with cc.connect(node.tcp, old, "phone", reconnect=False):
            pass


async def test_revoking_unknown_users_or_devices_says_so(
        revocable: Node, capsys: pytest.CaptureFixture[str]) -> None:
    assert await admin(revocable, "revoke", "nobody") == 1
    assert "no user 'nobody'" in capsys.readouterr().err
    assert await admin(revocable, "revoke", "bob", "--device", "toaster") == 1
    assert "has no device 'toaster'" in capsys.readouterr().err


async def test_revoking_every_device_closes_them_on_both_workers(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    data = tmp_path / "data"
    nodes = []
    for i in range(2):  # two workers of one node, each with its own store connection
        cfg = Config(host="127.0.0.1", tcp_port=0, ws_port=-1, data_dir=str(data))
        server = await nursery.start(lambda task_status, c=cfg, i=i: serve(
            c, worker=Worker(i, 2, str(data / "run")), task_status=task_status))
        nodes.append(Node(server, cfg))
    w0, w1 = nodes
    await w0.add_users("alice", "bob", "carol")
    async with w0.connect("alice") as alice:
        async with trio.open_nursery() as inner:
            inner.start_soon(ended_as_revoked, w0.connect("bob", "phone", reconnect=False))
            inner.start_soon(ended_as_revoked, w1.connect("bob", "laptop", reconnect=False))
            with trio.fail_after(10):
                while len(w0.server.sessions()) + len(w1.server.sessions()) < 3:
                    await trio.sleep(0.01)
            assert await admin(w0, "revoke", "bob") == 0
        assert w0.server.stats["revoked_connections"] == 1
        assert w1.server.stats["revoked_connections"] == 1
        async with w1.connect("carol") as carol:  # the workers carry on for the others
            await alice.send("carol", "still here")
            assert [m.text for m in await messages(carol, 1)] == ["still here"]


async def test_deleting_a_user(revocable: Node, capsys: pytest.CaptureFixture[str]) -> None:
    node = revocable
    bobs_token = node.token("bob")
    async with node.connect("alice") as alice:
        group = await alice.create_group("Family", ["bob", "carol"])
        await alice.send("bob", "hello bob")
        async with node.connect("bob", "phone") as bob:
            await messages(bob, 1)
            await bob.send("alice", "bye, all")
            await bob.send(None, "leaving soon", group=group.group)
        await messages(alice, 2)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ended_as_revoked, node.connect("bob", "phone", reconnect=False))
            with trio.fail_after(10):
                while "bob" not in {s.user for s in node.server.sessions()}:
                    await trio.sleep(0.01)
            assert await admin(node, "delete-user", "bob", "--yes") == 0
        assert "deleted 'bob' (left 1 group(s))" in capsys.readouterr().out
        [left] = await messages(alice, 1)  # live: the node ran the event's fan-out
        assert left.event is not None and "bob" in json.dumps(left.event)
    assert not await node.server.store.has_user("bob")
    assert await node.server.store.devices("bob") == {}
    info = await node.server.store.group(group.group)
    assert info is not None and info.members == ("alice", "carol")
    # carol, away until now, finds bob's message and then his leaving in the group; alice
    # keeps what bob sent
    async with node.connect("carol") as carol:
        got = await messages(carol, 3)
        assert got[1].text == "leaving soon" and got[1].sender == "bob"
        assert got[2].event is not None and "bob" in json.dumps(got[2].event)
    history = await node.server.store.history("d:alice:bob", None, 10)
    assert [h.sender for h in history] == ["bob", "alice"]
    assert await node.server.store.devices("bob") == {}
    with pytest.raises(cc.ChatdError, match="revoked"):
        async with cc.connect(node.tcp, bobs_token, "phone", reconnect=False):
            pass


async def test_chatd_serve_with_two_workers_ends_every_revoked_connection(
        tmp_path: Path) -> None:
    from .test_workers import start_node

    data = tmp_path / "data"
    secret = load_or_create_secret(str(data))
    proc, port = start_node(data)
    url = f"tcp://127.0.0.1:{port}"
    node = Node(None, Config(data_dir=str(data)))  # type: ignore[arg-type]  # (for admin())
    try:
        async with cc.connect(url, make_token(secret, "alice"), "phone") as alice, \
                cc.connect(url, make_token(secret, "carol"), "phone") as carol:
            await first(carol, cc.Synced)
            token = make_token(secret, "bob")
            sessions: list[str] = []
            async with trio.open_nursery() as nursery:
                for i in range(12):  # (the kernel spreads them over both workers)
                    connecting = cc.connect(url, token, f"dev{i}", reconnect=False)
                    nursery.start_soon(ended_as_revoked, connecting, sessions)
                with trio.fail_after(10):
                    while len(sessions) < 12:
                        await trio.sleep(0.01)
                assert {s.split("-")[0] for s in sessions} == {"w0", "w1"}
                assert await admin(node, "revoke", "bob") == 0
            await alice.send("carol", "the others carry on")
            assert [m.text for m in await messages(carol, 1)] == ["the others carry on"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


# ---- the poll's decisions, without sockets ------------------------------------------------

class Conn:
    def __init__(self, user: str, device: str) -> None:
        self.user, self.device = user, device


def test_the_poll_ends_only_what_a_revocation_voids() -> None:
    from chatd.admin import RevocationWatch, is_void
    from chatd.store.base import Revocation

    assert not is_void(0, 0) and is_void(0, 5) and is_void(5, 5) and not is_void(6, 5)
    watch = RevocationWatch()
    phone, laptop, fresh, other = (Conn("bob", "phone"), Conn("bob", "laptop"),
                                   Conn("bob", "tv"), Conn("alice", "phone"))
    for conn, issued in ((phone, 100), (laptop, 100), (fresh, 900), (other, 100)):
        watch.connected(conn, issued)
    live: dict[str, list[Any]] = {"bob": [phone, laptop, fresh], "alice": [other]}
    assert watch.to_end([Revocation("bob", "phone", 500)], live) == [phone]
    # every device, read twice (the poll's window overlaps): each once, the newer token stays
    assert watch.to_end([Revocation("bob", None, 500)] * 2, live) == [phone, laptop]
    watch.gone(phone)
    assert len(watch) == 3


def test_delete_user_asks_first_and_will_not_guess_without_a_terminal(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "chatd.cli", "admin", "delete-user", "bob",
                          "--data-dir", str(tmp_path / "data")], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "delete-user needs --yes when not run from a terminal" in out.stderr
