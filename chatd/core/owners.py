"""Who numbers a conversation: shards, their owners, and the lease an owner holds (sans-IO).

A conversation (or a user's inbox: any key) belongs to one of SHARDS shards, by a hash of its
id that every node computes the same way. A shard belongs to one live node, chosen by
rendezvous hashing over the node set: every node scores (node, shard) with a hash and the
highest score owns the shard. Every node that sees the same node set picks the same owner,
and a node joining or leaving moves only the shards it wins or held: about 1/N of them.

Which node owns a shard is a routing hint; what makes numbering safe is the lease (`Lease`):
a node numbers a shard's conversations only while it holds that shard's lease, taken and
renewed by a conditional write in the store, with a time to live (docs/CASSANDRA.md,
"Conversation owners"). The holder counts its lease from the moment it *sent* the request
that took or renewed it (the store can only have started the lease's time later), minus a
margin, on the local monotonic clock: so it stops numbering before any other node can take
the shard over, whatever the wall clocks say.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable
from typing import Final

SHARDS: Final = 1024


def _h64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def shard_of(key: str, shards: int = SHARDS) -> int:
    """The shard of a conversation id (or any key): the same on every node."""
    return _h64(key) % shards


def owner(shard: int, nodes: Iterable[str]) -> str | None:
    """The node that owns a shard among `nodes` (rendezvous hashing; ties go to the smaller
    node id); None without nodes."""
    best: tuple[int, str] | None = None
    for node in nodes:
        score = _h64(f"{node}\0{shard}")
        if best is None or score > best[0] or (score == best[0] and node < best[1]):
            best = (score, node)
    return None if best is None else best[1]


def owners(nodes: Iterable[str], shards: int = SHARDS) -> list[str | None]:
    """The owner of every shard, by shard."""
    ns = sorted(set(nodes))
    return [owner(s, ns) for s in range(shards)]


@dataclasses.dataclass(slots=True)
class Lease:
    """One shard's lease as its holder sees it, in seconds of the local monotonic clock.

    `duration` is the time to live the store gives the lease; the holder treats it as ending
    `margin` earlier (clock rate drift, a pause between checking the lease and a request
    reaching the store, a request's time in flight: docs/CASSANDRA.md). Use: `sending(now)`
    before the request that takes or renews it, `granted(epoch, sent)` when it applied,
    `lost()` when it did not (or could not be renewed); `valid(now)` says whether the holder
    may number now, `renew_due(now)` whether to renew."""

    duration: float
    margin: float
    epoch: int = 0
    until: float = -math.inf  # valid before this instant
    _renewed_at: float = -math.inf

    def __post_init__(self) -> None:
        if not 0 <= self.margin < self.duration:
            raise ValueError("a lease's margin must be shorter than the lease")

    def granted(self, epoch: int, sent: float) -> None:
        """The take or renewal sent at `sent` applied: the lease is ours with `epoch`."""
        self.epoch = epoch
        self.until = max(self.until, sent + self.duration - self.margin)
        self._renewed_at = sent

    def lost(self) -> None:
        self.until = -math.inf

    def valid(self, now: float) -> bool:
        return now < self.until

    def renew_due(self, now: float) -> bool:
        """Held, and a third of its usable time has passed since the last renewal (two more
        tries left before it ends)."""
        return self.valid(now) and now - self._renewed_at >= (self.duration - self.margin) / 3
