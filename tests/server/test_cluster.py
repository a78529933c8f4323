"""Several chatd nodes joined through Redis (`--node-id`, `--redis`), sharing one store: 1:1,
groups, receipts and presence across nodes; a node killed with SIGKILL; Redis restarted
mid-run. Everything runs against one Redis and against a three-master Redis Cluster, with the
nodes sharing one SQLite file, and again (one Redis) with the nodes sharing Cassandra."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import chatd_client as cc
import pytest
import trio

from chatd.auth import load_or_create_secret, make_token
from chatd.router.redis import ROUTE_TTL
from chatd.server import Config
from chatd.server.app import serve

from . import scenarios
from .conftest import Node, messages
from .redis_servers import RedisCluster, RedisServer
from .scenarios import first
from .test_presence import presence


@pytest.fixture(params=["redis", "cluster"], scope="module")
def redis(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[RedisServer | RedisCluster]:
    work = tmp_path_factory.mktemp("redis")
    r = RedisServer(work) if request.param == "redis" else RedisCluster(work)
    yield r
    r.stop()


@pytest.fixture(params=["sqlite", "cassandra"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """The store the nodes share: None for the SQLite file in their data dir."""
    if request.param == "sqlite":
        return None
    if request.node.callspec.params.get("redis") == "cluster":
        pytest.skip("Cassandra runs with one Redis (the Redis Cluster is tested on SQLite)")
    cassandra = request.getfixturevalue("cassandra")
    cassandra.truncate()
    return str(cassandra.url())


@pytest.fixture
async def nodes(redis: RedisServer | RedisCluster, tmp_path: Path, store_url: str | None,
                nursery: trio.Nursery) -> AsyncIterator[list[Node]]:
    data = tmp_path / "data"
    load_or_create_secret(str(data))
    out = []
    run = secrets.token_hex(3)  # node ids unique in the module's Redis
    for i in range(3):
        cfg = Config(host="127.0.0.1", tcp_port=0, ws_port=0, data_dir=str(data),
                     node_id=f"{run}-n{i}", redis=redis.url,
                     presence_threshold=5, store=store_url)
        server = await nursery.start(lambda task_status, c=cfg: serve(
            c, task_status=task_status))
        out.append(Node(server, cfg))
    await out[0].add_users("alice", "bob", "carol")
    yield out


async def test_one_to_one_and_receipts_across_nodes(nodes: list[Node]) -> None:
    await scenarios.one_to_one_with_receipts(nodes[0], nodes[1])
    assert nodes[1].server.stats["peer_items"] > 0  # it came through Redis, not by polling


async def test_group_across_three_nodes(nodes: list[Node]) -> None:
    await scenarios.group_message(*nodes)


async def test_presence_across_nodes(nodes: list[Node]) -> None:
    await scenarios.presence_seen_elsewhere(nodes[0], nodes[2])


async def test_redis_restart_mid_run(redis: RedisServer | RedisCluster,
                                     nodes: list[Node]) -> None:
    if isinstance(redis, RedisCluster):
        pytest.skip("restarting one server of the cluster is not this test")
    n0, n1, _ = nodes
    async with n0.connect("alice") as alice, n1.connect("bob") as bob:
        await first(bob, cc.Synced)
        g = await alice.create_group("pair", ["bob"])
        await alice.send("bob", "before")
        assert "before" in [m.text for m in await messages(bob, 2)]  # (and the group event)
        redis.stop()
        sent_while_down = [await alice.send("bob", f"down {i}") for i in range(5)]
        group_ack = await alice.send(None, "to the group, Redis down", group=g.group)
        assert all(a.seq for a in sent_while_down) and group_ack.seq  # SENT: stored
        redis.start()  # empty: registrations, streams and fan-out jobs are gone
        got = await messages(bob, 6, timeout=30)  # re-registered; bob re-read the store
        assert sorted(m.text for m in got) == sorted(
            [f"down {i}" for i in range(5)] + ["to the group, Redis down"])  # fan-out job
        # added again from the store when the nodes rejoined
        await alice.send("bob", "after")
        assert (await messages(bob, 1, timeout=20))[0].text == "after"


async def test_a_node_that_saw_no_error_notices_redis_came_back_empty(
        redis: RedisServer | RedisCluster, nodes: list[Node]) -> None:
    """Redis restarted empty between two heartbeats, and no request of bob's node failed
    meanwhile: the node used to carry on as if nothing happened, its devices gone from the
    registry, so what alice sent afterwards reached bob only when he reconnected. Its
    heartbeat now sees its own key gone, and it registers its devices again."""
    if isinstance(redis, RedisCluster):
        pytest.skip("restarting one server of the cluster is not this test")
    n0, n1, _ = nodes
    async with n0.connect("alice") as alice, n1.connect("bob") as bob:
        await first(bob, cc.Synced)
        await alice.send("bob", "before")
        assert [m.text for m in await messages(bob, 1)] == ["before"]
        redis.stop()
        redis.start()  # (blocks: no node runs while Redis is away)
        await trio.sleep(ROUTE_TTL + 1)  # (past the route alice's node has cached)
        await alice.send("bob", "after")
        assert [m.text for m in await messages(bob, 1, timeout=15)] == ["after"]


class CuttableProxy:
    """A TCP proxy in front of Redis whose connections the test cuts: Redis goes away for one
    node only, the others carry on."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.down = False
        self._scopes: set[trio.CancelScope] = set()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    def cut(self) -> None:
        self.down = True
        for scope in self._scopes:
            scope.cancel()

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if self.down:
                return
            async with await trio.open_tcp_stream("127.0.0.1", self.target) as upstream, \
                    trio.open_nursery() as nursery:
                self._scopes.add(nursery.cancel_scope)

                async def pump(a: trio.SocketStream, b: trio.SocketStream) -> None:
                    with contextlib.suppress(trio.BrokenResourceError,
                                             trio.ClosedResourceError):
                        while data := await a.receive_some(65536):
                            await b.send_all(data)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(pump, client, upstream)
                nursery.start_soon(pump, upstream, client)
            self._scopes.discard(nursery.cancel_scope)


