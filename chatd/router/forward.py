"""Conversation owners across nodes (Cassandra `numbering=owner`): which node owns a shard,
and the calls that hand it work, over the nodes' batched streams (RedisPeers), or between the
workers of one node without Redis (UnixPeers: each worker is then a node).

A shard's owner is chosen by rendezvous hashing (chatd.core.owners) over the nodes alive at
the last heartbeat. Ownership by hashing is only a routing hint: what makes numbering safe is
the shard's lease in the store (a node whose view is stale is refused there, and its caller
retries). A call is a peer datagram ("c") to the owner's stream, run there on its store, and
answered the same way ("r"); the caller gives up after a timeout (the owner may still do the
work: a retried send is then a duplicate, an inbox item is found by its marker).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Any, Protocol

import trio

from chatd.core import NewMessage, ReceiptNote, message_bytes, now_ms
from chatd.core.owners import owner
from chatd.store.base import Appended, Entry, OwnedNumbering, StoreError

from . import calls
from .peers import Outbox

log = logging.getLogger("chatd.forward")

CALL_BYTES = 96 * 1024  # about the most message bytes one call carries (a datagram between
# workers holds a few hundred KiB at most); a larger batch is handed over in several calls


class OwnerPeers(Protocol):
    """What calls travel by: RedisPeers (nodes) or UnixPeers (the workers of one node)."""

    node_id: str
    outbox: Outbox

    def flush_soon(self) -> None: ...

    def live_nodes(self) -> list[str]: ...


def chunks(sizes: list[int], limit: int = CALL_BYTES) -> list[range]:
    """Consecutive index ranges whose sizes add up to at most `limit` (at least one each)."""
    out: list[range] = []
    start = total = 0
    for i, n in enumerate(sizes):
        if i > start and total + n > limit:
            out.append(range(start, i))
            start, total = i, 0
        total += n
    if sizes:
        out.append(range(start, len(sizes)))
    return out


def _size(e: NewMessage | Entry) -> int:
    """About how many bytes a message (or receipt) takes in a call."""
    if isinstance(e, ReceiptNote):
        return 100 + 10 * len(e.seqs)
    return message_bytes(e)


@dataclasses.dataclass(slots=True)
class _Call:
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    ok: bool = False
    answer: Any = None


class Forwarder:
    """The store's OwnerCalls, and the other side: the calls peers make to this node."""

    def __init__(self, peers: OwnerPeers, store: OwnedNumbering) -> None:
        self.peers = peers
        self.store = store
        self._rids = itertools.count(1)
        self._waiting: dict[int, _Call] = {}
        self._nodes: list[str] = []
        self._owners: dict[int, str] = {}  # shard -> owner among _nodes

    def owner_of(self, shard: int) -> str | None:
        nodes = self.peers.live_nodes()
        if nodes != self._nodes:
            self._nodes, self._owners = nodes, {}
        node = self._owners.get(shard)
        if node is None:
            node = self._owners[shard] = owner(shard, nodes) or self.peers.node_id
        return None if node == self.peers.node_id else node

    async def send(self, node: str, msgs: list[NewMessage], timeout: float
                   ) -> list[Appended]:
        """msgs sent through their owner `node`: in calls of at most about CALL_BYTES, one
        after the other (so a chat's messages keep their order)."""
        out: list[Appended] = []
        for part in chunks([_size(m) for m in msgs]):
            some = msgs[part.start:part.stop]
            answer = calls.sent_of(await self._call(node, calls.SEND, calls.send_args(some),
                                                    timeout))
            if len(answer) != len(some):
                raise StoreError(f"node {node} answered {len(answer)} of {len(some)} sends")
            out += [Appended(conv, seq, ts, dup) for conv, seq, ts, dup in answer]
        return out

    async def inbox(self, node: str, user: str, entries: list[Entry], fresh: list[bool],
                    timeout: float) -> list[int | None]:
        out: list[int | None] = []
        for part in chunks([_size(e) for e in entries]):
            some = entries[part.start:part.stop]
            answer = await self._call(node, calls.INBOX, calls.inbox_args(
                user, some, fresh[part.start:part.stop]), timeout)
            out += calls.placed_of(answer, len(some))
        return out

    async def _call(self, node: str, what: str, args: Any, timeout: float) -> Any:
        rid = next(self._rids)
        call = self._waiting[rid] = _Call()
        self.peers.outbox.call(node, rid, what, args, now_ms() + int(timeout * 1000))
        self.peers.flush_soon()
        try:
            with trio.move_on_after(timeout):
                await call.done.wait()
        finally:
            del self._waiting[rid]
        if not call.done.is_set():
            raise StoreError(f"node {node}, the owner, did not answer within {timeout:g} s:"
                             " send it again")
        if not call.ok:
            raise StoreError(f"node {node}: {call.answer}")
        return call.answer

    def answered(self, rid: int, ok: bool, answer: Any) -> None:
        call = self._waiting.get(rid)
        if call is not None:  # (else given up on: the caller retries)
            call.ok, call.answer = ok, answer
            call.done.set()

    async def serve(self, origin: str, rid: int, what: str, args: Any, until: int) -> None:
        """Run a peer's call on this node's store (never handed on again) and answer it.
        Given up at `until`, when the caller gives up (by this node's clock: nodes' clocks
        are assumed within a second or so): nobody waits for the answer then, and what was
        not started yet could only race the caller's retry (a write already handed to the
        store runs to its end, as for a local caller that is cancelled). So a call that
        waited in the stream (this node paused, Redis slow) past its caller is not run."""
        left = (until - now_ms()) / 1000
        if left <= 0:
            log.info("a call from %s came %.1f s after its caller gave up: not run", origin,
                     -left)
            return
        with trio.move_on_after(left):
            await self._serve(origin, rid, what, args)

    async def _serve(self, origin: str, rid: int, what: str, args: Any) -> None:
        ok = False
        answer: Any = None
        try:
            if what == calls.SEND:
                got = await self.store.append_here(calls.send_of(args))
                answer = calls.sent_answer([(r.conv, r.seq, r.ts, r.duplicate) for r in got])
            elif what == calls.INBOX:
                answer = await self.store.inbox_here(*calls.inbox_of(args))
            else:
                raise calls.BadCall(f"unknown call {what!r}")
            ok = True
        except StoreError as exc:
            answer = str(exc)
        except calls.BadCall as exc:
            log.warning("bad call from %s: %s", origin, exc)
            answer = str(exc)
        self.peers.outbox.answer(origin, rid, ok, answer)
        self.peers.flush_soon()
