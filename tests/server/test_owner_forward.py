"""Two chatd nodes on one Cassandra with numbering=owner, joined through Redis: a send that
arrives at a node which does not own its chat is forwarded to the owner (and its Sent comes
back); the owner's inbox appends go to each inbox's owner (docs/CASSANDRA.md, "Conversation
owners")."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import chatd_client as cc
import pytest
import trio

from bench.cassandra import CassandraNode
from bench.common import RawClient
from chatd.auth import load_or_create_secret
from chatd.core import Delivery, convs
from chatd.core.owners import owner, shard_of
from chatd.core.values import now_ms
from chatd.protocol import ErrorCode
from chatd.protocol import frames as F
from chatd.router import calls
from chatd.server import Config
from chatd.server.app import Worker, serve
from chatd.store import CassandraStore, NewMessage, open_store

from . import scenarios
from .conftest import Node
from .redis_servers import RedisCluster, RedisServer

CONV = "d:alice:bob"
# the calls between nodes on a Redis Cluster too (its keys hash to three masters)
ALSO_CLUSTER = pytest.mark.parametrize("two", ["nodes", "workers", "nodes-redis-cluster"],
                                       indirect=True)


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    r = RedisServer(tmp_path_factory.mktemp("redis"))
    yield r
    r.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    r = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    yield r
    r.stop()


def split_ids(run: int) -> tuple[str, str]:
    """Two node ids under which the chat and bob's inbox have different owners (so a send
    is forwarded one way and its inbox append the other, whichever node gets it)."""
    for i in itertools.count(run * 1000):
        a, b = f"fw{i}-a", f"fw{i}-b"
        if owner(shard_of(CONV), [a, b]) != owner(shard_of("bob"), [a, b]):
            return a, b
    raise AssertionError


@pytest.fixture(params=["nodes", "workers"])
async def two(request: pytest.FixtureRequest, cassandra: CassandraNode, tmp_path: Path,
              nursery: trio.Nursery) -> AsyncIterator[tuple[Node, Node, str]]:
    """Two nodes joined through Redis (one server; "nodes-redis-cluster": a Redis Cluster of
    three masters, for the tests of what crosses Redis, ALSO_CLUSTER); or
    the two workers of one node, without Redis (`chatd serve --workers 2`: each worker is a
    node, their calls go by Unix datagrams; the chat is then owned by w0, bob's inbox by w0,
    alice's by w1)."""
    cassandra.truncate()
    url = cassandra.url(numbering="owner", timeout="2", lease="9")
    data = tmp_path / "data"
    load_or_create_secret(str(data))
    out = []
    if request.param == "workers":
        ids: tuple[str, ...] = ("w0", "w1")
        for i in range(2):
            cfg = Config(host="127.0.0.1", tcp_port=0, ws_port=0, data_dir=str(data),
                         store=url, send_burst=1000)  # (workers share a user's rate)
            out.append(Node(await nursery.start(lambda task_status, c=cfg, i=i: serve(
                c, worker=Worker(i, 2, str(data / "run")), task_status=task_status)), cfg))
    else:
        redis: RedisServer | RedisCluster = request.getfixturevalue(
            "redis" if request.param == "nodes" else "redis_cluster")
        ids = split_ids(int(trio.current_time() * 1000) % 1000)
        for node_id in ids:
            cfg = Config(host="127.0.0.1", tcp_port=0, ws_port=0, data_dir=str(data),
                         node_id=node_id, redis=redis.url, store=url, send_burst=1000)
            out.append(Node(await nursery.start(serve, cfg), cfg))
    await out[0].add_users("alice", "bob", "carol")
    with trio.fail_after(15):  # each node sees both alive (its heartbeat), so both agree
        while any(n.server.peers.live_nodes() != sorted(ids)  # type: ignore[union-attr]
                  for n in out):
            await trio.sleep(0.1)
    yield out[0], out[1], url


async def send_until_sent(node: Node, device: str, cid: str, body: bytes) -> F.Sent:
    """Send one message as alice through node, again on a new connection while it is refused
    (the same client id: what an SDK does)."""
    with trio.fail_after(60):
        while True:
            try:
                c = await RawClient.connect(node.server.tcp_port, node.token("alice"), device)
                try:
                    await c.send(F.Send(id=cid, to="bob", body=body))
                    while True:
                        f = await c.next()
                        if isinstance(f, F.Sent) and f.id == cid:
                            return f
                        if isinstance(f, F.Error):
                            break
                finally:
                    await c.stream.aclose()
            except (RuntimeError, EOFError, OSError, trio.BrokenResourceError):
                pass
            await trio.sleep(0.2)


@ALSO_CLUSTER
async def test_eight_writers_through_two_nodes_share_one_sequence_through_the_owner(
        two: tuple[Node, Node, str]) -> None:
    """The several-writer test through real nodes: 8 devices of alice, half on each node,
    send 25 messages each into one chat at once. Seqs are exactly 1..200, bob's inbox holds
    each once in seq order per writer, and every send again through the other node is a
    duplicate with its seq."""
    a, b, url = two
    seqs: dict[str, int] = {}

    async def writer(w: int) -> None:
        node = (a, b)[w % 2]
        c = await RawClient.connect(node.server.tcp_port, node.token("alice"), f"w{w}")
        try:
            for i in range(25):
                cid = f"w{w}-{i}"
                await c.send(F.Send(id=cid, to="bob", body=b"%d" % i))
                while not isinstance(f := await c.next(), F.Sent):
                    assert not isinstance(f, F.Error), f
                assert f.id == cid
                seqs[cid] = f.seq
        finally:
            await c.stream.aclose()

    async with open_store(url) as reader:
        await reader.attach_device("bob", "phone")
        with trio.fail_after(120):
            async with trio.open_nursery() as n:
                for w in range(8):
                    n.start_soon(writer, w)
        assert sorted(seqs.values()) == list(range(1, 201))
        page = await reader.inbox("bob", "phone", 0, 1000)
        got = [i for i in page.items if isinstance(i, Delivery)]
        assert sorted(i.seq for i in got) == list(range(1, 201))
        assert [i.q for i in got] == list(range(1, 201))
        for w in range(8):
            mine = [i.seq for i in got if i.id.startswith(f"w{w}-")]
            assert mine == sorted(mine)
        for cid, seq in seqs.items():  # retries, through the other node
            w = int(cid[1])
            again = await send_until_sent((b, a)[w % 2], f"w{w}", cid, b"retry")
            assert again.seq == seq
        assert (await reader.inbox("bob", "phone", 0, 1000)).upto == 200


@ALSO_CLUSTER
async def test_one_to_one_between_users_on_two_nodes_arrives_once_in_order(
        two: tuple[Node, Node, str]) -> None:
    """alice on one node and bob on the other send to each other at once, each on one
    connection: every send is answered Sent (none refused: the node that does not own the
    chat forwards it), and each gets every message of the other exactly once, in order."""
    a, b, _ = two
    got: dict[str, list[F.Deliver]] = {"alice": [], "bob": []}
    sent: dict[str, list[F.Sent]] = {"alice": [], "bob": []}

    async def talk(node: Node, me: str, to: str) -> None:
        c = await RawClient.connect(node.server.tcp_port, node.token(me), "phone")
        try:
            await c.send(*(F.Send(id=f"{me}-{i}", to=to, body=b"%d" % i) for i in range(30)))
            while len(sent[me]) < 30 or len(got[me]) < 30:
                f = await c.next()
                assert not isinstance(f, F.Error), f
                if isinstance(f, F.Sent):
                    sent[me].append(f)
                elif isinstance(f, F.Deliver):
                    got[me].append(f)
                    await c.send(F.Ack(upto=f.q))
        finally:
            await c.stream.aclose()

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            n.start_soon(talk, a, "alice", "bob")
            n.start_soon(talk, b, "bob", "alice")
    for me, other in (("alice", "bob"), ("bob", "alice")):
        assert [f.body for f in got[me]] == [b"%d" % i for i in range(30)]
        assert all(f.sender == other for f in got[me])
        assert [f.seq for f in got[me]] == sorted(f.seq for f in sent[other])
    assert sorted(f.seq for f in sent["alice"] + sent["bob"]) == list(range(1, 61))


@ALSO_CLUSTER
async def test_group_message_across_two_nodes_through_the_owners(
        two: tuple[Node, Node, str]) -> None:
    """alice (on one node) makes a group with bob (on the other) and carol: both get her
    message, and she gets the DELIVERED receipt, whichever nodes own the group and the
    members' inboxes (the fan-out's appends go to each inbox's owner)."""
    a, b, _ = two
    await scenarios.group_message(a, b, a)
    await scenarios.group_message(b, a, b)


def group_owned_by(node: Node, nodes: tuple[Node, Node], prefix: str) -> str:
    """A group id (prefix + a number) whose chat `node` owns among `nodes`."""
    ids = [n.server.node_id for n in nodes]
    return next(f"{prefix}{i}" for i in itertools.count()
                if owner(shard_of(convs.of_group(f"{prefix}{i}")), ids) == node.server.node_id)


async def fanouts_settled(nodes: tuple[Node, ...]) -> dict[str, int]:
    """Once no fan-out job is left (listed in the store or running on a node): the jobs each
    node ran to their end."""
    stores = [n.server.store for n in nodes]
    assert all(isinstance(s, CassandraStore) for s in stores)
    with trio.fail_after(30):
        while await stores[0].pending_fanouts() or any(
                s.fanout_pending for s in stores):  # type: ignore[attr-defined]
            await trio.sleep(0.05)
    return {n.server.node_id: n.server.store.fanouts_run for n in nodes}  # type: ignore[attr-defined]


async def texts(client: cc.Client, n: int, timeout: float = 30) -> list[str]:
    """The next n messages' texts (chat events skipped)."""
    out: list[str] = []
    with trio.fail_after(timeout):
        while len(out) < n:
            m = await client.next_event(cc.Message)
            assert isinstance(m, cc.Message)
            if m.event is None:
                out.append(m.text)
    return out


async def test_a_groups_fan_out_runs_on_the_groups_owner(two: tuple[Node, Node, str]) -> None:
    """alice, on the node that does not own her group, sends to it: each message's fan-out
    job runs on the group's owner (the node that numbered it, with no hop through Redis),
    none on her node, and both members, one on each node, get every message. (Before, with
    Redis, whichever node read the job from a Redis stream ran it.)"""
    a, b, _ = two
    g = group_owned_by(a, (a, b), "team")
    await b.server.store.create_group(g, "team", "alice", ["bob", "carol"], ts=now_ms())
    async with b.connect("alice") as alice, b.connect("bob") as bob, \
            a.connect("carol") as carol:
        await scenarios.first(bob, cc.Synced)
        await scenarios.first(carol, cc.Synced)
        before = await fanouts_settled((a, b))
        for i in range(8):
            await alice.send(None, f"m{i}", group=g)
        for member in (bob, carol):
            assert await texts(member, 8) == [f"m{i}" for i in range(8)]
        after = await fanouts_settled((a, b))
    ran = {node: after[node] - before[node] for node in after}
    assert ran == {a.server.node_id: 8, b.server.node_id: 0}


async def test_a_fan_out_its_node_never_ran_is_run_by_the_groups_owner(
        two: tuple[Node, Node, str]) -> None:
    """A group message whose node went away right after committing it (and its job): here a
    store that commits and closes without running the job, as a node SIGKILLed just after
    SENT would. The group's owner finds the job in the store and runs it: both members get
    the message within seconds. (Before, a job reached the other nodes only through the
    Redis stream, which that node never added it to, and was run only when some node
    restarted.)"""
    a, b, url = two
    g = group_owned_by(a, (a, b), "orphan")
    async with b.connect("bob") as bob, a.connect("carol") as carol:
        await scenarios.first(bob, cc.Synced)
        await scenarios.first(carol, cc.Synced)
        async with open_store(url) as gone:
            gone.fanout_mode = "external"  # type: ignore[attr-defined]  (runs none of its jobs)
            await gone.create_group(g, "team", "alice", ["bob", "carol"], ts=now_ms())
            await gone.append_message(NewMessage("alice", "phone", "left-1", convs.of_group(g),
                                                 (), b"left behind", now_ms(), group=g))
        for member in (bob, carol):
            assert await texts(member, 1) == ["left behind"]
    await fanouts_settled((a, b))


@pytest.mark.parametrize("how", ["withheld", "refused"])
async def test_a_forwarded_send_that_fails_alone_is_answered_alone_and_sent_again(
        two: tuple[Node, Node, str], monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """alice sends through the node that does not own the chat, and the owner's answer to the
    first call fails: withheld (the owner stored the message, its answer is lost: the origin
    gives up after its timeout) or refused (the owner's store says the chat's numbering moved).
    That send gets a retryable Error with its client id; the connection stays open, the same
    id sent again on it is Sent (a duplicate with the first seq when it was stored), the next
    send follows, and bob's inbox holds each message once. Before, the connection closed."""
    a, b, url = two
    ids = sorted([a.config.node_id, b.config.node_id])
    own = owner(shard_of(CONV), ids)
    chat_owner, origin = (a, b) if a.config.node_id == own else (b, a)
    fw = chat_owner.server.forwarder
    real = fw._serve
    first = True

    async def serve(origin_id: str, rid: int, what: str, args: Any) -> None:
        nonlocal first
        if what != calls.SEND or not first:
            return await real(origin_id, rid, what, args)
        first = False
        if how == "withheld":
            await fw.store.append_here(calls.send_of(args))  # stored; no answer
        else:
            fw.peers.outbox.answer(origin_id, rid, False,
                                   "this chat's numbering moved meanwhile: send it again")
            fw.peers.flush_soon()

    monkeypatch.setattr(fw, "_serve", serve)
    async with open_store(url) as reader:
        await reader.attach_device("bob", "phone")
        c = await RawClient.connect(origin.server.tcp_port, origin.token("alice"), "phone")
        try:
            with trio.fail_after(40):
                await c.send(F.Send(id="m1", to="bob", body=b"one"))
                while not isinstance(f := await c.next(), F.Sent | F.Error):
                    pass
                assert isinstance(f, F.Error), f
                assert f.code == ErrorCode.INTERNAL and f.ref == "m1" and f.retry_ms, f
                assert ("did not answer" if how == "withheld" else "moved meanwhile") \
                    in f.message and "send it again" in f.message
                sent = []
                for cid in ("m1", "m2"):  # on the same connection
                    await c.send(F.Send(id=cid, to="bob", body=b"again"))
                    while not isinstance(f := await c.next(), F.Sent | F.Error):
                        pass
                    assert isinstance(f, F.Sent) and f.id == cid, f
                    sent.append(f.seq)
        finally:
            await c.stream.aclose()
        assert sent == [1, 2]
        assert origin.server.stats["send_failures"] == 1
        page = await reader.inbox("bob", "phone", 0, 100)
        got = [(i.id, i.seq, i.message.body) for i in page.items if isinstance(i, Delivery)]
        assert got == [("m1", 1, b"one" if how == "withheld" else b"again"), ("m2", 2, b"again")]


async def test_a_slow_send_keeps_its_turn_and_every_message_gets_its_delivered_receipt(
        two: tuple[Node, Node, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two devices of alice send 1 then 2 into one chat while the chat owner's inbox append
    of 1 takes longer than a turn wait (TURN_WAIT: Cassandra slow, a node busy, as under
    `bench cluster --cassandra`). 2 used to stop waiting for 1 and append first; bob's ack
    of it raised his delivered watermark past 1, so 1, appended later and acked, never got
    its DELIVERED receipt. Now 2 waits for 1 (a send that still runs keeps its turn): bob
    gets 1 then 2, and alice gets DELIVERED for both, sent on the owner or forwarded to it."""
    from chatd.store import cassandra

    a, b, _ = two
    nodes = (a, b)
    ids = sorted(n.server.node_id for n in nodes)
    home = next(n for n in nodes if n.server.node_id == owner(shard_of(CONV), ids))
    store = home.server.store
    real = store._append_items  # type: ignore[attr-defined]
    slowed: list[str] = []

    async def slow(per_user: dict[str, list[object]]) -> object:
        first = [e for es in per_user.values() for e in es
                 if getattr(e, "id", "").startswith("m1-")]
        if first and not slowed:
            slowed.append("m1")
            await trio.sleep(cassandra.TURN_WAIT + 1.5)
        return await real(per_user)

    monkeypatch.setattr(store, "_append_items", slow)
    for r, node in enumerate(nodes):  # sent on the owner, and forwarded to it
        slowed.clear()
        port, token = node.server.tcp_port, node.token("alice")
        phone = await RawClient.connect(port, token, "phone")
        tablet = await RawClient.connect(port, token, "tablet")
        bob = await RawClient.connect(home.server.tcp_port, home.token("bob"), "phone")
        try:
            await phone.send(F.Send(id=f"m1-{r}", to="bob", body=b"1"))
            await trio.sleep(0.5)  # (1 holds its turn: 2 is a later send)
            await tablet.send(F.Send(id=f"m2-{r}", to="bob", body=b"2"))
            seqs: dict[str, int] = {}
            delivered: set[int] = set()
            got: list[bytes] = []

            async def bob_reads(bob: RawClient, got: list[bytes]) -> None:
                while True:
                    f = await bob.next()
                    assert not isinstance(f, F.Error), f
                    if isinstance(f, F.Deliver) and f.sender == "alice":
                        got.append(f.body)
                        await bob.send(F.Ack(upto=f.q))

            async def sent(c: RawClient, seqs: dict[str, int]) -> None:
                while not isinstance(f := await c.next(), F.Sent):
                    assert not isinstance(f, F.Error), f
                seqs[f.id] = f.seq

            with trio.fail_after(cassandra.TURN_WAIT + 15):
                async with trio.open_nursery() as n:
                    n.start_soon(bob_reads, bob, got)
                    n.start_soon(sent, tablet, seqs)
                    while len(seqs) < 2 or not set(seqs.values()) <= delivered:
                        f = await phone.next()
                        assert not isinstance(f, F.Error), f
                        if isinstance(f, F.Sent):
                            seqs[f.id] = f.seq
                        elif isinstance(f, F.Receipt) and f.status == F.Status.DELIVERED:
                            delivered.update(f.seqs)
                            await phone.send(F.Ack(upto=f.q))
                    n.cancel_scope.cancel()
            assert slowed and seqs[f"m1-{r}"] < seqs[f"m2-{r}"]
            assert got == [b"1", b"2"]
        finally:
            for c in (phone, tablet, bob):
                await c.stream.aclose()


@pytest.mark.parametrize("two", ["workers"], indirect=True)
async def test_a_send_for_a_chat_owned_by_a_worker_that_is_gone_fails_at_once(
        two: tuple[Node, Node, str]) -> None:
    """The worker that owns the chat (w0) has stopped (crashed, before the supervisor starts
    it again): a send through w1 is answered at once with a retryable error that says so,
    rather than after the call's timeout."""
    w0, w1, _ = two
    w0.server.stop()
    with trio.fail_after(10):
        await w0.server.stopped.wait()
    c = await RawClient.connect(w1.server.tcp_port, w1.token("alice"), "phone")
    try:
        await c.send(F.Send(id="m1", to="bob", body=b"1"))
        while not isinstance(f := await c.next(), F.Error):
            pass
        assert "worker w0 is not running: send it again" in f.message
    finally:
        await c.stream.aclose()