@pytest.fixture
async def proxied(redis: RedisServer | RedisCluster, tmp_path: Path, nursery: trio.Nursery
                  ) -> tuple[CuttableProxy, Node, Node]:
    """Two nodes on one Redis, the first through a proxy the test can cut."""
    if isinstance(redis, RedisCluster):
        pytest.skip("one proxied Redis is this test")
    proxy = CuttableProxy(int(redis.url.rpartition(":")[2]))
    await nursery.start(proxy.run)
    data = tmp_path / "data"
    load_or_create_secret(str(data))
    run = secrets.token_hex(3)
    nodes = []
    for i, url in enumerate([f"redis://127.0.0.1:{proxy.port}", redis.url]):
        cfg = Config(host="127.0.0.1", tcp_port=0, ws_port=0, data_dir=str(data),
                     node_id=f"{run}-n{i}", redis=url, presence_threshold=60)
        server = await nursery.start(lambda task_status, c=cfg: serve(
            c, task_status=task_status))
        nodes.append(Node(server, cfg))
    await nodes[0].add_users("alice", "bob")
    return proxy, nodes[0], nodes[1]


async def test_what_one_node_could_not_pass_on_reaches_the_other_node_when_redis_is_back(
        proxied: tuple[CuttableProxy, Node, Node]) -> None:
    """Redis away for alice's node only: what she sent meanwhile is stored (Sent) but could
    not be handed to bob's node, which saw nothing wrong and had no reason to re-read the
    store. Alice's node used to drop those items; now, when Redis answers again, it has the
    nodes of their users re-read the store."""
    proxy, n0, n1 = proxied
    async with n0.connect("alice") as alice, n1.connect("bob") as bob:
        await first(bob, cc.Synced)
        await alice.send("bob", "before")
        assert [m.text for m in await messages(bob, 1)] == ["before"]
        await trio.sleep(ROUTE_TTL + 1.5)  # (past the re-read that follows a registration)
        proxy.cut()
        for i in range(3):
            assert (await alice.send("bob", f"blip {i}")).seq  # stored
            await trio.sleep(0.3)
        proxy.down = False
        got = await messages(bob, 3, timeout=15)
        assert [m.text for m in got] == [f"blip {i}" for i in range(3)]


async def test_presence_and_privacy_hold_across_a_redis_outage_of_one_node(
        proxied: tuple[CuttableProxy, Node, Node]) -> None:
    """When a node is back in touch with Redis it tells its peers to forget what it said
    about presence: it used to say nothing more, so alice, online all along, showed offline on
    bob's node; and her hiding her last seen while Redis was away for her node was lost, so
    bob's node kept showing it."""
    proxy, n0, n1 = proxied
    async with n1.connect("bob") as bob:
        await bob.watch(["alice"])
        assert not (await presence(bob, "alice")).online  # (bob's node read her setting)
        async with n0.connect("alice") as alice:
            await first(alice, cc.Synced)
            assert (await presence(bob, "alice", timeout=10)).online
            proxy.cut()
            await alice.hide_last_seen(True)  # stored; her node cannot tell the others
            await trio.sleep(1.0)
            proxy.down = False
            with trio.fail_after(15):
                while not n0.server.peers.healthy.is_set():  # type: ignore[union-attr]
                    await trio.sleep(0.05)
            await trio.sleep(1.0)  # (what her node said on rejoining has reached bob's)
            assert (await bob.last_seen("alice")).online
        with trio.fail_after(10):  # (past the states her node's return announced)
            while (p := await presence(bob, "alice")).online:
                pass
        assert p.last_seen is None  # hidden


