"""Two chatd processes on one Cassandra with numbering=owner: the owner of a chat is paused
(SIGSTOP) past its lease, the other node takes the chat over, then the first is resumed. It
must not store a seq the new owner also gave (docs/CASSANDRA.md, "Conversation owners")."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import trio

from bench.cassandra import CassandraNode
from bench.common import ChatdProcess, RawClient
from chatd.protocol import frames as F
from chatd.store import open_store

CONV = "d:alice:bob"


async def send_once(node: ChatdProcess, cid: str) -> int | None:
    """alice sends one message through node on a new connection: its seq, or None if it was
    refused (the connection is closed on a store error)."""
    try:
        c = await RawClient.connect(node.port, node.token("alice"), "laptop")
    except (RuntimeError, EOFError, OSError):
        return None
    try:
        await c.send(F.Send(id=cid, to="bob", body=b"b"))
        while True:
            f = await c.next()
            if isinstance(f, F.Sent) and f.id == cid:
                return f.seq
            if isinstance(f, F.Error):
                return None
    except (EOFError, OSError, trio.BrokenResourceError):
        return None
    finally:
        await c.stream.aclose()


async def scenario(a: ChatdProcess, b: ChatdProcess) -> tuple[dict[str, int], set[str]]:
    acks: dict[str, int] = {}  # client id -> seq of every Sent
    through_a: set[str] = set()
    alice = await RawClient.connect(a.port, a.token("alice"), "phone")
    with trio.fail_after(60):
        for i in range(5):  # a takes the chat (and bob's inbox)
            await alice.send(F.Send(id=f"a{i}", to="bob", body=b"a"))
            while not isinstance(f := await alice.next(), F.Sent):
                pass
            acks[f.id] = f.seq

    async def read_a() -> None:
        try:
            while True:
                f = await alice.next()
                if isinstance(f, F.Sent):
                    acks[f.id] = f.seq
        except (EOFError, OSError, trio.BrokenResourceError):
            pass

    async with trio.open_nursery() as n:
        n.start_soon(read_a)
        for i in range(5, 25):  # sends in flight on a when it is paused, and after
            through_a.add(f"a{i}")
            with trio.move_on_after(1):
                await alice.send(F.Send(id=f"a{i}", to="bob", body=b"a"))
            if i == 10:
                os.kill(a.proc.pid, signal.SIGSTOP)
            await trio.sleep(0.02)
        with trio.fail_after(60):  # b can take the chat once a's lease ended in Cassandra
            k = 0
            while len([c for c in acks if c.startswith("b")]) < 5:
                seq = await send_once(b, f"b{k}")
                if seq is not None:
                    acks[f"b{k}"] = seq
                    k += 1
                else:
                    await trio.sleep(0.5)
        os.kill(a.proc.pid, signal.SIGCONT)  # a carries on with the sends it had received
        await trio.sleep(3)
        for i in range(3):  # and new ones: refused, b owns the chat
            through_a.add(f"a-late{i}")
            if (seq := await send_once(a, f"a-late{i}")) is not None:
                acks[f"a-late{i}"] = seq
        n.cancel_scope.cancel()
    await alice.stream.aclose()
    return acks, through_a


def test_an_owner_paused_past_its_lease_stores_no_seq_the_next_owner_gave(
        cassandra: CassandraNode, tmp_path: Path) -> None:
    cassandra.truncate()
    url = cassandra.url(numbering="owner", timeout="2", lease="9")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = ChatdProcess(str(tmp_path / "a"), ["alice", "bob"], store=url)
    try:
        b = ChatdProcess(str(tmp_path / "b"), [], store=url)
        try:
            acks, through_a = trio.run(scenario, a, b)
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)
            b.stop()
    finally:
        a.stop()

    async def stored() -> dict[int, str]:
        async with open_store(cassandra.url()) as s:
            return {h.seq: h.id for h in await s.history(CONV, None, 500)}

    rows = trio.run(stored)
    assert len(set(acks.values())) == len(acks)  # no seq acknowledged twice
    assert all(rows.get(seq) == cid for cid, seq in acks.items())  # each as acknowledged
    b_seqs = [s for c, s in acks.items() if c.startswith("b")]
    late = [s for c, s in acks.items() if c in through_a and s > min(b_seqs)]
    assert not late  # a gave no seq once b had the chat
    assert len([c for c in acks if c.startswith("a")]) >= 5


def test_a_node_killed_and_started_again_numbers_its_chats_before_its_leases_run_out(
        cassandra: CassandraNode, tmp_path: Path) -> None:
    """A node SIGKILLed and started again (same data dir, same name) holds its shard leases
    under a name kept across restarts (chatd.server.identity), so it takes them back once
    the lease margin has passed since it started: the chat goes on at the next seq. Before,
    each process had a random name, and the chats it numbered waited for its old leases to
    run out (`lease`, here 60 s; 30 s by default)."""
    cassandra.truncate()
    url = cassandra.url(numbering="owner", timeout="2", lease="60")
    a = ChatdProcess(str(tmp_path / "a"), ["alice", "bob"], store=url)
    try:
        first = trio.run(send_once, a, "m1")
        assert first is not None
        a.proc.kill()
        a.proc.wait()
    finally:
        a.stop()
    again = ChatdProcess(str(tmp_path / "a"), [], store=url)

    async def resend() -> int:
        with trio.fail_after(30):  # (half the lease: the margin here is 4 s)
            while (seq := await send_once(again, "m2")) is None:
                await trio.sleep(0.5)
        return seq

    try:
        assert trio.run(resend) == first + 1
    finally:
        again.stop()
