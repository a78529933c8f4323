"""Cassandra store: the store several chatd nodes share. docs/CASSANDRA.md has the schema and why.

Counters without a single owner. A conversation's seq and a user's inbox position q are each a
static column of one partition, moved only by a conditional batch (a lightweight transaction,
Paxos) in that same partition together with what they number: the client ids of the messages
(`sends`), or the inbox items (`inbox`). So two nodes can never hand out the same number, no
number is taken without its rows, and a retried send (same sender and client id) finds its
claim instead of taking a new seq. Inside one process, writes to one partition are combined:
the requests that arrive while one conditional batch is in flight go in the next one (group
commit per partition), so a busy inbox costs one transaction per round trip, not per item.

A send: (1) claim the seq with the client id; (2) write the message row (and, for a group, its
fan-out job); (3) append inbox items; (4) mark the claim done. Each step is idempotent, so a
send interrupted between steps (Cassandra down, chatd killed) is completed by the client's
retry, which finds its claim not done and redoes 2-4 with the seq it already has. Until then
nothing was acknowledged as SENT. A retry while the first attempt may still be running gets a
StoreError (retry later) rather than a second copy.

A group message is appended to its members' inboxes by a fan-out job, a chunk at a time, and
a chunk may be run again (its node died before recording it, its owner's lease ran out while
the owner carried on, a timeout hid a batch that applied). Each member's item goes in with a
marker row in that member's inbox partition, in the same conditional batch (`IF NOT EXISTS`):
the claim and the effect in one transaction, so a member gets each group message once
(`_write_inbox`).

Watermarks that only ever rise (device cursors, delivered/read marks, last seen) are written
with the value as the write timestamp: the highest value wins on every replica, whichever node
wrote last, without a transaction.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import logging
import math
import secrets
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any, Final, Literal, TypeVar, cast

import trio

from chatd.core import (
    Delivery,
    GroupInfo,
    Message,
    NewMessage,
    Notice,
    ReceiptNote,
    ReceiptState,
    convs,
    delivery,
    message_bytes,
    modes,
)
from chatd.core import groups as group_rules
from chatd.core.owners import Lease, shard_of
from chatd.core.values import now_ms
from chatd.protocol.frames import HistoryItem, Mode, Status

from . import blobs
from .base import Appended, AppendListener, Entry, Item, OwnerCalls, Page, Revocation, StoreError
from .cql import (
    ADMIN_STATEMENTS,
    SCHEMA_VERSION,
    CassandraURL,
    Session,
    StoreTimeout,
    lease_margin,
    schema_version,
)

T = TypeVar("T")
log = logging.getLogger("chatd.store.cassandra")

BUCKET: Final = 1000  # messages per partition: (conv, seq // BUCKET)
CHUNK: Final = 100  # rows per conditional batch
RETRIES: Final = 2  # a timed-out transaction is tried again this many times
BATCH_BYTES: Final = 32_768  # per single-partition batch (Cassandra refuses them over 50 KiB)
# one request for the rows of several partitions up to this size and count (Cassandra's
# default warning thresholds for multi-partition batches: 5 KiB, 10 partitions)
SMALL_BATCH_BYTES: Final = 5_000
SMALL_BATCH_PARTS: Final = 10
FANOUT_CHUNK: Final = delivery.FANOUT_CHUNK
DAY_MS: Final = 86_400_000
IDS_TTL: Final = 30 * 86_400  # seconds a client id is remembered for retries
REDO_AFTER_MS: Final = 15_000  # an unfinished send older than this is completed by its retry
COLLECT_LIMIT: Final = 10_000
LEASE_MS: Final = 30_000  # a fan-out job is another node's for this long after its last step
# how often a node looks for unfinished fan-out jobs to run: those of groups it owns
# (numbering=owner with peers: left by an owner that died or left), or all of them
SWEEP_S: Final = 5.0
# How long a group message's marker stays in a member's inbox partition (see marker_q): longer
# than a fan-out job can stay unfinished or a node can stall in the middle of a chunk.
MARK_TTL: Final = 7 * 86_400
# A send's inbox appends wait (at most this long) for those of the earlier seqs of its chat
# claimed on this node, so each inbox gets a chat in seq order (see _wait_turn).
TURN_WAIT: Final = 2.0
# A send that failed after taking its seq holds it this long after each try of its device
# (the SDK and the web app try again within 5 s, while the store fails): see _append_held.
RETRY_HOLD: Final = 8.0
HOLD_MAX: Final = 60.0
# numbering=owner: a send whose inbox appends fail is tried again by its owner this long
# (in its place, while the owner holds the chat), before it is failed and held as above.
FINISH_FOR: Final = 60.0
# A read remembers the seqs it passed that had no message yet (delivery.holes) this long, so
# that their first delivery is receipted; a gap under a message older than HOLE_WAIT_MS is
# no such seq (messages deleted since, or a send given up).
HOLE_WAIT_MS: Final = 120_000
HOLE_KEEP_MS: Final = 600_000
CACHE_S: Final = 2.0  # how long a chat's mode, a user's device count are trusted from memory
MAX_CACHED: Final = 200_000  # entries per cache before it starts again
# The messages of held seqs kept to redo them (_redo_held), up to this many bytes of them
HELD_BYTES: Final = 32 * 1024 * 1024
MAX_RECENT: Final = 10_000  # inbox items remembered per user until acked (numbering=owner)
MAX_CLAIMS: Final = 10_000  # client ids a chat's owner keeps in memory (more: read per batch)
MAX_CLAIMS_KEPT: Final = 1_000_000  # client ids kept in memory, all chats (more: read)

STATEMENTS: Final = {
    "add_user": "INSERT INTO users (user) VALUES (?)",
    "user": "SELECT user, last_seen, hide_last_seen FROM users WHERE user = ?",
    "seen": "UPDATE users USING TIMESTAMP ? SET last_seen = ? WHERE user = ?",
    "hide": "UPDATE users SET hide_last_seen = ? WHERE user = ?",
    "devices": "SELECT device, cursor FROM devices WHERE user = ?",
    "set_cursor": "UPDATE devices USING TIMESTAMP ? SET cursor = ? WHERE user = ? AND device = ?",
    "last_q": "SELECT last_q FROM inbox WHERE user = ? LIMIT 1",
    "move_q": "UPDATE inbox SET last_q = ? WHERE user = ? IF last_q = ?",
    "put_item": "INSERT INTO inbox (user, q, conv, seq, sender, receipt) VALUES (?, ?, ?, ?, ?, ?)",
    "items": "SELECT q, conv, seq, sender, receipt FROM inbox WHERE user = ? AND q > ? LIMIT ?",
    "items_upto": "SELECT q, conv, seq, sender, receipt FROM inbox"
                  " WHERE user = ? AND q > ? AND q <= ?",
    "prune": "DELETE FROM inbox WHERE user = ? AND q > 0 AND q <= ?",  # (markers stay)
    "put_marker": "INSERT INTO inbox (user, q, conv, seq, item_q) VALUES (?, ?, ?, ?, ?)"
                  " IF NOT EXISTS USING TTL ?",
    "last_seq": "SELECT last_seq FROM sends WHERE conv = ? LIMIT 1",
    "move_seq": "UPDATE sends SET last_seq = ? WHERE conv = ? IF last_seq = ?",
    # (done is left unset, not false: a Paxos round that completes this claim late, with a
    # newer ballot, must not write over the plain write of done = true)
    "claim": "INSERT INTO sends (conv, sender, client_id, seq, ts, at)"
             " VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS USING TTL ?",
    "done": "UPDATE sends USING TTL ? SET done = true"
            " WHERE conv = ? AND sender = ? AND client_id = ?",
    "put_msg": "INSERT INTO messages (conv, bucket, seq, ts, sender, device, client_id, body,"
               " media, grp, event, holders) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
               " USING TTL ?",
    "msgs_in": "SELECT seq, ts, sender, device, client_id, body, media, grp, event, holders"
               " FROM messages WHERE conv = ? AND bucket = ? AND seq IN ?",
    "msgs_down": "SELECT seq, ts, sender, device, client_id, body, media, event FROM messages"
                 " WHERE conv = ? AND bucket = ? AND seq > ? AND seq <= ? LIMIT ?",
    "msgs_up": "SELECT seq, ts, sender, event FROM messages WHERE conv = ? AND bucket = ?"
               " AND seq > ? AND seq <= ? ORDER BY seq ASC LIMIT ?",
    "drop_holders": "UPDATE messages SET holders = holders - ?"
                    " WHERE conv = ? AND bucket = ? AND seq = ?",
    "holders": "SELECT holders FROM messages WHERE conv = ? AND bucket = ? AND seq = ?",
    "del_msg": "DELETE FROM messages WHERE conv = ? AND bucket = ? AND seq = ?",
    "del_msgs_upto": "DELETE FROM messages WHERE conv = ? AND bucket = ? AND seq <= ?",
    "conv": "SELECT mode, ttl, all_delivered, all_read, expired_upto FROM convs WHERE conv = ?",
    "set_mode": "UPDATE convs SET mode = ?, ttl = ? WHERE conv = ?",
    "set_all_delivered": "UPDATE convs SET all_delivered = ? WHERE conv = ?"
                         " IF all_delivered = ?",
    "set_all_read": "UPDATE convs SET all_read = ? WHERE conv = ? IF all_read = ?",
    "set_expired": "UPDATE convs SET expired_upto = ? WHERE conv = ?",
    "disappearing": "SELECT conv FROM disappearing WHERE k = 0",
    "add_disappearing": "INSERT INTO disappearing (k, conv) VALUES (0, ?)",
    "del_disappearing": "DELETE FROM disappearing WHERE k = 0 AND conv = ?",
    "marks": "SELECT user, delivered, read FROM marks WHERE conv = ?",
    "mark": "SELECT delivered, read FROM marks WHERE conv = ? AND user = ?",
    "set_delivered": "UPDATE marks USING TIMESTAMP ? SET delivered = ?"
                     " WHERE conv = ? AND user = ?",
    "set_read": "UPDATE marks USING TIMESTAMP ? SET read = ? WHERE conv = ? AND user = ?",
    "new_group": "INSERT INTO groups (grp, name, created_ts) VALUES (?, ?, ?) IF NOT EXISTS",
    "group": "SELECT name FROM groups WHERE grp = ?",
    "rename": "UPDATE groups SET name = ? WHERE grp = ?",
    "members": "SELECT user, admin, joined_seq, pos FROM group_members WHERE grp = ?",
    "add_member": "INSERT INTO group_members (grp, user, admin, joined_seq, pos)"
                  " VALUES (?, ?, ?, ?, ?)",
    "del_member": "DELETE FROM group_members WHERE grp = ? AND user = ?",
    "make_admin": "UPDATE group_members SET admin = true WHERE grp = ? AND user = ?",
    "user_groups": "SELECT grp FROM user_groups WHERE user = ?",
    "add_user_group": "INSERT INTO user_groups (user, grp) VALUES (?, ?)",
    "del_user_group": "DELETE FROM user_groups WHERE user = ? AND grp = ?",
    "add_job": "INSERT INTO fanout (conv, seq, recipients, done) VALUES (?, ?, ?, 0)",
    "list_job": "INSERT INTO fanout_jobs (shard, conv, seq) VALUES (0, ?, ?)",
    "unlist_job": "DELETE FROM fanout_jobs WHERE shard = 0 AND conv = ? AND seq = ?",
    "jobs": "SELECT conv, seq FROM fanout_jobs WHERE shard = 0",
    "older_jobs": "SELECT seq FROM fanout_jobs WHERE shard = 0 AND conv = ? AND seq < ?",
    "job": "SELECT recipients, done, owner, lease FROM fanout WHERE conv = ? AND seq = ?",
    "job_take": "UPDATE fanout SET owner = ?, lease = ? WHERE conv = ? AND seq = ?"
                " IF owner = ? AND lease = ?",
    "job_step": "UPDATE fanout SET done = ?, lease = ? WHERE conv = ? AND seq = ?"
                " IF owner = ? AND done = ?",
    "job_done": "DELETE FROM fanout WHERE conv = ? AND seq = ? IF owner = ?",
    "job_release": "UPDATE fanout SET owner = null, lease = null WHERE conv = ? AND seq = ?"
                   " IF owner = ?",
    # numbering=owner: the group's shard lease says who runs its jobs (no lease per job);
    # a step that lands after the job was deleted (an old owner's, late) leaves a row that
    # expires
    "job_progress": f"UPDATE fanout USING TTL {7 * 86_400} SET done = ?"
                    " WHERE conv = ? AND seq = ?",
    "job_drop": "DELETE FROM fanout WHERE conv = ? AND seq = ?",
    # numbering=owner: shard leases (the only transactions), plain claims, a retry's checks
    "lease_take": "UPDATE shard_leases USING TTL ? SET owner = ? WHERE shard = ?"
                  " IF owner = null AND epoch = ?",
    "lease_epoch": "UPDATE shard_leases SET epoch = ? WHERE shard = ?",
    "lease_renew": "UPDATE shard_leases USING TTL ? SET owner = ? WHERE shard = ?"
                   " IF owner = ? AND epoch = ?",
    "lease_release": "UPDATE shard_leases SET owner = null WHERE shard = ?"
                     " IF owner = ? AND epoch = ?",
    "own_seq": "UPDATE sends SET last_seq = ? WHERE conv = ?",
    "own_claim": "INSERT INTO sends (conv, sender, client_id, seq, ts, at)"
                 " VALUES (?, ?, ?, ?, ?, ?) USING TTL ?",
    "chat_claims": "SELECT last_seq, sender, client_id, seq, ts, at, done FROM sends"
                   " WHERE conv = ? LIMIT ?",
    "claims_of": "SELECT client_id, seq, ts, at, done FROM sends"
                 " WHERE conv = ? AND sender = ? AND client_id IN ?",
    "own_q": "UPDATE inbox SET last_q = ? WHERE user = ?",
    "own_marker": "INSERT INTO inbox (user, q, conv, seq, item_q) VALUES (?, ?, ?, ?, ?)"
                  " USING TTL ?",
    "inbox_at": "SELECT q, conv, seq, item_q FROM inbox WHERE user = ? AND q IN ?",
    "msg_key": "SELECT sender, client_id FROM messages WHERE conv = ? AND bucket = ? AND seq = ?",
    "queue": "INSERT INTO temp_queue (day, ts, conv, seq) VALUES (?, ?, ?, ?)",
    "queued": "SELECT ts, conv, seq FROM temp_queue WHERE day = ? AND ts < ? LIMIT ?",
    "unqueue": "DELETE FROM temp_queue WHERE day = ? AND ts < ?",
    "add_day": "INSERT INTO temp_days (k, day) VALUES (0, ?)",
    "days": "SELECT day FROM temp_days WHERE k = 0 AND day <= ?",
    "del_day": "DELETE FROM temp_days WHERE k = 0 AND day = ?",
}


@dataclasses.dataclass(slots=True)
class _Slot:
    entries: list[Any]
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    result: list[Any] | None = None
    error: BaseException | None = None
    dropped: bool = False  # its caller was cancelled: nobody takes the result


class _Combiner:
    """Group commit per partition: entries for one key that arrive while a write for that key
    runs are written together by the next write. The writes run in the store's nursery, so a
    caller that is cancelled does not cut a write in half; the results it would have taken
    go to `dropped` (if given), so that what they hold is let go."""

    def __init__(self, store: CassandraStore,
                 write: Callable[[str, list[Any]], Awaitable[list[Any]]],
                 dropped: Callable[[str, list[Any]], None] | None = None) -> None:
        self._store = store
        self._write = write
        self._dropped = dropped
        self._pending: dict[str, list[_Slot]] = {}

    async def submit(self, key: str, entries: list[Any]) -> list[Any]:
        slot = _Slot(entries)
        waiting = self._pending.get(key)
        if waiting is None:
            self._pending[key] = [slot]
            self._store._spawn(self._flush, key)
        else:
            waiting.append(slot)
        try:
            await slot.done.wait()
        except BaseException:  # (cancelled: before the write ended, or just after it)
            slot.dropped = True
            if slot.done.is_set():
                self._drop(key, slot)
            raise
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return slot.result

    async def _flush(self, key: str) -> None:
        while True:
            slots = self._pending.get(key)
            if not slots:
                self._pending.pop(key, None)
                return
            self._pending[key] = []
            try:
                results = await self._write(key, [e for s in slots for e in s.entries])
                i = 0
                for s in slots:
                    s.result = results[i : i + len(s.entries)]
                    i += len(s.entries)
            except Exception as exc:
                for s in slots:
                    s.error = exc
            for s in slots:
                s.done.set()
                if s.dropped:
                    self._drop(key, s)

    def _drop(self, key: str, slot: _Slot) -> None:
        if self._dropped is not None and slot.result is not None:
            self._dropped(key, slot.result)


_Row = tuple[tuple[Any, ...], str, tuple[Any, ...], int]  # partition, statement, values, size


@dataclasses.dataclass(slots=True)
class _Claim:
    seq: int
    ts: int
    new: bool  # this call took the seq
    done: bool = False
    at: int = 0
    stored: bool = False  # its message rows went in with the claim (numbering=owner)
    adopted: bool = False  # a retry redoing it here at once (see _append_held)


@dataclasses.dataclass(slots=True)
class _Recent:
    """numbering=owner: the items this node put in an inbox at positions (base, top], every
    one of them, as `items_upto` would read them (an ack within that range reads nothing)."""
    base: int
    top: int
    rows: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(slots=True)
class _Along:
    """numbering=owner: rows of other partitions written in the same request as an inbox's
    next batch (an ack's cursor and watermarks, with the DELIVERED receipts it appends)."""
    rows: list[tuple[str, tuple[Any, ...]]]


@dataclasses.dataclass(slots=True)
class _Members:
    name: str
    members: dict[str, tuple[bool, int]]  # user -> (admin, joined_seq), in joining order

    def info(self, group: str, mode: tuple[int, int] = modes.DEFAULT) -> GroupInfo:
        return GroupInfo(group, self.name, tuple(self.members),
                         tuple(u for u, (admin, _) in self.members.items() if admin), *mode)


def inbox_item(q: int, entry: Entry) -> Item:
    if isinstance(entry, Message):
        return Delivery(q, entry)
    return Notice(q, entry)


def _message(conv: str, r: dict[str, Any]) -> Message:
    """A message row (`msgs_in`) as a Message."""
    return Message(conv=conv, seq=r["seq"], ts=r["ts"], sender=r["sender"], device=r["device"],
                   id=r["client_id"], body=r["body"] or b"", group=r["grp"],
                   media=blobs.media(r["media"]), event=blobs.event(r["event"]))


def redo_wait(timeout: float) -> float:
    """numbering=owner: seconds after a send failed (its writes sent with this request
    timeout) until its retry may redo it: every write of the failed try has landed or never
    will, as when a lease is handed over (chatd.core.owners.lease_margin)."""
    return lease_margin(timeout)


def bucket(seq: int) -> int:
    return seq // BUCKET


def marker_q(conv: str, seq: int) -> int:
    """Where a message's marker row sits in a member's inbox partition: a negative q
    (items are at q >= 1, so no read of items meets a marker) from a 62-bit hash of the
    message, the same on every node. The row holds conv and seq, so a collision is seen."""
    h = hashlib.blake2b(f"{conv}\0{seq}".encode(), digest_size=8).digest()
    return -1 - (int.from_bytes(h, "big") & (2**62 - 1))


class JobBusy(StoreError):
    """Another node runs this fan-out job (its lease is live): not this node's to run now."""


class JobLater(JobBusy):
    """An earlier fan-out job of the same group is queued on this node: that one first."""


class CassandraStore:
    def __init__(self, url: str, name: str | None = None) -> None:
        self.url = CassandraURL.parse(url)
        self.db = Session(self.url)
        self.on_append: AppendListener | None = None
        self.on_batch: Callable[[float], None] | None = None
        self.fanout_mode: Literal["auto", "external"] = "auto"  # or "external": see SqliteStore
        self.on_fanout: Callable[[str, int], None] | None = None
        self._nursery: trio.Nursery | None = None
        self._inboxes = _Combiner(
            self, self._write_inbox_owned if self.url.numbering == "owner" else self._write_inbox)
        self.owners = self.url.numbering == "owner"
        self.remote: OwnerCalls | None = None  # owners on other nodes (set with Redis)
        self._claims = _Combiner(
            self, self._write_claims_owned if self.owners else self._write_claims,
            lambda conv, claims: self._release(conv, [c.seq for c in claims if c.new]))
        # numbering=owner: the shard leases this node took, and the last seq it numbered of
        # each chat of those shards (loaded once per lease)
        self._leases: dict[int, Lease] = {}
        self._lease_locks: dict[int, trio.Lock] = {}
        self._used: dict[int, float] = {}  # when a shard was last needed
        self._shard_keys: dict[int, set[str]] = {}  # chats and inboxes loaded, per shard
        self._seqs: dict[str, int] = {}
        # every claim of a chat that may be in the store, since the chat was loaded under the
        # lease (None: more than MAX_CLAIMS, read per batch): (sender, client id) -> claim
        self._claimed: dict[str, dict[tuple[str, str], _Claim] | None] = {}
        self._claims_kept = 0  # in _claimed, all chats
        self._qs: dict[str, int] = {}  # user -> last inbox position given here
        self._recent: dict[str, _Recent] = {}  # user -> items given here, not acked yet
        # 1:1 messages numbered by a call under way, not appended yet: the ids of that call's
        # own entry objects (a redo of the same message in another call is not fresh)
        self._fresh: set[int] = set()
        # claims of sends stored here, to be marked done by the chat's next claim batch (or
        # by _keep_leases within a second): per chat, (sender, client id)
        self._dones: dict[str, set[tuple[str, str]]] = {}
        self._acks = _Combiner(self, self._write_acks)
        self._last_q: dict[str, int] = {}  # guesses; a failed transaction corrects them
        self._last_seq: dict[str, int] = {}
        self._modes: dict[str, tuple[float, tuple[int, int]]] = {}
        self._days: set[int] = set()
        self._acked_users: set[str] = set()
        self._advancing: dict[str, list[Any]] = {}  # see _advance_all: chat -> [by, ts] or []
        self._cursors: dict[str, dict[str, int]] = {}  # user -> device -> cursor (attached here)
        self._holes: dict[tuple[str, str], dict[int, int]] = {}  # see _note_holes
        self._mark_cache: dict[tuple[str, str], list[int]] = {}
        self._device_counts: dict[str, tuple[float, int]] = {}  # (when read, count)
        self._attaching: dict[str, int] = {}  # devices attaching here now, per user
        self._attached: dict[str, float] = {}  # when a device attached here last wrote its row
        self._jobs: collections.deque[tuple[str, int]] = collections.deque()
        self._job_left: dict[tuple[str, int], int] = {}
        self._owned: set[tuple[str, int]] = set()  # jobs this node holds the lease of
        self.fanouts_run = 0  # jobs this node ran to their end
        self._turns: dict[str, set[int]] = {}  # per chat: seqs taken here, not appended yet
        self._turn_changed = trio.Event()
        # per chat: those of _turns whose send has its claims, and releases them when it ends
        self._adopted: dict[str, set[int]] = {}
        # (conv, sender, client id) of sends that failed here after taking their seq: their
        # retry redoes them in their place (see _append_held) -> (seq, first failed, last
        # failed)
        self._redo_now: dict[tuple[str, str, str], tuple[int, float, float]] = {}
        # per chat: such seqs, with when the send first failed and when it was last tried
        self._held: dict[str, dict[int, tuple[float, float]]] = {}
        self._held_msgs: dict[tuple[str, int], NewMessage] = {}  # (conv, seq) -> its message
        # numbering=paxos, per chat: sends whose claims failed with no answer (they may have
        # applied): looked up before the chat's next claims (_lost_claims) -> (message, when)
        self._unsure: dict[str, dict[tuple[str, str], tuple[NewMessage, float]]] = {}
        self._unsure_bytes = 0  # (up to HELD_BYTES)
        self._held_bytes = 0  # about how many bytes those take (up to HELD_BYTES)
        self._failed_at = -math.inf  # when a request of this store last failed
        self._closed = False
        self.inflight = 0
        # owns the fan-out jobs it runs and the shard leases it holds; a name kept across
        # restarts (chatd.server.identity) takes those of its previous process back
        self.node_id = name or secrets.token_hex(8)
        self._named = name is not None
        self._reclaim_at = -math.inf  # (see _take)

    # ---- life ----------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._named:
            self._reclaim_at = trio.current_time() + lease_margin(self.url.timeout)
        await self.db.connect(None)
        version = await schema_version(self.db)
        if version != SCHEMA_VERSION:
            await self.db.close()
            what = "has no chatd schema" if version == 0 else f"has schema {version}"
            raise StoreError(f"keyspace {self.url.keyspace} {what}, this chatd needs"
                             f" {SCHEMA_VERSION}: run `chatd migrate --store <url>` first")
        await self.db.use(self.url.keyspace)
        await self.db.prepare(STATEMENTS)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            nursery.start_soon(self._sweep_fanouts)
            if self.owners:
                nursery.start_soon(self._keep_leases)
            await trio.sleep_forever()

    async def fanout_some(self) -> bool:
        """The oldest job this node knows of, run to its end; whether jobs are left. A job
        another node runs is left to it (the sweep finds it again if that node dies)."""
        if self._jobs:
            head = self._jobs[0]  # (or an earlier job of its chat queued behind it)
            job = min((j for j in self._jobs if j[0] == head[0]), key=lambda j: j[1])
            try:
                await self.fanout(*job)
            except JobLater:
                return True  # (an earlier job of its chat was queued meanwhile: that first)
            except JobBusy as exc:  # (not retried every second, holding up the jobs behind)
                log.info("%s: left to that node", exc)
            if job in self._jobs:
                self._jobs.remove(job)
            self._job_left.pop(job, None)
        return bool(self._jobs)

    def _mine(self, conv: str) -> bool:
        """Whether this node runs conv's fan-out jobs: with peers and numbering=owner, only
        the group's owner does (the node that numbered its messages); otherwise any node."""
        return not self.owners or self.remote is None or self.remote.owner_of(
            shard_of(conv)) is None

    async def _sweep_fanouts(self) -> None:
        """Fan-out jobs left unfinished by a stop or a crash, and (with peers) those of
        groups this node owns now whose node died or left, to carry on: at start, then every
        SWEEP_S ("auto" mode only: with Redis and numbering=paxos, the nodes share the jobs
        through a stream). One read of the partition that lists unfinished jobs. A job of a
        chat with a send at or before it still running here is left to that send, which
        queues its job in seq order (see _wait_turn): taken from the list, a later job ran
        before an earlier one whose send was still writing it (chaos: `reordered`)."""
        while True:
            if self.fanout_mode == "auto":
                try:
                    for job in await self.pending_fanouts():
                        if job not in self._job_left and self._mine(job[0]) and not any(
                                s <= job[1] for s in self._turns.get(job[0], ())):
                            self._queue_job(*job, 1)
                except StoreError as exc:
                    log.warning("could not list unfinished fan-outs, retrying: %s", exc)
            await trio.sleep(SWEEP_S)

    def _spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self._nursery is None:
            raise StoreError("store is not running")
        try:
            self._nursery.start_soon(fn, *args)
        except RuntimeError as exc:  # (closing: a fan-out step still running when the store
            raise StoreError("store is closed") from exc  # stopped is told so, and ends)

    async def aclose(self) -> None:
        """Give back the fan-out jobs this node was running (so another node, or this one
        restarted, carries on at once instead of after the lease), then disconnect."""
        self._closed = True
        with trio.move_on_after(2):  # (one not written: its retry redoes the send, no harm)
            for conv in list(self._dones):
                await self._write_dones(conv)
        with trio.move_on_after(5):  # (a lightweight transaction each: slow when busy)
            for key in list(self._owned):
                try:
                    await self.db.run("job_release", (*key, self.node_id))
                except StoreError:
                    break
        with trio.move_on_after(2):  # (a lease not given back ends with its TTL)
            for shard, lease in list(self._leases.items()):
                if lease.valid(trio.current_time()):
                    lease.lost()
                    try:
                        await self.db.applied("lease_release",
                                              (shard, self.node_id, lease.epoch))
                    except StoreError:
                        break
        await self.db.close()

    @property
    def queue_depth(self) -> int:
        return self.inflight

    @property
    def fanout_pending(self) -> int:
        return sum(self._job_left.values())

    async def _op(self, coro: Awaitable[T]) -> T:
        if self._closed:
            raise StoreError("store is closed")
        self.inflight += 1
        started = trio.current_time()
        try:
            return await coro
        except StoreError:
            self._failed_at = trio.current_time()  # (see _wait_turn: held seqs)
            raise
        finally:
            self.inflight -= 1
            if self.on_batch is not None:
                self.on_batch(trio.current_time() - started)

    async def _gather(self, calls: Iterable[Callable[..., Awaitable[Any]]]) -> list[Any]:
        """Run calls concurrently; the first StoreError is raised as itself."""
        fns = list(calls)
        if len(fns) == 1:
            return [await fns[0]()]
        results: list[Any] = [None] * len(fns)
        errors: list[StoreError] = []

        async def one(i: int, fn: Callable[..., Awaitable[Any]]) -> None:
            try:
                results[i] = await fn()
            except StoreError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for i, fn in enumerate(fns):
                nursery.start_soon(one, i, fn)
        if errors:
            raise errors[0]
        return results

    # ---- users and devices -----------------------------------------------------------------

    async def add_user(self, user: str) -> None:
        await self._op(self.db.run("add_user", (user,)))

    async def has_user(self, user: str) -> bool:
        return bool(await self._op(self.db.run("user", (user,))))

    async def _devices(self, user: str) -> dict[str, int]:
        started = trio.current_time()
        devs = {r["device"]: r["cursor"] or 0 for r in await self.db.run("devices", (user,))}
        if len(self._device_counts) >= MAX_CACHED:
            self._device_counts.clear()
        cached = self._device_counts.get(user)
        if cached is None or cached[0] <= started:  # (not over a later read's count)
            self._device_counts[user] = (started, len(devs))
        return devs

    async def _device_count(self, user: str) -> int:
        """How many devices the user has, trusted from memory for CACHE_S (it decides whether
        a sender's other devices get a copy). A count read before a device attached through
        this node had written its row (or while one is attaching) is not trusted: two devices
        attaching at once would each have counted only itself."""
        cached = self._device_counts.get(user)
        now = trio.current_time()
        if (cached is not None and now - cached[0] < CACHE_S
                and user not in self._attaching and cached[0] >= self._attached.get(user, 0)):
            return cached[1]
        return len(await self._devices(user))

    async def attach_device(self, user: str, device: str) -> int:
        async def op() -> int:
            await self.db.run("add_user", (user,))
            devs = await self._devices(user)
            cursor = devs.get(device)
            if cursor is None:
                cursor = min(devs.values(), default=0)
                self._attaching[user] = self._attaching.get(user, 0) + 1
                try:
                    await self.db.run("set_cursor", (cursor + 1, cursor, user, device))
                finally:
                    if (n := self._attaching.pop(user) - 1) > 0:
                        self._attaching[user] = n
                    if len(self._attached) >= MAX_CACHED:
                        self._attached.clear()
                        self._device_counts.clear()
                    self._attached[user] = trio.current_time()
                await self._devices(user)  # counted after its own row is there
            if len(self._cursors) >= MAX_CACHED:
                self._cursors.clear()  # (a miss costs one read)
            self._cursors.setdefault(user, {})[device] = cursor
            return cursor

        return await self._op(op())

    async def cursor(self, user: str, device: str) -> int:
        return (await self._op(self._devices(user))).get(device, 0)

    # ---- counters: conditional batches, combined per partition -----------------------------

    async def _read_last_q(self, user: str) -> int:
        rows = await self.db.run("last_q", (user,))
        return (rows[0]["last_q"] or 0) if rows else 0

    async def _read_last_seq(self, conv: str) -> int:
        rows = await self.db.run("last_seq", (conv,))
        return (rows[0]["last_seq"] or 0) if rows else 0

    async def _write_inbox(self, user: str, entries: list[Entry]
                           ) -> list[tuple[str, Item] | None]:
        """Append messages and receipts to the user's inbox, as items at the next positions;
        the listener sees them in q order.

        A message (not a receipt) goes in with its marker (`marker_q`) in the same
        conditional batch, `IF NOT EXISTS`: if the marker is there, the item is in this inbox
        already (the fan-out chunk it belongs to is run again: after its node died before
        recording the step, by an owner whose lease ran out; a one-to-one send redone by its
        retry after being interrupted after this step; or a timeout that hid a batch that
        applied) and it is not appended again; its result is None. A marker with another
        message's key (a 62-bit hash collision) lets the item in without a marker."""
        last = self._last_q.get(user)
        if last is None:
            last = await self._read_last_q(user)
        out: list[tuple[str, Item] | None] = []
        tries = 0
        marked: dict[int, tuple[str, int]] = {}  # markers of this call (an item twice in it)
        # items found there already (their marker names where): handed to the devices again,
        # as by _write_inbox_owned
        again: list[tuple[str, Item]] = []
        for i in range(0, len(entries), CHUNK):
            chunk = entries[i : i + CHUNK]
            markers: list[int | None] = []
            there = [False] * len(chunk)  # in the inbox already: not appended
            for j, it in enumerate(chunk):
                mark = None
                if type(it) is Message:
                    mark = marker_q(it.conv, it.seq)
                    if mark not in marked:
                        marked[mark] = (it.conv, it.seq)
                    elif marked[mark] == (it.conv, it.seq):
                        there[j] = True
                    else:
                        mark = None
                markers.append(mark)
            while True:
                todo = [j for j in range(len(chunk)) if not there[j]]
                if not todo:
                    break
                rows: list[tuple[str, tuple[Any, ...]]] = [
                    ("move_q", (last + len(todo), user, last or None))]
                for n, j in enumerate(todo, last + 1):
                    it = chunk[j]
                    if type(it) is Message:
                        rows.append(("put_item", (user, n, it.conv, it.seq, it.sender, None)))
                        if markers[j] is not None:
                            rows.append(("put_marker", (user, markers[j], it.conv, it.seq, n,
                                                        MARK_TTL)))
                    else:
                        assert type(it) is ReceiptNote
                        rows.append(("put_item", (user, n, it.conv, 0, None,
                                                  blobs.receipt_blob(it))))
                try:
                    ok, current = await self.db.applied(self.db.batch(rows))
                except StoreError as exc:
                    self._last_q.pop(user, None)  # unknown whether it applied: read again
                    if not isinstance(exc, StoreTimeout) or (tries := tries + 1) > RETRIES:
                        raise
                    # if it did apply: its messages find their markers next time (receipts
                    # are appended again: at-least-once, see docs/CASSANDRA.md)
                    last = await self._read_last_q(user)
                    continue
                if ok:
                    break
                last = (current[0].get("last_q") or 0) if current else 0  # another node's
                for r in current:  # markers already there: those items are in the inbox
                    if (r.get("q") or 0) < 0:
                        for j in todo:
                            if markers[j] == r["q"]:
                                if (r["conv"], r["seq"]) == marked[r["q"]]:
                                    if not there[j] and r.get("item_q") is not None:
                                        again.append((user, inbox_item(r["item_q"], chunk[j])))
                                    there[j] = True
                                else:
                                    markers[j] = None  # a collision: in without a marker
            items = tuple((user, inbox_item(n, chunk[j])) for n, j in enumerate(todo, last + 1))
            last += len(todo)
            self._last_q[user] = last
            placed = iter(items)
            out += [None if there[j] else next(placed) for j in range(len(chunk))]
            if self.on_append is not None and (items or again):
                try:
                    self.on_append((*again, *items))
                except Exception:
                    log.exception("append listener failed")
            again = []
        return out

    async def _append_items(self, per_user: dict[str, list[Entry]]) -> list[tuple[str, Item]]:
        """Append to each user's inbox; what is there already (see _write_inbox) is left out
        of the result."""
        results = await self._gather(
            functools.partial(self._inbox, u, e) for u, e in per_user.items() if e)
        return [x for r in results for x in r if x is not None]

    async def _append_finishing(self, per_user: dict[str, list[Entry]]
                                ) -> list[tuple[str, Item]]:
        """numbering=owner: a send's inbox appends, tried again every second if they fail
        (for up to FINISH_FOR) while this node holds the chat's lease (and, with either
        numbering, a group's "all" receipts: _advance_all_once). The send's claim
        and message are stored: it is finished here, in its place, rather than failed and
        left held for its device's retry, which may come too late (a device that moves to
        another node when the inbox's owner restarts), after the chat's later messages. If
        the lease ends first, the chat's next owner finishes it (_finish_cut_short)."""
        convs = {e.conv for es in per_user.values() for e in es}
        leases = [(lease, lease.epoch) for c in convs
                  if (lease := self._leases.get(shard_of(c))) is not None]
        give_up = trio.current_time() + FINISH_FOR
        while True:
            try:
                return await self._append_items(per_user)
            except StoreError as exc:
                now = trio.current_time()
                if self._closed or now >= give_up or any(
                        lease.epoch != epoch or not lease.valid(now) for lease, epoch in leases):
                    raise
                log.warning("inbox appends of %s failed, trying again: %s", sorted(convs), exc)
            # (what the failed try wrote may be there: looked up by its markers from now on,
            # and handed to the devices again if found)
            self._fresh.difference_update(id(e) for es in per_user.values()
                                          for e in es if type(e) is Message)
            await trio.sleep(1.0)

    async def _inbox(self, user: str, entries: list[Entry]) -> list[tuple[str, Item] | None]:
        """Append to user's inbox here, or by the node that owns it (numbering=owner: the
        call returns once that node wrote them, so a send is SENT only after its items are
        in)."""
        node = self._owner(user)
        if node is None:
            return await self._inboxes.submit(user, entries)
        assert self.remote is not None
        fresh = [type(e) is Message and id(e) in self._fresh for e in entries]
        placed = await self.remote.inbox(node, user, entries, fresh,
                                         self._call_timeout("inbox"))
        return [None if q is None else (user, inbox_item(q, e))
                for q, e in zip(placed, entries, strict=True)]

    async def inbox_here(self, user: str, entries: list[Entry], fresh: list[bool]
                         ) -> list[int | None]:
        new = {id(e) for e, f in zip(entries, fresh, strict=True) if f and type(e) is Message}
        self._fresh |= new
        try:
            got = await self._op(self._inboxes.submit(user, entries))
        finally:
            self._fresh -= new
        return [None if x is None else x[1].q for x in got]

    async def _write_claims(self, conv: str, msgs: list[NewMessage]) -> list[_Claim]:
        """Take seqs for the messages not sent before; find the claims of those that were."""
        found: dict[tuple[str, str], _Claim] = {}
        todo = list({(m.sender, m.client_id): m for m in msgs}.values())
        if conv in self._unsure:
            await self._lost_claims(conv)
        last = self._last_seq.get(conv)
        if last is None:
            last = await self._read_last_seq(conv)
        at = now_ms()  # marks this call's claims: seen again after a timeout, they are ours
        tries = 0
        while todo:
            chunk = todo[:CHUNK]
            rows: list[tuple[str, tuple[Any, ...]]] = [
                ("move_seq", (last + len(chunk), conv, last or None))]
            rows += [("claim", (conv, m.sender, m.client_id, n, m.ts, at, IDS_TTL))
                     for n, m in enumerate(chunk, last + 1)]
            try:
                ok, current = await self.db.applied(self.db.batch(rows))
            except StoreError as exc:
                self._last_seq.pop(conv, None)
                if not isinstance(exc, StoreTimeout) or (tries := tries + 1) > RETRIES:
                    raise
                last = await self._read_last_seq(conv)  # (if it applied: our claims, below)
                continue
            if ok:
                for n, m in enumerate(chunk, last + 1):
                    found[(m.sender, m.client_id)] = _Claim(n, m.ts, True)
                last += len(chunk)
                todo = todo[CHUNK:]
                continue
            last = max((r.get("last_seq") or 0 for r in current), default=0)
            mine = {(m.sender, m.client_id) for m in chunk}
            for r in current:  # client ids claimed before: retries (or ours, timed out)
                if r.get("client_id") is not None and r.get("seq") is not None:
                    key = (r["sender"], r["client_id"])
                    found[key] = _Claim(r["seq"], r["ts"], key in mine and r["at"] == at,
                                        bool(r["done"]), r["at"] or 0)
            todo = [m for m in todo if (m.sender, m.client_id) not in found]
        self._last_seq[conv] = last
        # (held here, before the next claims of this chat are taken: see _wait_turn)
        return self._hold_turns(conv, msgs, found)

    async def _lost_claims(self, conv: str) -> None:
        """numbering=paxos: sends of this chat whose claims failed with no answer. A claim
        may have applied all the same (Cassandra restarting after it wrote it): its seq is
        then taken, and the chat's next sends went on while its retry came later, and was
        appended after them (the suite's Cassandra restart run: `reordered`). So before the
        chat's next claims, such claims are looked up; one found (not done) is held for its
        retry as if its send had failed after claiming (see _append_held): the chat's later
        sends wait for it, and the store redoes it in its place if the retry is late."""
        unsure = self._unsure.pop(conv)
        self._unsure_bytes -= sum(message_bytes(m) for m, _ in unsure.values())
        now = trio.current_time()
        unsure = {k: v for k, v in unsure.items() if now - v[1] < HOLD_MAX}
        by_sender: dict[str, list[str]] = {}
        for sender, cid in unsure:
            by_sender.setdefault(sender, []).append(cid)
        if not by_sender:
            return
        try:
            found = await self._gather(
                functools.partial(self.db.run, "claims_of", (conv, sender, cids))
                for sender, cids in by_sender.items())
        except StoreError:
            kept = self._unsure.setdefault(conv, {})  # (looked up next time)
            for k, v in unsure.items():
                if k not in kept:
                    kept[k] = v
                    self._unsure_bytes += message_bytes(v[0])
            raise
        for sender, rows in zip(by_sender, found, strict=True):
            for r in rows:
                if r["done"] or r["seq"] is None:
                    continue
                m, first = unsure[(sender, r["client_id"])]
                seq = r["seq"]
                self._turns.setdefault(conv, set()).add(seq)
                self._hold_for_retry(m, seq, first, now)
                log.info("%s: seq %d, claimed by a send whose answer was lost, held for its"
                         " retry", conv, seq)

    def _hold_for_retry(self, m: NewMessage, seq: int, first: float, now: float) -> None:
        """m's seq held for its retry (first failed at `first`, last tried `now`), its
        message kept for the store's own redo while there is room (HELD_BYTES)."""
        self._redo_now[(m.conv, m.sender, m.client_id)] = (seq, first, now)
        self._held.setdefault(m.conv, {})[seq] = (first, now)
        if (m.conv, seq) not in self._held_msgs and (
                self._held_bytes + message_bytes(m) <= HELD_BYTES):
            self._held_msgs[(m.conv, seq)] = m
            self._held_bytes += message_bytes(m)

    def _hold_turns(self, conv: str, msgs: list[NewMessage],
                    found: dict[tuple[str, str], _Claim]) -> list[_Claim]:
        """The claims of msgs in order, the new seqs held until appended (see _wait_turn)."""
        self._turns.setdefault(conv, set()).update(c.seq for c in found.values() if c.new)
        out = []
        for m in msgs:  # a client id twice in one call: the second is a retry of the first
            c = found[(m.sender, m.client_id)]
            out.append(c)
            if c.new:
                found[(m.sender, m.client_id)] = _Claim(c.seq, c.ts, False, True)
        return out

    # ---- conversation owners (numbering=owner): numbers in memory under a shard lease ------

    def _lease(self, shard: int) -> Lease:
        lease = self._leases.get(shard)
        if lease is None:
            lease = self._leases[shard] = Lease(self.url.lease, lease_margin(self.url.timeout))
        return lease

    async def _own(self, conv: str) -> Lease:
        """The lease of conv's shard, held by this node: taken now if it is free; StoreError
        if another node holds it, or owns the shard among the live nodes (with peers)."""
        shard = shard_of(conv)
        lease = self._lease(shard)
        self._used[shard] = trio.current_time()
        if lease.valid(trio.current_time()):
            return lease
        async with self._lease_locks.setdefault(shard, trio.Lock()):
            if not lease.valid(trio.current_time()):
                if (node := self._owner(conv)) is not None:  # (not taken back after a hand-over)
                    raise StoreError(f"this chat is numbered by node {node} now (shard {shard}):"
                                     " send it again")
                self._forget(shard)
                await self._take(shard, lease)
        return lease

    def _forget(self, shard: int) -> None:
        """What this node numbered in a shard is reloaded once it holds the shard again; the
        seqs held for the retries of its failed sends are let go (the chat's next owner
        redoes those when their retries come, REDO_AFTER_MS after the claim)."""
        keys = self._shard_keys.pop(shard, set())
        if self._redo_now and keys:
            for k in [k for k in self._redo_now if k[0] in keys]:
                del self._redo_now[k]
        for key in keys:
            if key in self._held:
                self._release(key, list(self._held[key]))
            self._seqs.pop(key, None)
            self._qs.pop(key, None)
            self._recent.pop(key, None)
            self._drop_claims(key)

    async def _take(self, shard: int, lease: Lease) -> None:
        """Take a free shard (a new epoch) or renew our own. The lease counts from the moment
        the request is sent (Lease.granted)."""
        ttl = math.ceil(self.url.lease)
        epoch: int | None = lease.epoch or None
        for _ in range(3):
            sent = trio.current_time()
            ok, current = await self.db.applied(self.db.batch([
                ("lease_take", (ttl, self.node_id, shard, epoch)),
                ("lease_epoch", ((epoch or 0) + 1, shard))]))
            if ok:
                lease.granted((epoch or 0) + 1, sent)
                return
            row = current[0] if current else {}
            epoch = row.get("epoch")
            if row.get("owner") == self.node_id and epoch is not None:  # ours still
                # (or our previous process's, killed: taken back once every write it sent
                # has landed or never will, as another node would once the lease ran out)
                if (wait := self._reclaim_at - trio.current_time()) > 0:
                    raise StoreError(f"this node restarted; it numbers the chats of shard"
                                     f" {shard} again in {wait:.1f} s: send it again then")
                sent = trio.current_time()
                ok, _ = await self.db.applied(
                    "lease_renew", (ttl, self.node_id, shard, self.node_id, epoch))
                if ok:
                    lease.granted(epoch, sent)
                    return
            elif row.get("owner") is not None:
                raise StoreError(f"this chat is numbered by node {row['owner']} now (shard"
                                 f" {shard}): send it there, or again once its lease ends")
        raise StoreError(f"shard {shard}: could not take its lease, try again")

    async def _keep_leases(self) -> None:
        """Renew the leases of shards used within a lease's time; let the others lapse."""
        while True:
            await trio.sleep(min(1.0, self.url.lease / 10))
            for conv in list(self._dones):
                self._spawn(self._write_dones, conv)
            now = trio.current_time()
            for shard, lease in list(self._leases.items()):
                if not lease.valid(now) or self._lease_locks.setdefault(
                        shard, trio.Lock()).locked():
                    continue
                if self.remote is not None and self.remote.owner_of(shard) is not None:
                    self._spawn(self._hand_over, shard, lease)
                elif lease.renew_due(now) and now - self._used.get(shard, -math.inf) < (
                        self.url.lease):
                    self._spawn(self._renew, shard, lease)

    async def _hand_over(self, shard: int, lease: Lease) -> None:
        """Another node owns the shard now (the live nodes changed): number nothing more,
        wait until every write sent under the lease has landed or timed out (the lease's
        margin), then give the lease back, so that node takes the shard at once rather than
        once the lease has run out."""
        async with self._lease_locks.setdefault(shard, trio.Lock()):
            if not lease.valid(trio.current_time()):
                return
            epoch = lease.epoch
            lease.lost()
            self._forget(shard)
            await trio.sleep(lease_margin(self.url.timeout))
            try:
                await self.db.applied("lease_release", (shard, self.node_id, epoch))
            except StoreError as exc:  # (then it ends with its time to live)
                log.warning("could not give back the lease of shard %d: %s", shard, exc)

    def _done_rows(self, conv: str) -> tuple[set[tuple[str, str]], list[tuple[str, Any]]]:
        """The done marks waiting for conv's claims partition (kept until written)."""
        keys = set(self._dones.get(conv, ()))
        return keys, [("done", (IDS_TTL, conv, s, c)) for s, c in sorted(keys)]

    def _dones_written(self, conv: str, keys: set[tuple[str, str]]) -> None:
        left = self._dones.get(conv)
        if left is not None:
            left -= keys
            if not left:
                del self._dones[conv]

    async def _write_dones(self, conv: str) -> None:
        """The done marks of a chat that no claim batch took along (a quiet chat)."""
        keys, rows = self._done_rows(conv)
        if not rows:
            return
        try:
            for i in range(0, len(rows), CHUNK):
                await self.db.run(self.db.batch(rows[i : i + CHUNK]))
        except StoreError as exc:  # (tried again in a second)
            log.warning("could not mark sends of %s done: %s", conv, exc)
            return
        self._dones_written(conv, keys)

    async def _renew(self, shard: int, lease: Lease) -> None:
        lock = self._lease_locks.setdefault(shard, trio.Lock())
        if lock.locked():
            return
        async with lock:
            epoch = lease.epoch
            if not lease.renew_due(trio.current_time()):
                return
            sent = trio.current_time()
            try:
                ok, _ = await self.db.applied("lease_renew", (
                    math.ceil(self.url.lease), self.node_id, shard, self.node_id, epoch))
            except StoreError as exc:  # (tried again in a second, until the lease ends)
                log.warning("could not renew the lease of shard %d: %s", shard, exc)
                return
            if ok and lease.epoch == epoch:
                lease.granted(epoch, sent)
            else:
                lease.lost()
                self._forget(shard)

    def _fence(self, key: str, lease: Lease, epoch: int) -> None:
        """Number nothing once the lease may have ended (checked just before each write)."""
        if lease.epoch != epoch or not lease.valid(trio.current_time()):
            self._seqs.pop(key, None)
            self._qs.pop(key, None)
            raise StoreError("this node's lease on the chat ended: send it again")

    async def _numbering(self, key: str, numbers: dict[str, int],
                         read_last: Callable[[str], Awaitable[int]]
                         ) -> tuple[Lease, int, int, bool]:
        """The lease over key's shard, its epoch, key's last number (a chat's seq or an
        inbox's position: read once per lease, then kept in `numbers`), and whether it was
        read just now."""
        lease = await self._own(key)
        epoch = lease.epoch
        last = numbers.get(key)
        if last is not None:
            return lease, epoch, last, False
        last = await read_last(key)
        try:
            self._fence(key, lease, epoch)
        except StoreError:  # (what it read may be older than what another owner wrote since)
            self._drop_claims(key)
            raise
        numbers[key] = last
        self._shard_keys.setdefault(shard_of(key), set()).add(key)
        return lease, epoch, last, True

    async def _fenced(self, key: str, lease: Lease, epoch: int, stmt: Any) -> Any:
        """A write that numbers: the lease checked right before the driver sends it (no
        await in between)."""
        self._fence(key, lease, epoch)
        return await self.db.run(stmt)

    async def _write_inbox_owned(self, user: str, entries: list[Entry | _Along]
                                 ) -> list[tuple[str, Item] | None]:
        """_write_inbox by the owner of the user's shard: positions from memory (the last one
        read once per lease), items written with plain batches. Each message item goes in
        with a marker row (`marker_q`) that says where the item is. A message that may be
        in this inbox already (a fan-out chunk run again, a send redone by its retry) is
        looked up first: its marker, then the item the marker names; only a message
        numbered by this very send (`_fresh`: the send's own entry objects) skips the
        look-up. (Keyed by chat and seq, it let a redo of the message, while the first call
        still waited on another chat's appends, skip it too: appended twice, finding 6 (d)
        in docs/RELIABILITY.md.) Rows `_Along` go in the first batch (their results are
        None)."""
        lease, epoch, last, read = await self._numbering(user, self._qs, self._read_last_q)
        if read:
            self._recent[user] = _Recent(last, last)
        there = [False] * len(entries)
        seen: set[tuple[str, int]] = set()
        maybe: dict[int, list[int]] = {}  # marker -> entries
        along: list[tuple[str, tuple[Any, ...]]] = []
        for j, it in enumerate(entries):
            if type(it) is _Along:
                along += it.rows
                there[j] = True
            elif type(it) is Message:
                if (it.conv, it.seq) in seen:
                    there[j] = True  # (twice in this call)
                    continue
                seen.add((it.conv, it.seq))
                if id(it) not in self._fresh:
                    maybe.setdefault(marker_q(it.conv, it.seq), []).append(j)
        # items found there already: handed to the devices again (below), since the write
        # that put them there may have failed as far as its caller knew, and then nobody told
        # the devices (a device that is online reads the store only when told)
        again: list[tuple[str, Item]] = []
        if maybe:
            marks = await self.db.run("inbox_at", (user, list(maybe)))
            named = {r["item_q"]: r for r in marks if r.get("item_q") is not None}
            found = await self.db.run("inbox_at", (user, list(named))) if named else []
            at = {r["q"]: r for r in found}
            for q, m in named.items():
                r = at.get(q)
                # No item there: every device read it and it was pruned (or it expired); the
                # marker, written in the same batch as the item, says it was appended.
                # Another item there: that write failed and q was given again; it goes in.
                if r is not None and (r["conv"], r["seq"]) != (m["conv"], m["seq"]):
                    continue
                for j in maybe.get(m["q"], ()):
                    e = entries[j]
                    if type(e) is Message and (e.conv, e.seq) == (m["conv"], m["seq"]):
                        if not there[j] and r is not None:
                            again.append((user, inbox_item(q, e)))
                        there[j] = True
        todo = [j for j in range(len(entries)) if not there[j]]
        chunks: list[list[tuple[str, tuple[Any, ...]]]] = [[]]
        for n, j in enumerate(todo, last + 1):
            it = entries[j]
            if len(chunks[-1]) >= CHUNK - 1:  # (an item and its marker in one batch)
                chunks.append([])
            if type(it) is Message:
                chunks[-1] += [("put_item", (user, n, it.conv, it.seq, it.sender, None)),
                               ("own_marker", (user, marker_q(it.conv, it.seq), it.conv,
                                               it.seq, n, MARK_TTL))]
            else:
                assert type(it) is ReceiptNote
                chunks[-1].append(("put_item", (user, n, it.conv, 0, None,
                                                blobs.receipt_blob(it))))
        if todo:
            top = last + len(todo)
            self._fence(user, lease, epoch)
            if self._qs.get(user) != last:
                raise StoreError("this inbox's numbering moved meanwhile: try again")
            # taken for good: positions a failed write may still fill are never given again
            self._qs[user] = top
            batches = [self.db.batch([("own_q", (top, user)), *(along if i == 0 else ()),
                                      *chunk]) for i, chunk in enumerate(chunks)]
            recent = self._recent.pop(user, None)
            for tries in range(RETRIES + 1):  # the same rows again: idempotent
                try:
                    await self._gather(functools.partial(self._fenced, user, lease, epoch, b)
                                       for b in batches)
                    break
                except StoreError as exc:
                    if not isinstance(exc, StoreTimeout) or tries == RETRIES:
                        # (items may be at these positions or not: known from here on)
                        self._recent[user] = _Recent(top, top)
                        raise
            if recent is not None and recent.top == last and len(recent.rows) < MAX_RECENT:
                for n, j in enumerate(todo, last + 1):
                    it = cast(Entry, entries[j])
                    got = it if type(it) is Message else None  # (else a receipt)
                    recent.rows[n] = {"q": n, "conv": it.conv, "seq": got.seq if got else 0,
                                      "sender": got.sender if got else None,
                                      "receipt": None if got else b""}
                recent.top = top
                self._recent[user] = recent
            else:
                self._recent[user] = _Recent(top, top)
        elif along:
            await self.db.run(self.db.batch(along))
        items = tuple((user, inbox_item(n, cast(Entry, entries[j])))
                      for n, j in enumerate(todo, last + 1))
        placed = iter(items)
        out = [None if there[j] else next(placed) for j in range(len(entries))]
        if self.on_append is not None and (items or again):
            try:
                self.on_append((*again, *items))
            except Exception:
                log.exception("append listener failed")
        return out

    async def _write_claims_owned(
            self, conv: str, entries: list[tuple[NewMessage, Callable[[int, int], list[_Row]]]]
    ) -> list[_Claim]:
        """_write_claims by the chat's owner: seqs from memory (the last one read once per
        lease), claims written with a plain batch; earlier claims of these client ids read
        first (a retry finds its seq). A new claim's message rows (from its entry's
        function of seq and ts) go in the same request, unless they are large; and the
        done marks waiting for this chat (_dones)."""
        msgs = [m for m, _ in entries]
        rows_of = {(m.sender, m.client_id): f for m, f in entries}
        lease, epoch, last, _ = await self._numbering(conv, self._seqs, self._load_chat)
        todo = list({(m.sender, m.client_id): m for m in msgs}.values())
        found = await self._earlier_claims(conv, todo, last)
        new = [m for m in todo if (m.sender, m.client_id) not in found]
        if new:
            at = now_ms()
            top = last + len(new)
            dones, done_rows = self._done_rows(conv)  # (same partition: no extra request)
            rows = [(*r, 50) for r in done_rows]
            stored = set()
            for n, m in enumerate(new, last + 1):
                rows.append(("own_claim", (conv, m.sender, m.client_id, n, m.ts, at, IDS_TTL),
                             50))
                extra = rows_of[(m.sender, m.client_id)](n, m.ts)
                if sum(r[3] for r in extra) <= SMALL_BATCH_BYTES:
                    rows += [(r[1], r[2], r[3]) for r in extra]
                    stored.add((m.sender, m.client_id))
            chunks: list[list[tuple[str, tuple[Any, ...], int]]] = [[]]
            for r in rows:  # (the rows of a chat's claims partition and its messages')
                if chunks[-1] and (len(chunks[-1]) >= CHUNK or sum(
                        x[2] for x in chunks[-1]) + r[2] > BATCH_BYTES):
                    chunks.append([])
                chunks[-1].append(r)
            self._fence(conv, lease, epoch)
            if self._seqs.get(conv) != last:
                raise StoreError("this chat's numbering moved meanwhile: send it again")
            self._seqs[conv] = top
            known = self._claimed.get(conv)
            if known is not None:  # (kept whether the write applies or not: it may have)
                kept = len(known)
                for n, m in enumerate(new, last + 1):
                    known[(m.sender, m.client_id)] = _Claim(n, m.ts, False, False, at)
                self._claims_kept += len(known) - kept
                if len(known) > MAX_CLAIMS or self._claims_kept > MAX_CLAIMS_KEPT:
                    self._claims_off(conv)
            try:
                await self._gather(
                    functools.partial(self._fenced, conv, lease, epoch, self.db.batch(
                        [("own_seq", (top, conv)), *((r[0], r[1]) for r in chunk)]))
                    for chunk in chunks)
            except StoreError:
                # whether it applied is unknown: read again (a claim that lands late, its
                # seq given to another message meanwhile, is no claim: _earlier_claims)
                self._seqs.pop(conv, None)
                raise
            self._dones_written(conv, dones)
            for n, m in enumerate(new, last + 1):
                key = (m.sender, m.client_id)
                found[key] = _Claim(n, m.ts, True, stored=key in stored)
        return self._hold_turns(conv, msgs, found)

    async def _load_chat(self, conv: str) -> int:
        """A chat's last seq, read by its owner once per lease (and after a failed claim
        write), with every claim in the chat's partition (up to MAX_CLAIMS): from then on the
        owner knows every claim there (it writes all the new ones), so a send's earlier claim
        is looked up in memory, not read (docs/CASSANDRA.md, "Conversation owners")."""
        rows = await self.db.run("chat_claims", (conv, MAX_CLAIMS + 1))
        last = (rows[0]["last_seq"] or 0) if rows else 0
        claims = [r for r in rows if r.get("client_id") is not None]
        if conv not in self._shard_keys.get(shard_of(conv), ()):  # (first read this lease)
            await self._finish_cut_short(conv, last, claims)
        if conv in self._claimed and self._claimed[conv] is None:
            return last  # (stays read per batch until the lease is given up)
        known = self._claimed.get(conv) or {}
        self._claimed[conv] = known
        kept = len(known)
        for r in claims:  # (a claim this node wrote or tried is kept as it knows it)
            known.setdefault((r["sender"], r["client_id"]), _Claim(
                r["seq"], r["ts"], False, bool(r["done"]), r["at"] or 0))
        self._claims_kept += len(known) - kept
        if len(known) > MAX_CLAIMS or self._claims_kept > MAX_CLAIMS_KEPT:
            self._claims_off(conv)
        return last

    async def _finish_cut_short(self, conv: str, last: int, claims: list[dict[str, Any]]
                                ) -> None:
        """A chat's new owner (or this node, holding the chat's shard again) first finishes
        the sends that the chat's previous owner numbered and stored but did not finish
        (killed, or cut off, after its claim batch): their inbox items are appended, or their
        fan-out jobs written and queued, before any later message of the chat is numbered.
        Their retries used to finish them, whenever they came, after the later messages
        (the chaos checker's "reordered" with numbering=owner and a node SIGKILLed). Safe to
        do: the previous lease has ended and its margin passed, so none of its writes is
        still to land (docs/CASSANDRA.md, "Conversation owners"). A group's jobs still
        listed are queued first for the same reason. A claim whose message row is missing
        (a large message, written after its claim) is left to its retry, as before."""
        running = self._turns.get(conv, set())
        done_here = self._dones.get(conv, set())
        todo = {(r["sender"], r["client_id"]): r["seq"] for r in claims
                if not r["done"] and r["seq"] <= last and r["seq"] not in running
                and (r["sender"], r["client_id"]) not in done_here}
        listed = [r["seq"] for r in await self.db.run("older_jobs", (conv, last + 1))
                  ] if conv.startswith("g:") else []
        if not todo and not listed:
            return
        rows = await self._msg_rows(conv, sorted(set(todo.values())))
        per_user: dict[str, list[Entry]] = {}
        writes: list[Callable[..., Awaitable[Any]]] = []
        jobs: dict[int, int] = {}
        finished: set[tuple[str, str]] = set()
        for r in sorted(rows, key=lambda r: r["seq"]):
            seq, m, holders = r["seq"], _message(conv, r), sorted(r["holders"] or ())
            if todo.get((m.sender, m.id)) != seq:
                continue  # (another message's row: that claim landed late, it is no claim)
            finished.add((m.sender, m.id))
            if m.group is None:
                for u in holders:
                    per_user.setdefault(u, []).append(m)
                continue
            jobs[seq] = len(holders)
            if seq not in listed:
                writes += [functools.partial(self.db.run, "add_job", (conv, seq, holders)),
                           functools.partial(self.db.run, "list_job", (conv, seq)),
                           functools.partial(self._set_marks, conv, m.sender, seq, seq)]
        await self._gather(writes)
        for seq in sorted({*listed, *jobs}):
            self._queue_job(conv, seq, jobs.get(seq, 1))
        await self._append_items(per_user)
        log.info("%s: finished %d send(s) and queued %d fan-out job(s) left unfinished"
                 " under the chat's previous owner", conv, len(finished), len({*listed, *jobs}))
        self._dones.setdefault(conv, set()).update(finished)
        for r in claims:
            if (r["sender"], r["client_id"]) in finished:
                r["done"] = True

    def _queue_job(self, conv: str, seq: int, left: int) -> None:
        """A group message's fan-out job, to be run by this node after those queued before."""
        if self.fanout_mode == "auto":  # (else a node takes it from the Redis stream)
            self._job_left[(conv, seq)] = left
            if (conv, seq) not in self._jobs:
                self._jobs.append((conv, seq))
        if self.on_fanout is not None:
            self.on_fanout(conv, seq)

    def _drop_claims(self, conv: str) -> None:
        self._claims_off(conv)
        del self._claimed[conv]

    def _claims_off(self, conv: str) -> None:
        """Too many claims to keep: conv's are read per batch (until the lease is given up)."""
        known = self._claimed.get(conv)
        if known is not None:
            self._claims_kept -= len(known)
        self._claimed[conv] = None

    async def _earlier_claims(self, conv: str, msgs: list[NewMessage], last: int
                              ) -> dict[tuple[str, str], _Claim]:
        """The claims of these client ids already written. One not done is no claim if its
        seq is past what the owner numbered, or holds another message: a claim write that
        failed (no SENT was given) and landed after its seq went to another message."""
        found: dict[tuple[str, str], _Claim] = {}
        known = self._claimed.get(conv)
        if known is not None:  # every claim of the chat: in memory (see _load_chat)
            for m in msgs:
                if (c := known.get((m.sender, m.client_id))) is not None:
                    found[(m.sender, m.client_id)] = dataclasses.replace(c)
        else:
            by_sender: dict[str, list[str]] = {}
            for m in msgs:
                by_sender.setdefault(m.sender, []).append(m.client_id)
            results = await self._gather(
                functools.partial(self.db.run, "claims_of", (conv, sender, ids))
                for sender, ids in by_sender.items())
            for sender, rows in zip(by_sender, results, strict=True):
                for r in rows:
                    found[(sender, r["client_id"])] = _Claim(r["seq"], r["ts"], False,
                                                             bool(r["done"]), r["at"] or 0)
        running = self._turns.get(conv, set())
        done_here = self._dones.get(conv, set())
        check = []
        for key, c in list(found.items()):
            if key in done_here:  # (stored here, its done mark not written yet)
                c.done = True
            if c.done:
                continue
            if c.seq > last:
                del found[key]
            elif c.seq in running:
                c.at = now_ms()  # being stored by this node now: "still being stored"
            elif now_ms() - c.at >= REDO_AFTER_MS:
                check.append(key)
        rows = await self._gather(
            functools.partial(self.db.run, "msg_key", (conv, bucket(found[k].seq),
                                                       found[k].seq)) for k in check)
        for key, r in zip(check, rows, strict=True):
            if r and (r[0]["sender"], r[0]["client_id"]) != key:
                del found[key]
        return found

    # ---- sending ---------------------------------------------------------------------------

    def _turn_parts(self, conv: str, seqs: list[int]) -> list[list[int]]:
        """seqs (ascending, a call's of one chat) split where another send of the chat holds
        a seq between two of them (see step3 in _append_claimed)."""
        others = sorted(set(self._turns.get(conv, ())).difference(seqs))
        parts: list[list[int]] = []
        for seq in seqs:
            if parts and not any(parts[-1][-1] < o < seq for o in others):
                parts[-1].append(seq)
            else:
                parts.append([seq])
        return parts

    async def _wait_turn(self, conv: str, first: int, mine: Collection[int] = ()) -> None:
        """Wait until the sends of conv that took a seq below `first` on this node have
        appended their inbox items (or queued their fan-out jobs), so that each inbox gets a
        chat in seq order: a send takes its seq in step 1 and appends in step 3, and two sends
        in one chat would otherwise append in whichever order their steps 2 ended. The order
        matters beyond looks: an ack raises the reader's delivered watermark to the highest
        seq it covers, and a message appended after a higher one was acked never got its
        DELIVERED receipt (delivery.delivered skips what is under the watermark).
        A send still running (it has its claims: `_adopted`) is waited for until it ends,
        however slow (its own steps are bounded, and it releases its seqs whatever happens);
        a seq whose send never got its claims (its caller gone between claiming and holding
        its turn) is not waited for beyond TURN_WAIT."""
        def earlier() -> list[int]:  # (not the caller's own: `mine`)
            return [s for s in self._turns.get(conv, ()) if s < first and s not in mine]

        with trio.move_on_after(TURN_WAIT) as scope:
            while earlier():
                await self._turn_changed.wait()
        if not scope.cancelled_caught:
            return
        while True:  # (sends that still run: each releases its seqs, or is held, when it ends)
            running = self._adopted.get(conv, set())
            now = trio.current_time()
            # (held RETRY_HOLD after the device's last try, or after the store's last
            # failure: while the store fails, a device's tries may fail before they get
            # here; for a minute at most: the SDK and the web app give a send up by then)
            held = {s: until for s, (first, last) in self._held.get(conv, {}).items()
                    if (until := min(first + HOLD_MAX,
                                     max(last, self._failed_at) + RETRY_HOLD)) > now}
            orphans = [s for s in earlier() if s not in running and s not in held]
            if orphans:
                gone = self._redo_held(conv, orphans, now)
                if gone:
                    log.warning("%s: seqs %s held by no running send after %.0f s, going on",
                                conv, gone, TURN_WAIT)
                    self._release(conv, gone)
                if len(gone) < len(orphans):
                    continue  # (held again while redone here: waited for as such)
            if not earlier():
                return
            with trio.move_on_at(min((held[s] for s in earlier() if s in held),
                                     default=math.inf)):
                await self._turn_changed.wait()

    def _redo_held(self, conv: str, seqs: list[int], now: float) -> list[int]:
        """Of seqs held for retries that did not come in time, redo here those whose
        message this node keeps (`_held_msgs`), as their retry would, in their place; the
        others (held HOLD_MAX since the first failure, or not known here) are returned, to
        be let go. Letting a seq go used to let the chat's later messages overtake it, and
        its retry, when it came (the device's tries failing on the way, say through a node
        that no longer forwards them), appended it after them (the chaos checker's
        "reordered" with a node killed). A send whose seq is held is stored already, and in
        the chat's history: delivering it is what its device asked for (its retry is then
        a duplicate). A redo that fails holds the seq again, as a failed retry does."""
        gone = []
        for seq in sorted(seqs):
            m = self._held_msgs.get((conv, seq))
            held = self._held.get(conv, {}).get(seq)
            if m is None or held is None or now - held[0] >= HOLD_MAX:
                gone.append(seq)
                continue
            self._held[conv][seq] = (held[0], now)  # (not taken for an orphan meanwhile)
            self._spawn(self._redo_alone, m, seq)
        return gone

    async def _redo_alone(self, m: NewMessage, seq: int) -> None:
        log.info("%s: seq %d held for a retry that did not come: redone here", m.conv, seq)
        try:
            await self._op(self._append_held([m]))
        except StoreError as exc:
            log.warning("%s: seq %d, redone here, failed again: %s", m.conv, seq, exc)

    def _may_redo(self, conv: str, sender: str, client_id: str) -> bool:
        """Whether the retry of a send that failed here after taking its seq redoes it now,
        in its place (see _append_held): not while another redoes it (a redo by this node,
        _redo_held, and the device's retry; or two tries of the device)."""
        redo = self._redo_now.get((conv, sender, client_id))
        return redo is not None and redo[0] not in self._adopted.get(conv, ()) and (
            not self.owners or trio.current_time() - redo[2] >= redo_wait(self.url.timeout))

    def _release(self, conv: str, seqs: Iterable[int]) -> None:
        seqs = set(seqs)
        held = self._turns.get(conv)
        if held is not None:
            held.difference_update(seqs)
            if not held:
                del self._turns[conv]
        self._unhold(conv, seqs)
        self._unadopt(conv, *seqs)

    def _unhold(self, conv: str, seqs: Iterable[int]) -> None:
        held = self._held.get(conv)
        if held is not None:
            for seq in seqs:
                held.pop(seq, None)
                if (m := self._held_msgs.pop((conv, seq), None)) is not None:
                    self._held_bytes -= message_bytes(m)
            if not held:
                del self._held[conv]

    def _unadopt(self, conv: str, *seqs: int) -> None:
        """No send runs for these seqs any more (released, or held for a retry)."""
        adopted = self._adopted.get(conv)
        if adopted is not None:
            adopted.difference_update(seqs)
            if not adopted:
                del self._adopted[conv]
        self._turn_changed.set()
        self._turn_changed = trio.Event()

    async def _mode(self, conv: str, fresh: bool = False) -> tuple[int, int]:
        cached = self._modes.get(conv)
        if cached is not None and not fresh and trio.current_time() - cached[0] < CACHE_S:
            return cached[1]
        rows = await self.db.run("conv", (conv,))
        mode = (rows[0]["mode"] or 0, rows[0]["ttl"] or 0) if rows else modes.DEFAULT
        self._modes[conv] = (trio.current_time(), mode)
        return mode

    async def append_message(self, msg: NewMessage) -> Appended:
        return (await self.append_messages([msg]))[0]

    async def append_messages(self, msgs: list[NewMessage]) -> list[Appended]:
        return await self._op(self._append_all(msgs))

    async def append_here(self, msgs: list[NewMessage]) -> list[Appended]:
        return await self._op(self._append_claims(msgs))

    async def _detached(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """fn(*args) run in the store's nursery, its result (or StoreError) handed back.
        A send runs to its end even if its caller goes away meanwhile (the device's
        connection closed, a forwarded call given up): cut after it took its seq, it was
        left for its retry, which finished it many seconds later, after later messages of
        its chat and under the reader's watermarks, so with no receipt (docs/RELIABILITY.md,
        finding 3). Each of its steps is bounded, so it ends."""
        done = trio.Event()
        out: list[T] = []
        err: list[BaseException] = []

        async def run() -> None:
            try:
                out.append(await fn(*args))
            except Exception as exc:  # (handed to the caller, not the store's nursery)
                err.append(exc)
            except BaseException:  # (the store closing)
                err.append(StoreError("store is closing"))
                raise
            finally:
                done.set()

        self._spawn(run)
        await done.wait()
        if err:
            raise err[0]
        return out[0]

    def _owner(self, key: str) -> str | None:
        """The other node that numbers key's shard (numbering=owner with peers), or None."""
        return None if self.remote is None else self.remote.owner_of(shard_of(key))

    def _call_timeout(self, what: str) -> float:
        """How long to wait for an owner's answer: its requests (a timed-out one tried
        again) and, for a send, the inbox calls it makes in turn."""
        inbox = 2 * self.url.timeout + 2
        return inbox if what == "inbox" else 2 * inbox + TURN_WAIT

    async def _append_all(self, msgs: list[NewMessage]) -> list[Appended]:
        """Each chat's messages numbered by its owner: here, or handed to its node."""
        by_node: dict[str | None, list[int]] = {}
        for i, m in enumerate(msgs):
            by_node.setdefault(self._owner(m.conv), []).append(i)
        if list(by_node) == [None]:
            return await self._append_claims(msgs)
        out: list[Appended] = [Appended()] * len(msgs)

        async def part(node: str | None, idx: list[int]) -> None:
            some = [msgs[i] for i in idx]
            if node is None:
                got = await self._append_claims(some)
            else:
                assert self.remote is not None
                got = await self.remote.send(node, some, self._call_timeout("send"))
            for i, r in zip(idx, got, strict=True):
                out[i] = r

        await self._gather(functools.partial(part, n, idx) for n, idx in by_node.items())
        return out

    async def _append_claims(self, msgs: list[NewMessage]) -> list[Appended]:
        """Sends numbered here, run to their end whoever waits for them (see _detached)."""
        return await self._detached(self._append_held, msgs)

    async def _append_held(self, msgs: list[NewMessage]) -> list[Appended]:
        """A send that fails after it took its seq (a store error: Cassandra restarting or
        timing out) used to be finished by its retry 15 s later (REDO_AFTER_MS), after the
        later messages of its chat. With numbering=paxos its seq is now still held for it:
        the chat's later sends wait for it until RETRY_HOLD after its device's last try or
        the store's last failure (a try may fail before it gets here), a minute at most
        (HOLD_MAX), and its retry on this node redoes it at once and in its place. (Safe
        there: every inbox item goes in with its marker in a conditional batch, so a redo
        racing a late write of the failed try appends nothing twice.) numbering=owner holds
        the seq the same way, but writes inbox items plainly and looks their markers up
        first: its redo waits until the failed try's writes have landed or never will (the
        lease margin after the failure, `redo_wait`); a retry before that is "still being
        stored" and keeps the seq held."""
        claims: list[_Claim | None] = [None] * len(msgs)
        ok = False
        for m in msgs:  # (a try of a failed send: its seq is held on)
            redo = self._redo_now.get((m.conv, m.sender, m.client_id))
            if redo is not None and redo[0] in (held := self._held.get(m.conv, {})):
                held[redo[0]] = (redo[1], trio.current_time())
        try:
            out = await self._append_claimed(msgs, claims)
            ok = True
            return out
        finally:  # (whatever happened: later sends of these chats wait for nothing here)
            for m, c in zip(msgs, claims, strict=True):
                if c is None and not ok and not self._closed and not self.owners:
                    # (its claim may have applied with its answer lost: _lost_claims)
                    unsure = self._unsure.setdefault(m.conv, {})
                    if (m.sender, m.client_id) not in unsure and (
                            self._unsure_bytes + message_bytes(m) <= HELD_BYTES):
                        unsure[(m.sender, m.client_id)] = (m, trio.current_time())
                        self._unsure_bytes += message_bytes(m)
                if c is None or not (c.new or c.adopted):
                    continue
                key = (m.conv, m.sender, m.client_id)
                if ok or self._closed:
                    self._redo_now.pop(key, None)
                    self._release(m.conv, [c.seq])
                elif c.seq in self._turns.get(m.conv, ()):  # (its turn: held for its retry)
                    if len(self._redo_now) >= MAX_CACHED:
                        self._redo_now.clear()
                        self._held_msgs.clear()
                        self._held_bytes = 0
                    now = trio.current_time()
                    # (its retry failed too: the first failure stays)
                    first = self._redo_now.get(key, (c.seq, now, now))[1]
                    self._hold_for_retry(m, c.seq, first, now)
                    log.info("%s: seq %d held for the retry of its failed send", m.conv, c.seq)
                    self._unadopt(m.conv, c.seq)
                else:
                    self._release(m.conv, [c.seq])

    async def _append_claimed(self, msgs: list[NewMessage], claims: list[_Claim | None]
                              ) -> list[Appended]:
        by_conv: dict[str, list[int]] = {}
        for i, m in enumerate(msgs):
            by_conv.setdefault(m.conv, []).append(i)
        chat_modes: dict[str, tuple[int, int]] = {}
        devices: dict[str, int] = {}
        members: dict[str, _Members | None] = {}

        def targets_of(m: NewMessage) -> list[str]:
            g = members[m.group] if m.group is not None else None
            return list(delivery.send_targets(m.sender, m.recipients, g.members if g else (),
                                              devices[m.sender]))

        def msg_rows(m: NewMessage, seq: int, ts: int) -> list[_Row]:
            """The message row, and its day's queue row for a TEMPORARY chat."""
            mode, ttl = chat_modes[m.conv]
            out: list[_Row] = [((m.conv, bucket(seq)), "put_msg", (
                m.conv, bucket(seq), seq, ts, m.sender, m.device, m.client_id, m.body,
                blobs.media_blob(m.media), m.group, blobs.event_blob(m.event),
                set(targets_of(m)) or None, modes.ttl_of(mode, ttl)), len(m.body) + 100)]
            if modes.forgets_undelivered(mode):
                out.append(((ts // DAY_MS,), "queue", (ts // DAY_MS, ts, m.conv, seq), 50))
            return out

        async def claim(conv: str) -> None:
            idx = by_conv[conv]
            entries: list[Any] = [msgs[i] for i in idx]
            if self.owners:  # the owner writes the message rows with the claims
                entries = [(m, functools.partial(msg_rows, m)) for m in entries]
            for i, c in zip(idx, await self._claims.submit(conv, entries), strict=True):
                claims[i] = c  # (released by _append_held whatever happens: see _wait_turn)
                if c.new:
                    self._adopted.setdefault(conv, set()).add(c.seq)
                elif not c.done and self._may_redo(conv, msgs[i].sender, msgs[i].client_id):
                    c.adopted = True  # (its failed try's seq: held again, in its place)
                    self._turns.setdefault(conv, set()).add(c.seq)
                    self._adopted.setdefault(conv, set()).add(c.seq)
                    self._unhold(conv, [c.seq])

        async def conv_mode(conv: str) -> None:
            chat_modes[conv] = await self._mode(conv)

        async def count(user: str) -> None:
            devices[user] = await self._device_count(user)

        async def group(name: str) -> None:
            members[name] = await self._group(name)

        claim_all = [functools.partial(claim, c) for c in by_conv]
        lookups = [*(functools.partial(conv_mode, c) for c in by_conv),
                   *(functools.partial(count, u) for u in {m.sender for m in msgs}),
                   *(functools.partial(group, g) for g in {m.group for m in msgs}
                     if g is not None)]
        if self.owners:  # (the message rows, written with the claims, need the lookups)
            await self._gather(lookups)
            await self._gather(claim_all)
        else:
            await self._gather([*claim_all, *lookups])
        results: list[Appended] = []
        writes: list[Callable[..., Awaitable[Any]]] = []
        inbox: dict[str, dict[str, list[Entry]]] = {}  # per chat
        rows: list[_Row] = []
        done: list[_Row] = []
        jobs: list[tuple[str, int, int]] = []  # group messages: (conv, seq, recipients)
        busy: list[str] = []  # client ids of sends still being stored by an earlier try
        fresh: list[int] = []  # 1:1 messages numbered by this call (their entries' ids)
        for m, c in zip(msgs, claims, strict=True):
            assert c is not None
            if not c.new:
                if c.done:
                    results.append(Appended(m.conv, c.seq, c.ts, duplicate=True))
                    continue
                if not c.adopted and now_ms() - c.at < REDO_AFTER_MS:
                    # (refused once the call's other sends are done: failing them all now
                    # left the new ones' seqs held for retries that may come too late)
                    busy.append(m.client_id)
                    results.append(Appended(m.conv, c.seq, c.ts, duplicate=True))
                    continue
            stored = Message(conv=m.conv, seq=c.seq, ts=c.ts, sender=m.sender, device=m.device,
                             id=m.client_id, body=m.body, group=m.group, media=m.media,
                             event=m.event)
            targets = targets_of(m)
            if m.group is not None:
                writes.append(lambda m=m, c=c, t=targets: self.db.run(
                    "add_job", (m.conv, c.seq, t)))
                jobs.append((m.conv, c.seq, len(targets)))
                writes.append(lambda m=m, c=c: self.db.run("list_job", (m.conv, c.seq)))
                writes.append(lambda m=m, c=c: self._set_marks(m.conv, m.sender, c.seq, c.seq))
            else:
                for u in targets:
                    inbox.setdefault(m.conv, {}).setdefault(u, []).append(stored)
                if c.new:  # (in no inbox yet: see _write_inbox_owned)
                    fresh.append(id(stored))
            if not c.stored:
                rows += msg_rows(m, c.seq, c.ts)
            day = c.ts // DAY_MS
            if modes.forgets_undelivered(chat_modes[m.conv][0]) and day not in self._days:
                writes.append(lambda day=day: self._add_day(day))
            done.append(((m.conv,), "done", (IDS_TTL, m.conv, m.sender, m.client_id), 50))
            results.append(Appended(m.conv, c.seq, c.ts))
        # each inbox, and each group's jobs, in seq order: one call may carry a redone send
        # (its seq held for it) after a new message of its chat
        for per_user in inbox.values():
            for entries in per_user.values():
                if len(entries) > 1:
                    entries.sort(key=lambda e: cast(Message, e).seq)
        jobs.sort()
        # the message rows exist before anything points at them
        await self._gather([*writes, *self._batches(rows)])
        ours: dict[str, list[int]] = {}  # per chat: the seqs this call appends in its turn
        for m, c in zip(msgs, claims, strict=True):
            if c is not None and (c.new or c.adopted):
                ours.setdefault(m.conv, []).append(c.seq)

        async def step3(conv: str) -> list[tuple[str, Item]]:
            """Each chat in turn (see _wait_turn): its fan-out jobs queued, its items
            appended. A call's seqs of one chat with another send's seq between them (a
            redone send and a new one: 4 and 6, with 5 held by a send waiting for 4) go in
            parts, each in its turn; 6 with 4 at once came before 5 (the suite's Cassandra
            restart run, `reordered`)."""
            mine = sorted(ours.get(conv, ()))
            per_user = inbox.get(conv, {})
            got: list[tuple[str, Item]] = []
            parts = self._turn_parts(conv, mine) or [[]]
            for i, part in enumerate(parts):
                if part:
                    await self._wait_turn(conv, part[0], set(mine))
                lo = parts[i - 1][-1] if i else -math.inf  # (this part: seqs in (lo, hi])
                hi = part[-1] if i < len(parts) - 1 else math.inf
                # The fan-out jobs are queued as soon as they are written, before the claims
                # are marked done: once a claim is done its retry is answered as a duplicate
                # and queues nothing, so a send cut short after that step (its caller
                # cancelled, a timeout that hid a write that applied) would leave its job
                # unrun until a restart.
                for c, seq, n in jobs:
                    if c == conv and lo < seq <= hi:
                        self._queue_job(conv, seq, n)
                some = per_user if len(parts) == 1 else {
                    u: es for u, es in ((u, [e for e in es if lo < cast(Message, e).seq <= hi])
                                        for u, es in per_user.items()) if es}
                got += await (self._append_finishing if self.owners else self._append_items)(
                    some)
                self._release(conv, part)  # (the chat's sends between the parts go on)
            return got

        self._fresh.update(fresh)
        try:
            items = [x for got in await self._gather(
                functools.partial(step3, conv) for conv in by_conv) for x in got]
        finally:
            self._fresh.difference_update(fresh)
        if self.owners:  # marked done by the chat's next claim batch (_write_claims_owned)
            for (conv,), _, (_, _, sender, cid), _ in done:
                self._dones.setdefault(conv, set()).add((sender, cid))
                if (c := (self._claimed.get(conv) or {}).get((sender, cid))) is not None:
                    c.done = True
        else:
            await self._gather(self._batches(done))
        if busy:
            raise StoreError(f"message {busy[0]!r} is still being stored: send it again in a"
                             " moment")
        # each result carries its own inbox items (for callers that look at them)
        by_msg: dict[tuple[str, int], list[tuple[str, Item]]] = {}
        for user, it in items:
            if type(it) is Delivery:
                by_msg.setdefault((it.message.conv, it.message.seq), []).append((user, it))
        return [r if r.duplicate else dataclasses.replace(
            r, items=tuple(by_msg.get((r.conv, r.seq), ()))) for r in results]

    def _batches(self, rows: list[_Row]) -> list[Callable[[], Awaitable[Any]]]:
        """Writes grouped by partition: one single-partition batch (one mutation for
        Cassandra) per partition and up to BATCH_BYTES, instead of a request per row; rows
        of a few partitions that are small together go in one request (an unlogged batch:
        Cassandra applies it per partition, as it would the separate batches)."""
        if (len(rows) > 1 and sum(r[3] for r in rows) <= SMALL_BATCH_BYTES
                and len({r[0] for r in rows}) <= SMALL_BATCH_PARTS):
            return [functools.partial(self.db.run, self.db.batch([(r[1], r[2]) for r in rows]))]
        parts: dict[tuple[Any, ...], list[list[_Row]]] = {}
        for row in rows:
            chunks = parts.setdefault(row[0], [[]])
            if chunks[-1] and sum(r[3] for r in chunks[-1]) + row[3] > BATCH_BYTES:
                chunks.append([])
            chunks[-1].append(row)
        out: list[Callable[[], Awaitable[Any]]] = []
        for chunks in parts.values():
            for chunk in chunks:
                stmt = chunk[0][1] if len(chunk) == 1 else self.db.batch(
                    [(r[1], r[2]) for r in chunk])
                out.append(functools.partial(self.db.run, stmt,
                                             chunk[0][2] if len(chunk) == 1 else None))
        return out

    async def _add_day(self, day: int) -> None:
        await self.db.run("add_day", (day,))
        self._days.add(day)

    async def _post_event(self, conv: str, actor: str, ts: int, event: dict[str, Any],
                          also: tuple[str, ...] = ()) -> None:
        """A server-made message in the chat (sent like any message)."""
        await self._append_all([modes.chat_event(conv, actor, ts, event, also)])

    # ---- fan-out of group messages ---------------------------------------------------------

    async def pending_fanouts(self) -> list[tuple[str, int]]:
        rows = await self._op(self.db.run("jobs"))
        return [(r["conv"], r["seq"]) for r in rows]

    async def fanout(self, conv: str, seq: int) -> bool:
        """Run the fan-out job of a group message to the end. False if there is no such job
        (done already, by this node or another); StoreError if another node is running it
        (try again later: its lease runs out if that node died)."""
        return await self._op(self._fanout(conv, seq))

    async def _fanout(self, conv: str, seq: int) -> bool:
        if not self.owners and self.fanout_mode == "external":
            await self._older_first(conv, seq)
        rows = await self.db.run("job", (conv, seq))
        if not rows:
            await self.db.run("unlist_job", (conv, seq))
            return False
        job = rows[0]
        recipients, done = job["recipients"] or [], job["done"] or 0
        if self.owners:
            return await self._fanout_owned(conv, seq, recipients, done)
        if job["owner"] not in (None, self.node_id) and (job["lease"] or 0) > now_ms():
            raise JobBusy(f"the fan-out of {conv}/{seq} is running on another node")
        key = (conv, seq)
        # (counted as ours before the take is sent: a store closed while the take is in
        # flight gives the job back, or it would sit on a 30 s lease nobody runs)
        self._owned.add(key)
        ok, _ = await self.db.applied("job_take", (self.node_id, now_ms() + LEASE_MS, *key,
                                                   job["owner"], job["lease"]))
        if not ok:
            self._owned.discard(key)
            raise JobBusy(f"the fan-out of {conv}/{seq} was just taken by another node")
        message = (await self._load(conv, [seq])).get(seq)
        while message is not None and done < len(recipients):
            self._job_left[key] = len(recipients) - done
            end = min(len(recipients), done + FANOUT_CHUNK)
            # Not one transaction with the step below (other partitions): if this chunk was
            # appended before (by a node that died before its step, or that lost the lease
            # and carries on), the members' markers keep it from being appended again.
            await self._append_items({u: [message] for u in recipients[done:end]})
            ok, _ = await self.db.applied("job_step", (end, now_ms() + LEASE_MS, *key,
                                                       self.node_id, done))
            if not ok:  # too slow: the lease ran out and another node took the job over
                self._owned.discard(key)
                self._job_left.pop(key, None)
                raise JobBusy(f"the fan-out of {conv}/{seq} was taken over")
            done = end
        await self.db.run("job_done", (*key, self.node_id))
        self._owned.discard(key)
        await self.db.run("unlist_job", key)
        self._job_left.pop(key, None)
        self.fanouts_run += 1
        return True

    async def _older_first(self, conv: str, seq: int) -> None:
        """Jobs shared out through the Redis stream (numbering=paxos): a node may be handed a
        group's later job while an earlier one waits in the stream or runs on another node.
        It runs the earlier ones first, or waits while another node runs them (up to a job's
        lease), so each member gets the group's messages in seq order (docs/RELIABILITY.md,
        finding 1: the SQLite store does the same in its transactions)."""
        give_up = trio.current_time() + LEASE_MS / 1000
        while older := [r["seq"] for r in await self.db.run("older_jobs", (conv, seq))]:
            try:
                for s in older:
                    await self._fanout(conv, s)
                continue
            except JobBusy:
                if trio.current_time() > give_up:
                    raise
            await trio.sleep(0.2)

    async def _fanout_owned(self, conv: str, seq: int, recipients: list[str], done: int
                            ) -> bool:
        """numbering=owner: the job is run by the holder of the group's shard lease, with
        plain writes (no transaction per job). Two nodes run one job at once only across a
        change of owner (a lease that ended while a chunk was under way); a member still
        gets the message once: each inbox's owner looks for the message's marker before it
        appends a message that was not numbered by the very send that appends it
        (_write_inbox_owned), and appends to one inbox one call after another."""
        key = (conv, seq)
        try:  # (the group loaded once per lease, as by a send: _finish_cut_short first)
            lease, _, _, _ = await self._numbering(conv, self._seqs, self._load_chat)
        except StoreError as exc:
            raise JobBusy(f"the fan-out of {conv}/{seq} is its group's owner's: {exc}") from None
        if any(c == conv and s < seq for c, s in self._jobs):
            raise JobLater  # (e.g. the job of a send its previous owner cut short)
        message = (await self._load(conv, [seq])).get(seq)
        while message is not None and done < len(recipients):
            self._job_left[key] = len(recipients) - done
            end = min(len(recipients), done + FANOUT_CHUNK)
            await self._append_items({u: [message] for u in recipients[done:end]})
            if not lease.valid(trio.current_time()):  # (the next owner carries on)
                self._job_left.pop(key, None)
                raise JobBusy(f"the fan-out of {conv}/{seq}: this node's lease on the group"
                              " ended")
            await self.db.run("job_progress", (end, *key))
            done = end
        await self.db.run("job_drop", key)
        await self.db.run("unlist_job", key)
        self._job_left.pop(key, None)
        self.fanouts_run += 1
        return True

    async def _load(self, conv: str, seqs: list[int]) -> dict[int, Message]:
        """Messages of conv by seq (those that still exist)."""
        return {r["seq"]: _message(conv, r) for r in await self._msg_rows(conv, seqs)}

    async def _msg_rows(self, conv: str, seqs: list[int]) -> list[dict[str, Any]]:
        """The rows of conv's messages at these seqs (those that still exist)."""
        parts: dict[int, list[int]] = {}
        for s in seqs:
            parts.setdefault(bucket(s), []).append(s)
        pages = await self._gather(
            lambda b=b, s=s: self.db.run("msgs_in", (conv, b, s)) for b, s in parts.items())
        return [r for rows in pages for r in rows]

    # ---- reading ---------------------------------------------------------------------------

    async def inbox(self, user: str, device: str, after: int, limit: int) -> Page:
        async def op() -> Page:
            rows = await self.db.run("items", (user, after, limit))
            wanted: dict[str, list[int]] = {}
            for r in rows:
                if r["receipt"] is None:
                    wanted.setdefault(r["conv"], []).append(r["seq"])
            loaded = await self._gather(lambda c=c, s=s: self._load(c, s)
                                        for c, s in wanted.items()) if wanted else []
            msgs = dict(zip(wanted, loaded, strict=True))
            items: list[Item] = []
            for r in rows:
                if r["receipt"] is not None:
                    items.append(blobs.receipt(user, r["q"], r["conv"], r["receipt"]))
                    continue
                d = msgs[r["conv"]].get(r["seq"])
                if d is not None and delivery.shown_to(user, device, d.sender, d.device):
                    items.append(Delivery(r["q"], d))
            upto = rows[-1]["q"] if rows else after
            return Page(items, upto, len(rows) == limit)

        return await self._op(op())

    async def history(self, conv: str, before: int | None, limit: int,
                      after: int = 0) -> list[HistoryItem]:
        async def op() -> list[HistoryItem]:
            hi = before - 1 if before is not None else await self._read_last_seq(conv)
            out: list[HistoryItem] = []
            b = bucket(hi)
            while b >= bucket(after + 1) and hi > after and len(out) < limit:
                for r in await self.db.run("msgs_down", (conv, b, after, hi, limit - len(out))):
                    out.append(HistoryItem(
                        seq=r["seq"], ts=r["ts"], sender=r["sender"], device=r["device"],
                        id=r["client_id"], body=r["body"] or b"", media=blobs.media(r["media"]),
                        event=blobs.event(r["event"])))
                b -= 1
            return out

        return await self._op(op())

    async def _messages_between(self, conv: str, lo: int, hi: int) -> list[dict[str, Any]]:
        """seq, ts, sender, event of the messages with lo < seq <= hi, oldest first."""
        out: list[dict[str, Any]] = []
        for b in range(bucket(lo + 1), bucket(hi) + 1):
            out += await self.db.run("msgs_up", (conv, b, lo, hi, COLLECT_LIMIT))
        return out

    # ---- receipts --------------------------------------------------------------------------

    async def _marks(self, conv: str, user: str) -> list[int]:
        """[delivered, read] of a member, remembered once read (they only rise; a value
        raised through another node meanwhile costs at most a repeated receipt)."""
        st = self._mark_cache.get((conv, user))
        if st is None:
            rows = await self.db.run("mark", (conv, user))
            st = [rows[0]["delivered"] or 0, rows[0]["read"] or 0] if rows else [0, 0]
            if len(self._mark_cache) >= MAX_CACHED:
                self._mark_cache.clear()
            self._mark_cache[(conv, user)] = st
        return list(st)

    async def _set_marks(self, conv: str, user: str, delivered: int | None,
                         read: int | None) -> None:
        """Raise a member's watermarks; a lower value never wins (it is the write time)."""
        rows = self._mark_rows(conv, user, delivered, read)
        if len(rows) == 1:
            await self.db.run(*rows[0])
        elif rows:
            await self.db.run(self.db.batch(rows))
        self._marks_written(conv, user, delivered, read)

    @staticmethod
    def _mark_rows(conv: str, user: str, delivered: int | None, read: int | None
                   ) -> list[tuple[str, tuple[Any, ...]]]:
        rows: list[tuple[str, tuple[Any, ...]]] = []
        if delivered is not None:
            rows.append(("set_delivered", (delivered + 1, delivered, conv, user)))
        if read is not None:
            rows.append(("set_read", (read + 1, read, conv, user)))
        return rows

    def _marks_written(self, conv: str, user: str, delivered: int | None, read: int | None
                       ) -> None:
        st = self._mark_cache.get((conv, user))
        if st is not None:
            st[0], st[1] = max(st[0], delivered or 0), max(st[1], read or 0)

    async def _put_receipts(self, notes: list[ReceiptNote], *, again: bool = False
                            ) -> list[tuple[str, Item]]:
        """Append receipts to their users' inboxes (the q is the inbox's to give); `again`:
        tried again in place if that fails (_append_finishing)."""
        out: dict[str, list[Entry]] = {}
        for n in notes:
            out.setdefault(n.to, []).append(n)
        return await (self._append_finishing if again else self._append_items)(out)

    async def ack(self, user: str, device: str, upto: int, ts: int, *,
                  lazy: bool = True) -> Appended:
        """Acks of one user are combined: those that arrive while one is stored become one
        (cumulative: the highest upto per device), so a busy device costs one ack per round
        trip."""
        done: list[Appended] = await self._op(self._acks.submit(user, [(device, upto, ts)]))
        return done[0]

    async def _write_acks(self, user: str, entries: list[tuple[str, int, int]]
                          ) -> list[Appended]:
        highest: dict[str, tuple[int, int]] = {}
        for device, upto, ts in entries:
            u, t = highest.get(device, (0, 0))
            highest[device] = (max(u, upto), max(t, ts))
        done = {d: await self._ack_one(user, d, u, t) for d, (u, t) in highest.items()}
        return [done[d] for d, _, _ in entries]

    async def _ack_one(self, user: str, device: str, upto: int, ts: int) -> Appended:
        old = self._cursors.get(user, {}).get(device)  # (this node holds the device)
        if old is None:
            old = (await self._devices(user)).get(device)
            if old is None:
                return Appended()
        if upto <= old:
            return Appended()
        # what is there up to upto (an ack beyond the inbox stops at its end)
        recent = self._recent.get(user)
        if recent is not None and recent.base <= old and upto <= recent.top:
            rows = [recent.rows[q] for q in range(old + 1, upto + 1)]  # (put here)
        else:
            rows = await self.db.run("items_upto", (user, old, upto))
        new = delivery.new_cursor(old, upto, rows[-1]["q"] if rows else old)
        if new is None:
            return Appended()
        chats = list({r["conv"] for r in rows if r["receipt"] is None})
        states = dict(zip(chats, await self._gather(
            lambda c=c: self._marks(c, user) for c in chats), strict=True))
        position = {(r["sender"], r["conv"], r["seq"]): r["q"] for r in rows
                    if r["receipt"] is None}  # the messages covered, oldest first
        got = delivery.delivered(user, position, lambda conv: states[conv][0])
        if missed := delivery.missed(user, position, got, self._read(user, states)):
            got.direct += delivery.first_reached(missed, position,
                                                 await self._reached(user, device, new))
        cursor = ("set_cursor", (new + 1, new, user, device))
        notes = delivery.receipts(user, Status.DELIVERED, ts, got.direct)
        to = {n.to for n in notes}
        items: list[tuple[str, Item]] = []
        if (self.owners and len(to) == 1 and len(got.raised) < SMALL_BATCH_PARTS
                and self._owner(sender := next(iter(to))) is None):
            # the cursor and the watermarks in the request that appends the receipts (to one
            # inbox numbered here: the usual ack of a 1:1 chat)
            placed = await self._inboxes.submit(sender, [*notes, _Along([cursor, *(
                self._mark_rows(c, user, s, None)[0] for c, s in got.raised.items())])])
            items = [x for x in placed if x is not None]
            for c, s in got.raised.items():
                self._marks_written(c, user, s, None)
        else:
            # the receipts first: an ack cut short after them is done again by the device
            # (a receipt twice, which clients take once), but one cut short after its cursor
            # and watermarks were written would never make them (they say "delivered")
            items += await self._put_receipts(notes)
            if len(got.raised) < SMALL_BATCH_PARTS:  # the cursor and the watermarks: one request
                await self.db.run(self.db.batch([cursor, *(
                    self._mark_rows(c, user, s, None)[0] for c, s in got.raised.items())]))
                for c, s in got.raised.items():
                    self._marks_written(c, user, s, None)
            else:
                await self.db.run(*cursor)
                await self._gather(lambda c=c, s=s: self._set_marks(c, user, s, None)
                                   for c, s in got.raised.items())
        self._cursors.setdefault(user, {})[device] = new
        self._acked_users.add(user)  # collect() may prune what all devices now have
        if recent is not None and recent.base < new:  # (another device acks them: read)
            for q in range(recent.base + 1, min(new, recent.top) + 1):
                recent.rows.pop(q, None)
            recent.base = min(new, recent.top)
        for conv in got.groups:  # coalesced: one receipt when all have it
            items += await self._advance_all(conv, user, ts)
        return Appended(items=tuple(items))

    async def _reached(self, user: str, device: str, upto: int) -> int:
        """How far the user's devices had acknowledged their inbox before this ack: known
        here when another of them (on this node) is at `upto` already (the usual case: a
        second device acks what the first one did), else read (this device included: it
        may have acknowledged through another node meanwhile)."""
        here = max((c for d, c in self._cursors.get(user, {}).items() if d != device),
                   default=0)
        if here >= upto:
            return here
        return max((await self._devices(user)).values(), default=0)

    async def mark_read(self, user: str, conv: str, upto: int, ts: int) -> Appended:
        async def op() -> Appended:
            last, st, devices = await self._gather([
                lambda: self._read_last_seq(conv), lambda: self._marks(conv, user),
                lambda: self._device_count(user)])
            old = st[1]
            new = delivery.new_read(upto, last, old)
            if new is None:
                return Appended()
            stored = []
            if not convs.is_group(conv):
                stored = await self._messages_between(conv, old, new)
                self._note_holes(user, conv, delivery.holes(
                    old, new, [(r["seq"], r["ts"]) for r in stored], now_ms(), HOLE_WAIT_MS))
            rows = [(r["sender"], r["seq"], r["event"] is not None) for r in stored]
            # the receipts before the watermark: a read cut short after it was written would
            # never make them (its retry finds nothing new to read); one cut short before
            # is done again (a receipt twice, which clients take once)
            items = await self._put_receipts(delivery.read_receipts(user, conv, new, ts,
                                                                    devices, rows))
            await self._set_marks(conv, user, new, new)
            if convs.is_group(conv):
                items += await self._advance_all(conv, user, ts)
            return Appended(items=tuple(items))

        return await self._op(op())

    def _note_holes(self, user: str, conv: str, seqs: list[int]) -> None:
        """Seqs a read of user's passed with no message stored yet, kept here HOLE_KEEP_MS
        (the user's acks come to the node of its devices, as its reads do): their first
        delivery gets DELIVERED though under the read watermark (delivery.missed)."""
        now = now_ms()
        kept = self._holes.get((user, conv))
        if kept is not None:
            for seq in [s for s, at in kept.items() if now - at > HOLE_KEEP_MS]:
                del kept[seq]
            if not kept:
                del self._holes[(user, conv)]
        if not seqs:
            return
        if len(self._holes) >= MAX_CACHED:
            self._holes.clear()
        self._holes.setdefault((user, conv), {}).update(dict.fromkeys(seqs, now))

    def _read(self, user: str, states: dict[str, list[int]]) -> Callable[[str, int], bool]:
        """Whether a read of user's covered a message (conv, seq) (see _note_holes)."""
        def read(conv: str, seq: int) -> bool:
            return seq <= states[conv][1] and seq not in self._holes.get((user, conv), ())
        return read

    async def _advance_all(self, conv: str, by: str, ts: int) -> list[tuple[str, Item]]:
        """Receipts with all=True for the group messages every member now has (or read).
        Moving the group's watermark is a conditional update: one node sends each. The
        members' acks of one group message come together; those that come while this node
        looks at the group's watermarks are one more look once it ends (not one each: each
        read the group, its members' marks and its watermarks, and once the last member had
        it, most of them tried the conditional update, a Paxos round each, and all but one
        were refused). The receipts go to their users' inboxes (and devices) whoever asked."""
        again = self._advancing.get(conv)
        if again is not None:
            again[:] = [by, ts]
            return []
        self._advancing[conv] = again = []
        out: list[tuple[str, Item]] = []
        try:
            while True:
                out += await self._advance_all_once(conv, by, ts)
                if not again:
                    return out
                by, ts = again
                again.clear()
        finally:
            del self._advancing[conv]

    async def _advance_all_once(self, conv: str, by: str, ts: int) -> list[tuple[str, Item]]:
        g = await self._group(convs.group_of(conv) or "")
        if g is None or not g.members:
            return []
        marks = {r["user"]: (r["delivered"] or 0, r["read"] or 0)
                 for r in await self.db.run("marks", (conv,))}
        now = delivery.floor(g.members, marks)
        rows = await self.db.run("conv", (conv,))
        before = [(rows[0][k] or 0) if rows else 0 for k in ("all_delivered", "all_read")]
        out: list[tuple[str, Item]] = []
        for i, status, stmt, col in ((0, Status.DELIVERED, "set_all_delivered", "all_delivered"),
                                     (1, Status.READ, "set_all_read", "all_read")):
            if now[i] > before[i]:
                # the receipts before the watermark moves, tried again in place: they used
                # to follow it, and when their append failed (the sender's inbox's owner
                # restarting) the watermark had moved without them, and no later ack made
                # them (the chaos checker's "receipts"). Cut short before the update, they
                # are made again by the next advance (a receipt twice: clients take it once)
                out += await self._put_receipts(delivery.all_receipts_for(
                    by, conv, status, ts, [(r["sender"], r["seq"], r["event"] is not None)
                                           for r in await self._messages_between(
                                               conv, before[i], now[i])]), again=True)
            while now[i] > before[i]:  # (another node moved it meanwhile: from where it is)
                ok, current = await self.db.applied(stmt, (now[i], conv, before[i] or None))
                before[i] = now[i] if ok else (current[0].get(col) or 0) if current else 0
        return out

    async def receipt_state(self, conv: str, seq: int) -> ReceiptState:
        async def op() -> ReceiptState:
            group = convs.group_of(conv)
            g = await self._group(group) if group is not None else None
            users = g.members if g is not None else convs.pair(conv) or ()
            found = await self._load(conv, [seq])
            marks = {r["user"]: (r["delivered"] or 0, r["read"] or 0)
                     for r in await self.db.run("marks", (conv,))}
            return delivery.receipt_state(users, found[seq].sender if seq in found else None,
                                          seq, lambda u: marks.get(u, (0, 0)))

        return await self._op(op())

    # ---- groups ----------------------------------------------------------------------------

    async def _group(self, group: str) -> _Members | None:
        head, rows = await self._gather([lambda: self.db.run("group", (group,)),
                                         lambda: self.db.run("members", (group,))])
        if not head:
            return None
        rows.sort(key=lambda r: (r["joined_seq"] or 0, r["pos"] or 0, r["user"]))
        return _Members(head[0]["name"], {r["user"]: (bool(r["admin"]), r["joined_seq"] or 0)
                                          for r in rows})

    async def _add_members(self, group: str, users: list[str], admin: str | None,
                           joined: int) -> None:
        await self._gather(
            [lambda u=u, i=i: self.db.run("add_member", (group, u, u == admin, joined, i))
             for i, u in enumerate(users)]
            + [lambda u=u: self.db.run("add_user_group", (u, group)) for u in users])

    async def create_group(self, group: str, name: str, creator: str, members: list[str],
                           ts: int) -> GroupInfo | None:
        async def op() -> GroupInfo | None:
            ok, _ = await self.db.applied("new_group", (group, name, ts))
            if not ok:
                return None
            everyone = group_rules.founders(creator, members)
            await self._add_members(group, everyone, creator, 0)
            await self._post_event(convs.of_group(group), creator, ts,
                                   group_rules.created(creator, name, everyone))
            return _Members(name, {u: (u == creator, 0) for u in everyone}).info(group)

        return await self._op(op())

    async def group(self, group: str) -> GroupInfo | None:
        async def op() -> GroupInfo | None:
            g, mode = await self._gather([lambda: self._group(group),
                                          lambda: self._mode(convs.of_group(group), fresh=True)])
            return None if g is None else g.info(group, mode)

        return await self._op(op())

    async def change_group(self, group: str, actor: str, ts: int, *,
                           add: tuple[str, ...] = (), remove: tuple[str, ...] = (),
                           name: str | None = None) -> GroupInfo:
        async def op() -> GroupInfo:
            g = await self._group(group)
            if g is None:
                raise KeyError(group)
            conv = convs.of_group(group)
            last = await self._read_last_seq(conv)
            plan = group_rules.change({u: a for u, (a, _) in g.members.items()}, actor,
                                      add, remove, name)
            for u in plan.added:  # a new member starts after the messages sent before joining
                g.members[u] = (False, last)
            for u in plan.removed:
                del g.members[u]
            writes: list[Callable[..., Awaitable[Any]]] = [
                lambda u=u: self._set_marks(conv, u, last, last) for u in plan.added]
            writes += [lambda u=u: self.db.run("del_member", (group, u)) for u in plan.removed]
            writes += [lambda u=u: self.db.run("del_user_group", (u, group))
                       for u in plan.removed]
            if (first := plan.successor) is not None:
                g.members[first] = (True, g.members[first][1])
                writes.append(lambda: self.db.run("make_admin", (group, first)))
            if plan.name is not None:
                g.name = plan.name
                writes.append(lambda: self.db.run("rename", (plan.name, group)))
            writes.append(lambda: self._add_members(group, plan.added, None, last))
            await self._gather(writes)
            for event, also in plan.events:
                await self._post_event(conv, actor, ts, event, also)
            if plan.recount:
                await self._advance_all(conv, actor, ts)  # the rest may all have it now
            return g.info(group, await self._mode(conv, fresh=True))

        return await self._op(op())

    async def user_groups(self, user: str) -> list[str]:
        return [r["grp"] for r in await self._op(self.db.run("user_groups", (user,)))]

    async def joined_at(self, group: str, user: str) -> int | None:
        g = await self._op(self._group(group))
        return None if g is None or user not in g.members else g.members[user][1]

    # ---- presence --------------------------------------------------------------------------

    async def presence_of(self, user: str) -> tuple[int | None, bool]:
        rows = await self._op(self.db.run("user", (user,)))
        return (rows[0]["last_seen"], bool(rows[0]["hide_last_seen"])) if rows else (None, False)

    async def set_last_seen(self, seen: dict[str, int]) -> None:
        # the time is the write timestamp: an older time never replaces a newer one
        if seen:
            await self._op(self._gather(lambda u=u, t=t: self.db.run("seen", (t * 1000, t, u))
                                        for u, t in seen.items()))

    async def set_privacy(self, user: str, hide_last_seen: bool) -> None:
        await self._op(self.db.run("hide", (hide_last_seen, user)))

    # ---- chat modes and expiry ---------------------------------------------------------------

    async def conv_mode(self, conv: str) -> tuple[int, int]:
        return await self._op(self._mode(conv, fresh=True))

    async def set_mode(self, conv: str, mode: int, ttl: int, actor: str, ts: int) -> None:
        async def op() -> None:
            await self._gather([
                lambda: self.db.run("set_mode", (mode, ttl, conv)),
                lambda: self.db.run("add_disappearing" if mode == Mode.DISAPPEARING
                                    else "del_disappearing", (conv,))])
            self._modes[conv] = (trio.current_time(), (mode, ttl))
            await self._post_event(conv, actor, ts, modes.event(mode, ttl, actor))

        await self._op(op())

    async def collect(self, now: int, max_age_ms: int) -> dict[str, int]:
        """Forget what the chat modes say to forget (see SqliteStore.collect for the rules).

        Inbox items every device acknowledged go with one range delete per user (users whose
        devices acknowledged through this node since its last pass). A TEMPORARY message
        keeps the set of users whose inboxes still hold it (`holders`); the user whose
        prune empties it deletes the row. Never-delivered TEMPORARY messages are found
        through a queue partitioned by day, dropped a whole day at a time. DISAPPEARING
        messages also carry a TTL; collect deletes each chat's expired prefix with one range
        delete per bucket."""
        return await self._op(self._collect(now, max_age_ms))

    async def _collect(self, now: int, max_age_ms: int) -> dict[str, int]:
        users, self._acked_users = self._acked_users, set()
        held: dict[tuple[str, int], set[str]] = {}
        acked = 0
        for user in users:
            devs = await self._devices(user)
            if not devs:
                continue
            upto = min(devs.values())
            rows = await self.db.run("items_upto", (user, 0, upto))
            if not rows:
                continue
            await self.db.run("prune", (user, upto))
            acked += len(rows)
            for r in rows:
                if r["receipt"] is None:
                    held.setdefault((r["conv"], r["seq"]), set()).add(user)
        delivered = 0
        for (conv, seq), gone_from in held.items():
            if not modes.forgets_delivered((await self._mode(conv))[0]):
                continue
            key = (conv, bucket(seq), seq)
            await self.db.run("drop_holders", (gone_from, *key))
            rows = await self.db.run("holders", key)
            if rows and not rows[0]["holders"]:
                await self.db.run("del_msg", key)
                delivered += 1
        too_old = 0
        cutoff = now - max_age_ms
        for d in await self.db.run("days", (cutoff // DAY_MS,)):
            day = d["day"]
            rows = await self.db.run("queued", (day, cutoff, COLLECT_LIMIT))
            for r in rows:
                conv, seq = r["conv"], r["seq"]
                if not modes.forgets_undelivered((await self._mode(conv))[0]) or await self.db.run(
                        "job", (conv, seq)):
                    continue
                if await self.db.run("holders", (conv, bucket(seq), seq)):
                    await self.db.run("del_msg", (conv, bucket(seq), seq))
                    too_old += 1
            if len(rows) < COLLECT_LIMIT:
                await self.db.run("unqueue", (day, cutoff))
                if day < cutoff // DAY_MS:
                    await self.db.run("del_day", (day,))
                    self._days.discard(day)
        expired = 0
        for r in await self.db.run("disappearing"):
            conv = r["conv"]
            rows = await self.db.run("conv", (conv,))
            if not rows or rows[0]["mode"] != Mode.DISAPPEARING:
                continue
            start = rows[0]["expired_upto"] or 0
            end = modes.expires_before(Mode.DISAPPEARING, rows[0]["ttl"] or 0, now) or 0
            upto, last = start, await self._read_last_seq(conv)
            for b in range(bucket(start + 1), bucket(last) + 1):  # oldest first, up to the
                for m in await self.db.run(  # first one not expired yet
                        "msgs_up", (conv, b, start, last, COLLECT_LIMIT)):
                    if m["ts"] >= end or expired >= COLLECT_LIMIT:
                        break
                    upto, expired = m["seq"], expired + 1
                else:
                    continue
                break
            if upto > start:
                await self._gather(
                    lambda b=b, c=conv, u=upto: self.db.run("del_msgs_upto", (c, b, u))
                    for b in range(bucket(start + 1), bucket(upto) + 1))
                await self.db.run("set_expired", (upto, conv))
        return {"inbox_acked": acked, "delivered": delivered, "too_old": too_old,
                "expired": expired, "inbox_orphans": 0}

    # ---- admin -----------------------------------------------------------------------------
    # Revocations: one row per (user, device) for Hello's point read, and a copy in a
    # partition per day for the nodes' poll (kept a month; older ones come from a scan).

    async def _admin(self, name: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        # (by name: a first call still preparing them has prepared only some, so a check
        # of one name let a second caller run a statement not prepared yet: KeyError)
        if name not in self.db._prepared:
            await self.db.prepare(ADMIN_STATEMENTS)
        return await self._op(self.db.run(name, params))

    async def devices(self, user: str) -> dict[str, int]:
        return await self._op(self._devices(user))

    async def revoke(self, user: str, device: str | None, at: int) -> None:
        await self._admin("revoke", (user, device or "", at, at * 1000))
        await self._admin("feed_put", (at // DAY_MS, at, user, device or ""))

    async def revoked_at(self, user: str, device: str) -> int:
        rows = await self._admin("revoked", (user, [device, ""]))
        return max((r["at"] or 0 for r in rows), default=0)

    async def revocations_since(self, since: int) -> list[Revocation]:
        today = now_ms() // DAY_MS
        if since // DAY_MS < today - 30:  # (the feed keeps a month)
            rows = await self._admin("all_revoked", ())
        else:
            rows = []
            for day in range(since // DAY_MS, today + 2):  # (+1: clocks a little ahead)
                rows += await self._admin("feed", (day, since))
        return [Revocation(r["user"], r["device"] or None, r["at"]) for r in rows
                if r["at"] >= since]

    async def delete_user(self, user: str) -> None:
        for group in await self.user_groups(user):  # (left already: their marks go too)
            await self._admin("del_mark", (convs.of_group(group), user))
        for name in ("del_devices", "del_inbox", "del_user_groups", "del_user"):
            await self._admin(name, (user,))
        self._last_q.pop(user, None)
        self._recent.pop(user, None)
        self._device_counts.pop(user, None)
        self._acked_users.discard(user)
        self._cursors.pop(user, None)
