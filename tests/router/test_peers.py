"""The peer message layer (sans-IO): batching, size bounds, bad input."""

from __future__ import annotations

from typing import Any

import msgpack

from chatd.router import peers


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def peer_items(self, items: list[tuple[str, bytes]]) -> None:
        self.calls.append(("items", items))

    def peer_poke(self, users: list[str]) -> None:
        self.calls.append(("poke", users))

    def peer_presence(self, origin: str, user: str, online: bool, active: int) -> None:
        self.calls.append(("presence", (origin, user, online, active)))

    def peer_kick(self, user: str, device: str, at: int) -> None:
        self.calls.append(("kick", (user, device, at)))

    def peers_rejoined(self) -> None:
        pass

    def peer_restarted(self, origin: str) -> None:
        self.calls.append(("restarted", origin))


def deliver(messages: list[bytes]) -> Recorder:
    r = Recorder()
    for m in messages:
        peers.handle(m, r)
    return r


def test_everything_taken_arrives_once_in_order_and_within_size() -> None:
    box = peers.Outbox("w3")
    items = [(f"u{i}", bytes([i % 256]) * 300) for i in range(1000)]
    box.items(items)
    box.presence("alice", True, 5)
    box.kick("bob", "phone", 7)
    out = box.take()
    assert not box and box.take() == []
    assert all(len(m) <= peers.MAX_DATAGRAM + 1024 for m in out)
    r = deliver(out)
    got = [x for kind, batch in r.calls if kind == "items" for x in batch]
    assert got == items
    assert ("presence", ("w3", "alice", True, 5)) in r.calls
    assert ("kick", ("bob", "phone", 7)) in r.calls


def test_large_items_travel_as_pokes() -> None:
    box = peers.Outbox("w0")
    box.items([("alice", b"x" * (peers.MAX_CARRIED + 1)), ("bob", b"small")])
    r = deliver(box.take())
    assert ("poke", ["alice"]) in r.calls and ("items", [("bob", b"small")]) in r.calls


def test_bad_peer_messages_are_dropped() -> None:
    r = deliver([b"\xc1", msgpack.packb([["zz", "w1"]]), msgpack.packb([["d", "w1", [[1]]]]),
                 msgpack.packb([[]]), msgpack.packb({"a": 1}), msgpack.packb(["p"])])
    assert r.calls == []
    r = deliver([msgpack.packb([["zz"], ["h", "w2"]])])  # the good one after a bad one
    assert r.calls == [("restarted", "w2")]


def test_a_burst_of_small_messages_shares_datagrams() -> None:
    box = peers.Outbox("w0")
    for i in range(1000):
        box.presence(f"u{i}", True, i)
        box.kick(f"u{i}", "d", i)
    out = box.take()
    assert len(out) <= 3
    assert len(deliver(out).calls) == 2000
