"""Online / last seen over real sockets; multi-device read sync; presence under pressure."""

from __future__ import annotations

import time

import chatd_client as cc
import pytest
import trio

from chatd.protocol import frames as F

from .conftest import Node, StartNode
from .raw import Raw


async def presence(client: cc.Client, user: str, timeout: float = 5) -> cc.Presence:
    with trio.fail_after(timeout):
        while True:
            p = await client.next_event(cc.Presence)
            assert isinstance(p, cc.Presence)
            if p.user == user:
                return p


async def test_online_then_last_seen(start_node: StartNode) -> None:
    node = await start_node(presence_threshold=0.5, idle_timeout=5)
    await node.add_users("alice", "bob")
    async with node.connect("bob") as bob:
        await bob.watch(["alice"])
        first = await presence(bob, "alice")
        assert not first.online and first.last_seen is None  # never seen
        before = int(time.time() * 1000)
        async with node.connect("alice") as alice:
            assert (await presence(bob, "alice")).online
            # idle past the threshold: offline, last seen = her last activity
            p = await presence(bob, "alice", timeout=5)
            assert not p.online and p.last_seen is not None and p.last_seen >= before
            await alice.send("bob", "back")  # activity: online again
            assert (await presence(bob, "alice")).online
        p = await presence(bob, "alice")  # disconnected: offline at once
        assert not p.online
        assert (await bob.last_seen("alice")).last_seen == p.last_seen
    stored, hidden = await node.server.store.presence_of("alice")
    assert stored == p.last_seen and not hidden  # persisted for after a restart


async def test_background_connections_are_not_activity(node: Node) -> None:
    async with node.connect("bob") as bob:
        await bob.watch(["alice"])
        await presence(bob, "alice")
        async with node.connect("alice", "sync", background=True) as sync:
            await sync.next_event(cc.Synced)  # (the server counted any activity before Welcome)
            assert not (await bob.last_seen("alice")).online
            async with node.connect("alice", "phone"):  # a foreground connect is activity
                assert (await presence(bob, "alice")).online
            p = await presence(bob, "alice")  # the app closed: offline, background or not
            assert not p.online and p.last_seen is not None


