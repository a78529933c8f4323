"""The message path's costs that the delivery contract does not need (issue 17)."""

from __future__ import annotations

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
