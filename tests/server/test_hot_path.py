"""The message path's costs that the delivery contract does not need (issue 17)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio

from chatd.protocol import frames as F
from chatd.store import sqlite as sqlite_store

from .conftest import Node
from .test_abuse import signed_in


async def test_an_ack_over_a_message_is_stored_at_once_and_one_over_receipts_may_wait(
        node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recipient's Ack makes the DELIVERED receipt its sender waits for: it is committed
    at once, not held to share a later commit. The sender's Ack of that receipt makes
    nothing anyone waits for: the store may hold it (lazy)."""
    monkeypatch.setattr(sqlite_store, "ACK_DELAY", 3600.0)  # a held Ack would never come
    store = node.server.store
    real = store.ack
    calls: list[tuple[str, int, bool]] = []

    async def recorded(user: str, device: str, upto: int, ts: int, *,
                       lazy: bool = True) -> object:
        calls.append((user, upto, lazy))
        return await real(user, device, upto, ts, lazy=lazy)

    monkeypatch.setattr(store, "ack", recorded)
    alice = await signed_in(node, "alice")
    bob = await signed_in(node, "bob")
    await alice.send(F.Send(id="m1", to="bob", body=b"hi"))
    deliver = await bob.recv_until(F.Deliver)
    assert isinstance(deliver, F.Deliver)
    await bob.send(F.Ack(upto=deliver.q))
    receipt = await alice.recv_until(F.Receipt, timeout=30)
    assert isinstance(receipt, F.Receipt) and receipt.seqs == (deliver.seq,)
    await alice.send(F.Ack(upto=receipt.q))
    await alice.send(F.Ping(nonce=1))
    await alice.recv_until(F.Pong)
    with trio.fail_after(30):
        while len(calls) < 2:
            await trio.sleep(0.01)
    assert calls == [("bob", deliver.q, False), ("alice", receipt.q, True)]
    await alice.aclose()
    await bob.aclose()


class _CountedWrites:
    """A session's transport, counting the writes made to it (and passing them on)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.framing, self.coalesce = inner.framing, inner.coalesce
        self.writes = 0

    async def send(self, data: bytes) -> None:
        self.writes += 1
        await self.inner.send(data)

    def send_nowait(self, data: bytes) -> int:
        self.writes += 1
        sent: int = self.inner.send_nowait(data)
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("start_node", ["sqlite"], indirect=True)
async def test_what_one_commit_makes_for_a_device_reaches_its_socket_in_one_write(
        node: Node) -> None:
    """Alice and Bob each send a message, stored in one commit: Alice gets the Sent of
    hers and the Deliver of Bob's, and they leave in one write, not one each (a commit's
    frames for a connection are written together at the end of the scheduler's tick)."""
    store = node.server.store
    alice = await signed_in(node, "alice")
    bob = await signed_in(node, "bob")
    for sender, to, receiver in ((alice, "bob", bob), (bob, "alice", alice)):
        await sender.send(F.Send(id=f"first-to-{to}", to=to, body=b"hi"))  # (from then on a
        await sender.recv_until(F.Sent, timeout=30)  # send looks up no user in the store:
        await receiver.recv_until(F.Deliver, timeout=30)  # one store op each)
    (session,) = node.server.router.targets("alice")
    counted = _CountedWrites(session.transport)  # type: ignore[attr-defined]
    session.transport = counted  # type: ignore[attr-defined]
    for round_ in range(8):  # (the scheduler orders tasks at random: several rounds)
        entered, gate = threading.Event(), threading.Event()

        def hold(db: object, entered: threading.Event = entered,
                 gate: threading.Event = gate) -> None:
            entered.set()
            gate.wait(30)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(store._do, hold)  # type: ignore[attr-defined]
            with trio.fail_after(30):
                while not entered.is_set():  # the writer thread is held in that batch
                    await trio.sleep(0.005)
                await alice.send(F.Send(id=f"a{round_}", to="bob", body=b"hi bob"))
                await bob.send(F.Send(id=f"b{round_}", to="alice", body=b"hi alice"))
                while store.queue_depth < 2:  # both wait for the next batch
                    await trio.sleep(0.005)
            counted.writes = 0
            gate.set()
        got = [await alice.recv(timeout=30), await alice.recv(timeout=30)]
        assert {type(f) for f in got} == {F.Sent, F.Deliver}, got
        await bob.recv_until(F.Deliver, timeout=30)
        assert counted.writes == 1, f"round {round_}: {counted.writes} writes"
    await alice.aclose()
    await bob.aclose()


class _FailingWrites(_CountedWrites):
    def send_nowait(self, data: bytes) -> int:
        raise RuntimeError("a bug in the write path")


@pytest.mark.parametrize("start_node", ["sqlite"], indirect=True)
async def test_a_write_that_fails_unexpectedly_ends_that_connection_only(
        node: Node, caplog: pytest.LogCaptureFixture) -> None:
    """The node's one task that writes for every connection contains a failure to the
    connection it was writing to: that one is closed, the others and the node go on."""
    alice = await signed_in(node, "alice")
    bob = await signed_in(node, "bob")
    carol = await signed_in(node, "carol")
    (session,) = node.server.router.targets("alice")
    session.transport = _FailingWrites(session.transport)  # type: ignore[attr-defined]
    await bob.send(F.Send(id="b1", to="alice", body=b"hi"))
    assert await alice.closed(timeout=30)
    assert "writing to a connection failed" in caplog.text
    await bob.send(F.Send(id="b2", to="carol", body=b"still here"))
    deliver = await carol.recv_until(F.Deliver, timeout=30)
    assert isinstance(deliver, F.Deliver) and deliver.body == b"still here"
    await bob.aclose()
    await carol.aclose()