async def test_the_default_presence_threshold_is_30_seconds(node: Node,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """The node fixture keeps the default settings: a user is online while active within
    30 s (PROTOCOL.md section 5, README). The presence clock is moved on instead of waiting."""
    from chatd.server import presence as presence_module

    assert node.config.presence_threshold == 30
    offset = 0.0

    def clock() -> int:
        return int((time.time() + offset) * 1000)

    monkeypatch.setattr(presence_module, "now_ms", clock)
    async with node.connect("bob") as bob, node.connect("alice") as alice:
        await alice.next_event(cc.Synced)
        await bob.watch(["alice"])
        assert (await presence(bob, "alice")).online
        offset = 29
        await node.server.presence.check()  # (the sweeper does this every second)
        assert (await bob.last_seen("alice")).online
        offset = 31
        p = await presence(bob, "alice", timeout=10)
        assert not p.online and p.last_seen is not None
        assert time.time() * 1000 - 5000 < p.last_seen <= time.time() * 1000


async def test_hidden_last_seen_both_ways(node: Node) -> None:
    async with node.connect("alice") as alice:
        await alice.send("bob", "hi")
    async with node.connect("carol") as carol:
        await carol.send("bob", "hi")
    async with node.connect("bob") as bob:
        assert (await bob.last_seen("alice")).last_seen is not None
        async with node.connect("alice", "phone") as alice:
            await alice.hide_last_seen()
            assert (await alice.last_seen("carol")).last_seen is None  # reciprocal
        with trio.fail_after(5):  # (the server sees alice leave a moment after she does)
            while (p := await bob.last_seen("alice")).online:
                await trio.sleep(0.02)
        assert p.last_seen is None
        assert cc.presence_text(p) == "offline"
        assert (await bob.last_seen("carol")).last_seen is not None


async def test_reading_on_one_device_marks_read_on_the_others(node: Node) -> None:
    async with node.connect("bob", "laptop") as laptop:  # register both devices
        await laptop.next_event(cc.Synced)
    async with node.connect("bob", "phone") as phone, node.connect("alice") as alice:
        ack = await alice.send("bob", "read me anywhere")
        m = await phone.next_event(cc.Message)
        assert isinstance(m, cc.Message)
        await phone.mark_read(m.conv, m.seq)
        await alice.next_event(cc.Read)
    async with node.connect("bob", "laptop") as laptop:
        with trio.fail_after(5):
            r = await laptop.next_event(cc.Read)
        assert isinstance(r, cc.Read) and r.by == "bob" and r.seqs == (ack.seq,)


async def test_presence_gives_way_to_messages(start_node: StartNode) -> None:
    node = await start_node(max_queue=400, send_rate=1e6, send_burst=1e6)
    users = [f"u{i}" for i in range(20)]
    await node.add_users("alice", "bob", *users)
    bob = await Raw.open(node.server.tcp_port)
    await bob.hello(node.token("bob"), "phone")
    await bob.recv_until(F.Synced)
    await bob.send(F.PresenceSubscribe(users=tuple(users)))
    # bob stops reading; his queue fills with messages while everyone he watches comes
    # and goes
    n = 300
    async with node.connect("alice") as alice:
        for i in range(n):
            await alice.send("bob", b"m" * 4000 + str(i).encode())
    for _ in range(3):
        for u in users:
            async with node.connect(u):
                pass
    with trio.fail_after(10):  # (the last disconnects are announced by tasks of the node)
        while not node.server.stats["presence_coalesced"]:
            await trio.sleep(0.01)
    assert node.server.stats["slow_consumers"] == 0
    frames = []
    last: dict[str, F.Presence] = {}

    def done() -> bool:  # every message, and every watched user's last state: offline
        return (sum(isinstance(f, F.Deliver) for f in frames) == n and set(last) == set(users)
                and not any(p.online for p in last.values()))

    with trio.fail_after(20):
        while not done():
            f = await bob.recv()
            assert f is not None, "bob was disconnected"
            frames.append(f)
            if isinstance(f, F.Deliver):
                await bob.send(F.Ack(upto=f.q))
            elif isinstance(f, F.Presence):
                last[f.user] = f
    assert [f.seq for f in frames if isinstance(f, F.Deliver)] == list(range(1, n + 1))
    updates = [f for f in frames if isinstance(f, F.Presence)]
    # 20 initial states + 6 transitions per user were due: far fewer came
    assert len(updates) < 20 + 6 * len(users)
    assert node.server.stats["slow_consumers"] == 0


def test_presence_text_for_people() -> None:
    now = time.mktime((2026, 11, 28, 15, 0, 0, 0, 0, -1))
    ms = lambda t: int(t * 1000)  # noqa: E731
    assert cc.presence_text(cc.Presence("a", True), now) == "online"
    assert cc.presence_text(cc.Presence("a", False, ms(now - 20)), now) == "last seen just now"
    assert cc.presence_text(cc.Presence("a", False, ms(now - 300)), now) == \
        "last seen 5 minutes ago"
    assert cc.presence_text(cc.Presence("a", False, ms(now - 4 * 3600)), now) == \
        "last seen today at 11:00"
    yesterday = time.mktime((2026, 11, 27, 14, 2, 0, 0, 0, -1))
    assert cc.presence_text(cc.Presence("a", False, ms(yesterday)), now) == \
        "last seen yesterday at 14:02"
    march = time.mktime((2026, 3, 3, 18, 40, 0, 0, 0, -1))
    assert cc.presence_text(cc.Presence("a", False, ms(march)), now) == \
        "last seen 3 Mar at 18:40"
