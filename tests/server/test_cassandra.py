"""A chatd node on a real Cassandra node that goes away mid-run and comes back."""

from __future__ import annotations

from pathlib import Path

import chatd_client as cc
import trio

from bench.cassandra import CassandraNode
from chatd.auth import load_or_create_secret
from chatd.protocol import frames as F
from chatd.protocol.errors import ErrorCode
from chatd.server import Config, serve

from .conftest import Node
from .raw import Raw


async def test_cassandra_restart_mid_run_loses_nothing_sent(
        cassandra: CassandraNode, tmp_path: Path, nursery: trio.Nursery) -> None:
    cassandra.truncate()
    cfg = Config(host="127.0.0.1", tcp_port=0, ws_port=0, data_dir=str(tmp_path),
                 store=cassandra.url(timeout="3"))
    load_or_create_secret(cfg.data_dir)
    node = Node(await nursery.start(serve, cfg), cfg)
    await node.add_users("alice", "bob", "carol")
    sent: dict[str, int] = {}  # client id -> seq, for every SENT alice got
    received: list[tuple[str, int]] = []
    n = 60
    half = trio.Event()

    async with node.connect("alice", max_backoff=0.5) as alice, \
            node.connect("bob", max_backoff=0.5) as bob:

        async def sender() -> None:
            for i in range(n):
                cid = f"m{i}"
                ack = await alice.send("bob", f"hello {i}", id=cid)
                sent[cid] = ack.seq
                if i == n // 2:
                    half.set()
                await trio.sleep(0.02)

        async def receiver() -> None:
            while len({c for c, _ in received}) < n:
                m = await bob.next_event(cc.Message)
                assert isinstance(m, cc.Message)
                received.append((m.id, m.seq))

        with trio.fail_after(120):
            async with trio.open_nursery() as inner:
                inner.start_soon(receiver)
                inner.start_soon(sender)
                await half.wait()
                cassandra.stop()
                # while it is down: a clear error, and the message is not SENT
                carol = await Raw.open(node.server.tcp_port)
                await carol.send(F.Hello(version=1, token=node.token("carol"), device="x"))
                frames = []
                while (f := await carol.recv(timeout=20)) is not None:
                    frames.append(f)
                errors = [f for f in frames if isinstance(f, F.Error)]
                assert len(errors) == 1 and errors[0].code == ErrorCode.INTERNAL
                assert "store unavailable: cassandra" in errors[0].message
                down_at = len(sent)
                await trio.sleep(2)
                assert len(sent) == down_at  # nothing was acknowledged while it was down
                await trio.to_thread.run_sync(cassandra.start)

                # the same chatd process carries on: the driver reconnects by itself
    assert sorted(sent) == sorted(f"m{i}" for i in range(n))
    assert sorted(sent.values()) == list(range(1, n + 1))  # every send once, no gap
    assert {c for c, _ in received} == set(sent)  # nothing SENT was lost
    assert {c: s for c, s in received} == sent
