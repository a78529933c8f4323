"""Shards, their owners by rendezvous hashing, and the holder's view of a lease."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatd.core import owners
from chatd.core.owners import SHARDS, Lease, owner, shard_of

node_ids = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
node_sets = st.sets(node_ids, min_size=1, max_size=8)


def test_a_key_has_one_shard_everywhere() -> None:
    assert shard_of("d:alice:bob") == shard_of("d:alice:bob")
    assert {shard_of(f"d:u{i}:v") for i in range(20_000)} == set(range(SHARDS))
    assert 0 <= shard_of("g:x", 7) < 7


def test_shards_and_owners_are_the_same_in_every_version() -> None:
    """Nodes of different versions (a rolling upgrade) must agree on a chat's shard and its
    owner, and a shard's lease is stored under its number: the hash is part of the format."""
    assert (shard_of("d:alice:bob"), shard_of("g:climbers")) == (902, 568)
    assert [owner(s, ["node-a", "node-b", "node-c"]) for s in range(6)] == [
        "node-b", "node-c", "node-a", "node-a", "node-b", "node-c"]


def test_one_node_owns_every_shard_and_none_owns_without_nodes() -> None:
    assert set(owners.owners(["a"])) == {"a"}
    assert owner(3, []) is None


@given(node_sets, st.randoms())
def test_every_node_picks_the_same_owner_whatever_the_order(nodes: set[str],
                                                            rnd: random.Random) -> None:
    order = sorted(nodes)
    rnd.shuffle(order)
    assert owners.owners(order, 64) == owners.owners(sorted(nodes), 64)
    # (a node's router asks owner() with the live nodes in the order the registry gives)
    assert [owner(s, order) for s in range(64)] == [owner(s, sorted(nodes)) for s in range(64)]


def test_the_owner_does_not_depend_on_the_order_of_the_nodes() -> None:
    nodes = [f"node-{i}" for i in range(5)]
    want = [owner(s, nodes) for s in range(256)]
    assert len(set(want)) == 5
    for k in range(1, 5):
        rotated = nodes[k:] + nodes[:k]
        assert [owner(s, rotated) for s in range(256)] == want
        assert [owner(s, rotated[::-1]) for s in range(256)] == want


@given(node_sets, node_ids)
def test_a_joining_node_takes_about_one_nth_and_nothing_else_moves(nodes: set[str],
                                                                   new: str) -> None:
    if new in nodes:
        return
    before, after = owners.owners(nodes), owners.owners(nodes | {new})
    moved = [s for s in range(SHARDS) if before[s] != after[s]]
    assert all(after[s] == new for s in moved)  # only to the newcomer
    share = SHARDS / (len(nodes) + 1)
    assert 0.5 * share <= len(moved) <= 1.6 * share


@given(node_sets.filter(lambda n: len(n) >= 2), st.data())
def test_a_leaving_node_hands_on_only_its_own_shards(nodes: set[str], data: st.DataObject) -> None:
    gone = data.draw(st.sampled_from(sorted(nodes)))
    before, after = owners.owners(nodes), owners.owners(nodes - {gone})
    for s in range(SHARDS):
        assert (before[s] == after[s]) == (before[s] != gone)
    assert gone not in after


def test_a_lease_is_valid_from_its_grant_until_its_margin() -> None:
    lease = Lease(duration=10, margin=3)
    assert not lease.valid(0)
    lease.granted(epoch=4, sent=100)  # (the request left at 100, answered later)
    assert lease.epoch == 4
    assert lease.valid(100) and lease.valid(106.9)
    assert not lease.valid(107)  # 100 + 10 - 3
    assert not lease.renew_due(102)
    assert lease.renew_due(102.4)  # a third of the 7 usable seconds
    lease.granted(epoch=4, sent=105)
    assert lease.valid(111.9) and not lease.valid(112)
    lease.lost()
    assert not lease.valid(106) and not lease.renew_due(106)
    with pytest.raises(ValueError):
        Lease(duration=5, margin=5)
    with pytest.raises(ValueError, match="margin"):
        Lease(duration=5, margin=-1)


def test_a_lease_without_a_margin_is_renewed_at_exactly_a_third() -> None:
    lease = Lease(duration=9, margin=0)  # (a margin of 0 is allowed: tests, one node)
    lease.granted(epoch=1, sent=0)
    assert not lease.renew_due(2.999) and lease.renew_due(3)
    assert lease.valid(8.999) and not lease.valid(9)


@given(st.lists(st.tuples(st.floats(0, 1000), st.floats(0, 50)), min_size=1, max_size=20),
       st.floats(0, 2000))
def test_a_holder_never_counts_on_its_lease_after_the_store_could_expire_it(
        grants: list[tuple[float, float]], now: float) -> None:
    """The store starts a lease's time to live no earlier than the request was sent: the
    holder's view must end `margin` before the latest such expiry."""
    lease = Lease(duration=30, margin=10)
    for sent, _answered_after in grants:
        lease.granted(1, sent)
    if lease.valid(now):
        assert now < max(sent for sent, _ in grants) + 30 - 10