async def test_live_delivery_across_nodes_resumes_after_a_long_redis_outage(
        redis: RedisServer | RedisCluster, nodes: list[Node]) -> None:
    """While Redis is away a node retries every 0.5 s; its stream reader waits for it to
    come back. It used to wait on an Event each retry replaced, so it never read again: what
    came from other nodes reached devices only through the resyncs right after."""
    if isinstance(redis, RedisCluster):
        pytest.skip("restarting one server of the cluster is not this test")
    n0, n1, _ = nodes
    async with n0.connect("alice") as alice, n1.connect("bob") as bob:
        await first(bob, cc.Synced)
        redis.stop()
        for i in range(8):  # the nodes notice (a send fails) and retry, many times
            await alice.send("bob", f"while down {i}")
            await trio.sleep(0.5)
        redis.start()
        assert len(await messages(bob, 8, timeout=30)) == 8  # (the resyncs)
        with trio.fail_after(20):
            while not all(n.server.peers.healthy.is_set() for n in (n0, n1)):  # type: ignore[union-attr]
                await trio.sleep(0.05)
        await trio.sleep(5)  # past the resyncs that follow a re-registration
        await alice.send("bob", "live again")
        assert (await messages(bob, 1, timeout=5))[0].text == "live again"


async def test_a_device_that_moved_to_another_node_keeps_getting_messages(
        nodes: list[Node]) -> None:
    """A device's connection to one node ends after the same device connected to another
    (a client that gave up on a node that did not answer and tried the next one: the old
    session is ended by the newer connection's news). The old node's leaving wrote used to
    delete the device's registry entry, whatever node it named: from then on no node passed
    it anything, and an online device got nothing until it reconnected (the chaos checker's
    "lost", with the items in the inbox above the device's cursor). It is deleted now only
    while it names the node that deletes it."""
    from bench.common import RawClient

    n0, n1, n2 = nodes
    old = await RawClient.connect(n0.server.tcp_port, n0.token("alice"), "phone")
    try:
        with trio.fail_after(10):  # registered by n0, and its news sent to the others
            while not n0.server.peers._attached.get(("alice", "phone")):  # type: ignore[union-attr]
                await trio.sleep(0.05)
        await trio.sleep(1)  # (read by them: else it ends the newer connection below)
        async with n2.connect("bob") as bob, n1.connect("alice", "phone") as new:
            await first(new, cc.Synced)
            with trio.fail_after(10):  # the older connection is ended by the newer one's news
                while any(s.device == "phone" for s in n0.server.router.targets("alice")):
                    await trio.sleep(0.05)
            await trio.sleep(ROUTE_TTL + 2)  # past the read of the store after registering
            await bob.send("alice", "after the move")
            assert (await messages(new, 1, timeout=10))[0].text == "after the move"
    finally:
        await old.stream.aclose()


# ---- real processes: SIGKILL one node ------------------------------------------------------

CHATD = [sys.executable, "-m", "chatd.cli"]


@contextlib.contextmanager
def node_process(data: Path, node_id: str, redis_url: str,
                 store_url: str | None) -> Iterator[tuple[Any, int]]:
    log = data.parent / f"{node_id}.log"  # a file, not a pipe nobody reads: it never fills
    store = ["--store", store_url] if store_url else []
    with open(log, "w") as err:
        proc = subprocess.Popen([*CHATD, "serve", "--workers", "1", "--data-dir", str(data),
                                 "--tcp-port", "0", "--ws-port", "-1", "--node-id", node_id,
                                 "--redis", redis_url, *store], stderr=err, text=True)
    deadline = time.monotonic() + 30
    while not (m := re.search(r"tcp://127.0.0.1:(\d+)", log.read_text())):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    try:
        yield proc, int(m.group(1))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


async def test_a_killed_node_loses_nothing_sent(redis: RedisServer | RedisCluster,
                                                tmp_path: Path, store_url: str | None) -> None:
    data = tmp_path / "data"
    secret = load_or_create_secret(str(data))
    with contextlib.ExitStack() as stack:
        run = secrets.token_hex(3)
        procs = [stack.enter_context(node_process(data, f"{run}-k{i}", redis.url, store_url))
                 for i in range(3)]
        urls = [f"tcp://127.0.0.1:{port}" for _, port in procs]
        async with contextlib.AsyncExitStack() as astack:
            # bob is on node 0 first (his URL list starts there), alice on node 1
            bob = await astack.enter_async_context(cc.connect(
                [urls[0], urls[2]], make_token(secret, "bob"), "phone"))
            alice = await astack.enter_async_context(cc.connect(
                [urls[1], urls[2]], make_token(secret, "alice"), "phone"))
            await first(bob, cc.Synced)
            await alice.send("bob", "one")
            assert (await messages(bob, 1))[0].text == "one"
            os.kill(procs[0][0].pid, signal.SIGKILL)  # bob's node dies
            sent = [await alice.send("bob", f"after {i}") for i in range(10)]
            assert all(a.seq for a in sent)
            # bob fails over to node 2; the registry still names dead node 0 until it
            # expires, but nothing is black-holed: bob reads the store on connect
            got = await messages(bob, 10, timeout=30)
            assert [m.text for m in got] == [f"after {i}" for i in range(10)]
            await alice.send("bob", "live again")
            assert (await messages(bob, 1, timeout=20))[0].text == "live again"
