"""SQLite store: the embedded default. One writer thread, group commit, write-behind rows.

Every operation is a small synchronous function run in a worker thread (never on the trio
thread) against one connection. Operations that arrive while a batch runs are queued and run as
the next batch inside one transaction. Hot state (sequence and inbox counters, device cursors,
receipt watermarks) is cached in memory; each operation updates the cache and appends the rows
it writes to per-table buffers, which are written with one executemany per table before the
batch's single COMMIT (one fsync in WAL mode with synchronous=FULL). An awaited write returns
only after its batch committed, so "returned" means "durable". If a commit fails, every
operation of the batch fails with StoreError and the caches are dropped (reloaded from disk).

Several processes may write the same file (the workers of `chatd serve --workers N`, or nodes
on one host): a batch starts with BEGIN IMMEDIATE, which takes the database's write lock, and
then reads `PRAGMA data_version`; if another connection committed since this one's last batch,
every cache is dropped and reloaded from the tables on demand. So the caches are only ever used
while they are known to be current, and a single writer pays nothing for this. What a store
read outside that lock (the pending fan-out jobs read when it opens, or after a failed batch)
is only a hint that there is work: its first batch reloads them under the lock. And each
fan-out step takes the jobs' progress from the `fanout` table inside the transaction that
appends the inbox items and moves the progress on (one query per step), so two processes
sharing one file can never both apply the same chunk of a job.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any, Final, Literal, TypeVar

import msgpack
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
    modes,
)
from chatd.core import groups as group_rules
from chatd.protocol.frames import HistoryItem, Mode, Status

from . import blobs
from .base import Appended, AppendListener, Item, Page, Revocation, StoreError

T = TypeVar("T")
log = logging.getLogger("chatd.store")
MAX_BATCH: Final = 2000
HAND_SLICE: Final = 256  # inbox items handed to the router between two checkpoints
RECENT_PER_USER: Final = 20_000  # inbox items per user remembered for acks without a query
SCHEMA_VERSION: Final = 6
COLLECT_LIMIT: Final = 10_000  # messages looked at per expiry rule per collect pass
IDS_PER_BATCH: Final = 2_000  # expired client ids forgotten per batch (~20 ms of writer)
CONVS_PER_BATCH: Final = 2_000  # DISAPPEARING chats looked at per batch
FANOUT_CHUNK: Final = delivery.FANOUT_CHUNK
# A lazy Ack (a cursor moving over receipts only: nothing waits for what it makes) waits this
# long for other writes to share its commit: at low rates it would otherwise cost a commit and
# a thread hand-off of its own (docs/PROFILE.md), and a lost Ack costs only a redelivery the
# device drops. An Ack over messages is not lazy: their senders wait for DELIVERED.
ACK_DELAY: Final = 0.01

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    user TEXT PRIMARY KEY, last_q INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS devices (
    user TEXT NOT NULL, device TEXT NOT NULL, cursor INTEGER NOT NULL,
    PRIMARY KEY (user, device)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS convs (
    conv TEXT PRIMARY KEY, last_seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    conv TEXT NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL, sender TEXT NOT NULL,
    device TEXT NOT NULL, client_id TEXT NOT NULL, body BLOB NOT NULL, media BLOB,
    grp TEXT, PRIMARY KEY (conv, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS client_ids (
    sender TEXT NOT NULL, client_id TEXT NOT NULL, conv TEXT NOT NULL, seq INTEGER NOT NULL,
    ts INTEGER NOT NULL, PRIMARY KEY (sender, client_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inbox (
    user TEXT NOT NULL, q INTEGER NOT NULL, conv TEXT NOT NULL, seq INTEGER NOT NULL,
    receipt BLOB, PRIMARY KEY (user, q)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS member_state (
    conv TEXT NOT NULL, user TEXT NOT NULL, delivered_upto INTEGER NOT NULL DEFAULT 0,
    read_upto INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (conv, user)) WITHOUT ROWID;
-- a user's rows, for `chatd admin delete-user` (without it, a scan of every chat's rows).
-- Built on the first start that has it; no schema version: an older chatd ignores it, and
-- only a row's first write touches it (the watermarks are not in it).
CREATE INDEX IF NOT EXISTS member_state_by_user ON member_state (user);
"""

# Versioned migrations: MIGRATIONS[v] takes a database at version v to v + 1.
MIGRATIONS: Final = {
    1: """
ALTER TABLE messages ADD COLUMN event BLOB;
CREATE TABLE groups (grp TEXT PRIMARY KEY, name TEXT NOT NULL, created_ts INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE group_members (
    grp TEXT NOT NULL, user TEXT NOT NULL, admin INTEGER NOT NULL, joined_seq INTEGER NOT NULL,
    PRIMARY KEY (grp, user)) WITHOUT ROWID;
CREATE INDEX group_members_by_user ON group_members (user, grp);
CREATE TABLE fanout (
    conv TEXT NOT NULL, seq INTEGER NOT NULL, recipients BLOB NOT NULL, done INTEGER NOT NULL,
    PRIMARY KEY (conv, seq)) WITHOUT ROWID;
""",
    2: """
ALTER TABLE convs ADD COLUMN mode INTEGER NOT NULL DEFAULT 0;
ALTER TABLE convs ADD COLUMN ttl INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN last_seen INTEGER;
ALTER TABLE users ADD COLUMN hide_last_seen INTEGER NOT NULL DEFAULT 0;
CREATE INDEX messages_by_ts ON messages (ts);
""",
    3: """
CREATE INDEX inbox_by_message ON inbox (conv, seq);
CREATE INDEX client_ids_by_ts ON client_ids (ts);
CREATE INDEX convs_by_mode ON convs (mode);
""",
    # The group messages every member has (has read) up to: kept in the table, not only in
    # memory, so a restart or another process does not miss the next "all" receipt. Existing
    # groups start from the members' current lowest watermarks.
    4: """
ALTER TABLE convs ADD COLUMN all_delivered INTEGER NOT NULL DEFAULT 0;
ALTER TABLE convs ADD COLUMN all_read INTEGER NOT NULL DEFAULT 0;
UPDATE convs SET
  all_delivered = COALESCE((SELECT MIN(s.delivered_upto) FROM member_state s JOIN group_members m
    ON m.grp = substr(convs.conv, 3) AND m.user = s.user WHERE s.conv = convs.conv), 0),
  all_read = COALESCE((SELECT MIN(s.read_upto) FROM member_state s JOIN group_members m
    ON m.grp = substr(convs.conv, 3) AND m.user = s.user WHERE s.conv = convs.conv), 0)
  WHERE conv LIKE 'g:%';
""",
    # chatd admin revoke: tokens of (user, device) issued at or before `at` (ms) are void;
    # device '' stands for every device of the user. Read by Hello and by the nodes' poll.
    5: """
CREATE TABLE revocations (
    user TEXT NOT NULL, device TEXT NOT NULL, at INTEGER NOT NULL,
    PRIMARY KEY (user, device)) WITHOUT ROWID;
CREATE INDEX revocations_by_at ON revocations (at);
""",
}


@dataclasses.dataclass(slots=True)
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None
    ids: list[tuple[str, str]] | None = None  # (sender, client id) keys it will look up
    lazy: bool = False  # an Ack: it waits up to ACK_DELAY for other writes to share a commit


@dataclasses.dataclass(slots=True)
class _Group:
    name: str
    members: dict[str, tuple[bool, int]]  # user -> (admin, joined_seq), in joining order

    def info(self, group: str) -> GroupInfo:
        return GroupInfo(group, self.name, tuple(self.members),
                         tuple(u for u, (admin, _) in self.members.items() if admin))


@dataclasses.dataclass(slots=True)
class _Fanout:
    """A committed group message still being appended to its recipients' inboxes."""

    conv: str
    seq: int
    recipients: list[str]
    done: int
    message: Message | None  # loaded from the messages table after a restart


def _by_keys(db: sqlite3.Connection, table: str, key: tuple[str, str], cols: tuple[str, ...],
             keys: list[tuple[Any, Any]]) -> Iterator[tuple[Any, ...]]:
    """The rows of `table` whose two-column primary key is one of `keys`: the key columns,
    then `cols`. Written as a join from the keys so that SQLite looks each one up by the
    primary key ("WHERE (a, b) IN (VALUES ...)" scans the whole table: a cost per batch
    that grew with every client id kept for deduplication)."""
    if not keys:
        return iter(())
    a, b = key
    return db.execute(
        f"SELECT t.{a}, t.{b}" + "".join(f", t.{c}" for c in cols)
        + " FROM (VALUES " + ",".join(["(?, ?)"] * len(keys)) + f") AS k"
        f" CROSS JOIN {table} AS t ON t.{a} = k.column1 AND t.{b} = k.column2",
        [x for k in keys for x in k])


class _Buffers:
    """Rows written by the operations of one batch, flushed table by table."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.users: list[tuple[Any, ...]] = []
        self.devices: dict[tuple[str, str], int] = {}
        self.messages: list[tuple[Any, ...]] = []
        self.ids: dict[tuple[str, str], tuple[str, int, int]] = {}  # (sender, client id)
        self.inbox: list[tuple[Any, ...]] = []
        self.last_seq: dict[str, int] = {}
        self.last_q: dict[str, int] = {}
        self.state: dict[tuple[str, str], list[int]] = {}
        self.fanout: dict[tuple[str, int], tuple[list[str], int] | None] = {}  # None: finished
        self.all: dict[str, list[int]] = {}  # group conv -> [all delivered, all read]

    def __bool__(self) -> bool:
        return bool(self.users or self.devices or self.messages or self.inbox or self.last_q
                    or self.state or self.ids or self.last_seq or self.fanout or self.all)

    def flush(self, db: sqlite3.Connection) -> None:
        if self.users:
            db.executemany("INSERT OR IGNORE INTO users(user) VALUES (?)", self.users)
        if self.last_q:
            db.executemany("UPDATE users SET last_q=? WHERE user=?",
                           [(q, u) for u, q in self.last_q.items()])
        if self.devices:
            db.executemany("INSERT INTO devices VALUES (?, ?, ?) ON CONFLICT DO UPDATE"
                           " SET cursor=excluded.cursor",
                           [(u, d, c) for (u, d), c in self.devices.items()])
        if self.last_seq:
            db.executemany("INSERT INTO convs (conv, last_seq) VALUES (?, ?) ON CONFLICT"
                           " DO UPDATE SET last_seq=excluded.last_seq",
                           list(self.last_seq.items()))
        if self.ids:
            db.executemany("INSERT INTO client_ids VALUES (?, ?, ?, ?, ?)",
                           [(s, c, *v) for (s, c), v in self.ids.items()])
        if self.messages:
            db.executemany("INSERT INTO messages (conv, seq, ts, sender, device, client_id,"
                           " body, media, grp, event) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           self.messages)
        if self.inbox:
            db.executemany("INSERT INTO inbox VALUES (?, ?, ?, ?, ?)", self.inbox)
        if self.state:
            db.executemany("INSERT INTO member_state VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE"
                           " SET delivered_upto=excluded.delivered_upto,"
                           " read_upto=excluded.read_upto",
                           [(c, u, d, r) for (c, u), (d, r) in self.state.items()])
        if self.fanout:
            db.executemany("DELETE FROM fanout WHERE conv=? AND seq=?",
                           [k for k, v in self.fanout.items() if v is None])
            db.executemany("INSERT INTO fanout VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE"
                           " SET done=excluded.done",
                           [(c, q, msgpack.packb(v[0]), v[1])
                            for (c, q), v in self.fanout.items() if v is not None])
        if self.all:
            db.executemany("UPDATE convs SET all_delivered=?, all_read=? WHERE conv=?",
                           [(d, r, c) for c, (d, r) in self.all.items()])
        self.clear()


class SqliteStore:
    def __init__(self, path: str, synchronous: str = "FULL") -> None:
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._migrate()
        self._queue: list[_Op] = []
        self._wake = trio.Event()  # an operation is queued
        self._urgent = trio.Event()  # one that is not an Ack is
        self._closed = False
        self.on_append: AppendListener | None = None
        self.on_batch: Callable[[float], None] | None = None  # seconds each batch took
        # Fan-out jobs run by this store's writer on its own ("auto"), or only when asked
        # through fanout() ("external": several nodes take the jobs from a Redis Stream).
        # Either way the job is in the fanout table, committed with the message.
        self.fanout_mode: Literal["auto", "external"] = "auto"
        self.on_fanout: Callable[[str, int], None] | None = None  # a job was committed
        self._new_jobs: list[tuple[str, int]] = []
        self.batches = 0
        self.ops = 0
        self._buf = _Buffers()
        self._known_ids: dict[tuple[str, str], tuple[str, int, int]] = {}
        self._ids_prefetched: set[tuple[str, str]] = set()
        self._data_version = -1  # -1: the caches were not read under the write lock
        self.resets = 0  # caches dropped because another process wrote
        # Users whose devices acknowledged something since the last collect(). After a
        # start it holds every user who has a device: nothing acknowledged is missed.
        self._acked_users: set[str] = {u for (u,) in self._db.execute(
            "SELECT DISTINCT user FROM devices")}
        self._reset_caches()

    def _migrate(self) -> None:
        """Create the schema, or bring an older database up to SCHEMA_VERSION (on start)."""
        db = self._db
        db.executescript(SCHEMA)
        db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', '1')")
        (version,) = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(version)
        if version > SCHEMA_VERSION:
            raise StoreError(f"database schema {version} is newer than this chatd"
                             f" ({SCHEMA_VERSION}): upgrade chatd")
        while version < SCHEMA_VERSION:
            db.executescript("BEGIN;" + MIGRATIONS[version]
                             + f"UPDATE meta SET value='{version + 1}'"
                               " WHERE key='schema_version'; COMMIT;")
            version += 1

    def _reset_caches(self, jobs: bool = True) -> None:
        """Drop every cache. The pending fan-out jobs are read again from the table unless
        jobs is False (after a failed batch: no read outside the lock; the next batch reloads
        them, since _data_version is -1 then)."""
        self._users: set[str] = set()
        self._last_seq: dict[str, int] = {}
        self._last_q: dict[str, int] = {}
        self._devices: dict[str, dict[str, int]] = {}
        self._state: dict[tuple[str, str], list[int]] = {}  # [delivered_upto, read_upto]
        # Inbox items not yet acknowledged by any device, per user: q -> (sender, conv, seq) for
        # a message, None for a receipt. Complete above _recent_floor[user]; below it, ask SQL.
        self._recent: dict[str, dict[int, tuple[str, str, int] | None]] = {}
        self._recent_floor: dict[str, int] = {}
        self._groups: dict[str, _Group | None] = {}  # None: known not to exist
        self._seen: dict[str, list[Any]] = {}  # user -> [last_seen ms or None, hidden]
        self._all: dict[str, list[int]] = {}  # group conv -> [delivered, read] by every member
        self._marks: dict[str, delivery.MarkCounts] = {}  # group conv -> its members' marks
        if jobs:  # (resumed after a restart, or another process's)
            self._jobs: collections.deque[_Fanout] = collections.deque(
                _Fanout(c, q, msgpack.unpackb(r), d, None) for c, q, r, d in self._db.execute(
                    "SELECT conv, seq, recipients, done FROM fanout ORDER BY conv, seq"))

    # ---- the writer ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run batches until cancelled. Started by open_store(). When it stops, the store is
        closed: what still waits for it gets StoreError at once, not a wait for ever."""
        task_status.started()
        batch: list[_Op] = []
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                if not self._urgent.is_set():  # only Acks so far: let others ride along
                    with trio.move_on_after(ACK_DELAY):
                        await self._urgent.wait()
                self._urgent = trio.Event()
                while self._queue:
                    batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                    started = trio.current_time()
                    await trio.to_thread.run_sync(self._run_batch, batch,
                                                  abandon_on_cancel=False)
                    if self.on_batch is not None:
                        self.on_batch(trio.current_time() - started)
                    await self._finish(batch)
                    batch = []
                    new, self._new_jobs = self._new_jobs, []
                    if self.on_fanout is not None:
                        for conv, seq in new:
                            self.on_fanout(conv, seq)
        finally:
            self._closed = True
            for op in batch:  # ran (the thread is never abandoned): its results stand
                op.done.set()
            for op in self._queue:
                op.error = StoreError("store is closed")
                op.done.set()
            self._queue = []

    async def _finish(self, batch: list[_Op]) -> None:
        """Hand a committed batch's inbox items to the listener, in order, and wake its
        callers; a large batch in slices, letting other tasks run between them (no other
        batch commits meanwhile: the order holds)."""
        listener = self.on_append
        handed = 0
        for op in batch:
            if listener is not None and op.result:
                results = op.result if type(op.result) is list else (op.result,)
                for r in results:
                    if type(r) is Appended and r.items:
                        handed += len(r.items)
                        try:
                            listener(r.items)
                        except Exception:  # a broken listener must not stop the store
                            log.exception("append listener failed")
            op.done.set()
            if handed >= HAND_SLICE:
                handed = 0
                await trio.lowlevel.checkpoint()

    def _run_batch(self, batch: list[_Op]) -> None:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            (version,) = db.execute("PRAGMA data_version").fetchone()
            # Another process committed since this store's last batch, or this is the first
            # batch (of the store, or after a failed one): what the caches hold was not read
            # under this lock (the jobs read on opening may have been run by another process
            # since), so it is read again now.
            if version != self._data_version:
                if self._data_version != -1:
                    self.resets += 1
                self._reset_caches()
                self._data_version = version
            self._prefetch_ids(db, [k for op in batch if op.ids for k in op.ids])
            for op in batch:
                try:
                    op.result = op.fn(db)
                except sqlite3.Error:
                    raise
                except Exception as exc:  # a bug in one operation: report it to its caller
                    op.error = exc
            self._buf.flush(db)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._buf = _Buffers()
            self._new_jobs = []
            self._reset_caches(jobs=False)  # (the jobs in memory: a hint, reloaded before use)
            self._data_version = -1
            for op in batch:
                op.result, op.error = None, StoreError(f"sqlite: {exc}")
        self.batches += 1
        self.ops += len(batch)

    def _prefetch_ids(self, db: sqlite3.Connection, keys: list[tuple[str, str]]) -> None:
        """Which of a batch's client ids are already stored: one query per 500 keys instead
        of one per message (each query gives the GIL up and waits to get it back)."""
        self._known_ids = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            for sender, cid, conv, seq, ts in _by_keys(
                    db, "client_ids", ("sender", "client_id"), ("conv", "seq", "ts"), chunk):
                self._known_ids[(sender, cid)] = (conv, seq, ts)
        self._ids_prefetched = set(keys)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def fanout_pending(self) -> int:
        """Inbox appends that committed group messages still owe (the fan-out lag)."""
        return sum(len(j.recipients) - j.done for j in self._jobs)

    async def _do(self, fn: Callable[[sqlite3.Connection], T],
                  ids: list[tuple[str, str]] | None = None, lazy: bool = False) -> T:
        if self._closed:
            raise StoreError("store is closed")
        op = _Op(fn, ids=ids, lazy=lazy)
        self._queue.append(op)
        self._wake.set()
        if not lazy:
            self._urgent.set()
        await op.done.wait()
        if op.error is not None:
            raise op.error
        result: T = op.result
        return result

    async def aclose(self) -> None:
        self._closed = True
        await trio.to_thread.run_sync(self._db.close)

    # ---- cached state (worker thread only) -------------------------------------------------

    def _user_known(self, db: sqlite3.Connection, user: str) -> bool:
        if user in self._users:
            return True
        if db.execute("SELECT 1 FROM users WHERE user=?", (user,)).fetchone() is None:
            return False
        self._users.add(user)
        return True

    def _ensure_user(self, db: sqlite3.Connection, user: str) -> None:
        if not self._user_known(db, user):
            self._users.add(user)
            self._buf.users.append((user,))

    def _last_q_of(self, db: sqlite3.Connection, user: str) -> int:
        """The user's last inbox position."""
        q = self._last_q.get(user)
        if q is None:
            row = db.execute("SELECT last_q FROM users WHERE user=?", (user,)).fetchone()
            q = self._last_q[user] = row[0] if row else 0
        return q

    def _next_q(self, db: sqlite3.Connection, user: str) -> int:
        if user not in self._last_q:
            self._ensure_user(db, user)
        q = self._last_q_of(db, user) + 1
        self._last_q[user] = self._buf.last_q[user] = q
        return q

    def _remember(self, user: str, q: int, item: tuple[str, str, int] | None) -> None:
        recent = self._recent.get(user)
        if recent is None:
            recent = self._recent[user] = {}
            self._recent_floor[user] = q - 1
        elif len(recent) >= RECENT_PER_USER:  # a user who never acks: forget, SQL knows
            recent.clear()
            self._recent_floor[user] = q - 1
        recent[q] = item

    def _delivered_by_ack(self, db: sqlite3.Connection, user: str, old: int,
                          new: int) -> list[tuple[str, str, int]]:
        """(sender, conv, seq) of the messages at inbox positions old < q <= new."""
        recent = self._recent.get(user, {})
        floor = self._recent_floor.get(user, new)
        found: list[tuple[str, str, int]] = []
        if old < floor:
            self._buf.flush(db)
            found += db.execute(
                "SELECT m.sender, i.conv, i.seq FROM inbox i JOIN messages m"
                " ON m.conv = i.conv AND m.seq = i.seq WHERE i.user=? AND i.q>? AND i.q<=?"
                " AND i.receipt IS NULL AND m.sender != ? ORDER BY i.q",
                (user, old, min(new, floor), user)).fetchall()
        pop = recent.pop
        for q in range(max(old, floor) + 1, new + 1):
            item = pop(q, None)  # absent above the floor: an earlier ack handled it
            if item is not None and item[0] != user:
                found.append(item)
        return found

    def _devices_of(self, db: sqlite3.Connection, user: str) -> dict[str, int]:
        devs = self._devices.get(user)
        if devs is None:
            devs = dict(db.execute("SELECT device, cursor FROM devices WHERE user=?", (user,)))
            self._devices[user] = devs
        return devs

    def _member_state(self, db: sqlite3.Connection, conv: str, user: str) -> list[int]:
        st = self._state.get((conv, user))
        if st is None:
            row = db.execute("SELECT delivered_upto, read_upto FROM member_state"
                             " WHERE conv=? AND user=?", (conv, user)).fetchone()
            st = self._state[(conv, user)] = list(row) if row else [0, 0]
        return st

    def _set_state(self, conv: str, user: str, st: list[int]) -> None:
        self._buf.state[(conv, user)] = st

    def _last_seq_of(self, db: sqlite3.Connection, conv: str) -> int:
        seq = self._last_seq.get(conv)
        if seq is None:
            row = db.execute("SELECT last_seq FROM convs WHERE conv=?", (conv,)).fetchone()
            seq = self._last_seq[conv] = row[0] if row else 0
        return seq

    # ---- operations ----------------------------------------------------------------------

    async def add_user(self, user: str) -> None:
        await self._do(lambda db: self._ensure_user(db, user))

    async def has_user(self, user: str) -> bool:
        return await self._do(lambda db: self._user_known(db, user))

    async def attach_device(self, user: str, device: str) -> int:
        def op(db: sqlite3.Connection) -> int:
            self._ensure_user(db, user)
            devs = self._devices_of(db, user)
            if device not in devs:
                devs[device] = self._buf.devices[(user, device)] = min(devs.values(), default=0)
            return devs[device]

        return await self._do(op)

    async def cursor(self, user: str, device: str) -> int:
        return await self._do(lambda db: self._devices_of(db, user).get(device, 0))

    async def append_messages(self, msgs: list[NewMessage]) -> list[Appended]:
        return await self._do(lambda db: [self._append(db, m) for m in msgs],
                              ids=[(m.sender, m.client_id) for m in msgs])

    async def append_message(self, msg: NewMessage) -> Appended:
        return await self._do(lambda db: self._append(db, msg),
                              ids=[(msg.sender, msg.client_id)])

    def _append(self, db: sqlite3.Connection, msg: NewMessage) -> Appended:
        key = (msg.sender, msg.client_id)
        row = self._buf.ids.get(key) or self._known_ids.get(key)
        if row is None and key not in self._ids_prefetched:  # (server-made events)
            row = db.execute("SELECT conv, seq, ts FROM client_ids WHERE sender=? AND"
                             " client_id=?", key).fetchone()
        if row is not None:
            return Appended(row[0], row[1], row[2], duplicate=True)
        self._ensure_user(db, msg.sender)  # (its receipts go to known users only)
        seq = self._last_seq_of(db, msg.conv) + 1
        self._last_seq[msg.conv] = self._buf.last_seq[msg.conv] = seq
        buf = self._buf
        buf.ids[key] = (msg.conv, seq, msg.ts)
        buf.messages.append((msg.conv, seq, msg.ts, msg.sender, msg.device, msg.client_id,
                             msg.body, blobs.media_blob(msg.media), msg.group,
                             msgpack.packb(msg.event) if msg.event else None))
        stored = Message(conv=msg.conv, seq=seq, ts=msg.ts, sender=msg.sender,
                         device=msg.device, id=msg.client_id, body=msg.body, group=msg.group,
                         media=msg.media, event=msg.event)
        devices = len(self._devices_of(db, msg.sender))
        if msg.group is not None:
            g = self._group(db, msg.group)
            targets = delivery.send_targets(msg.sender, msg.recipients,
                                            g.members if g is not None else (), devices)
            self._mark(db, msg.conv, msg.sender, seq, seq)  # the sender has read it
            self._jobs.append(_Fanout(msg.conv, seq, list(targets), 0, stored))
            buf.fanout[(msg.conv, seq)] = (self._jobs[-1].recipients, 0)
            self._new_jobs.append((msg.conv, seq))
            return Appended(msg.conv, seq, msg.ts)
        targets = delivery.send_targets(msg.sender, msg.recipients, (), devices)
        items = [self._deliver_to(db, user, stored) for user in targets]
        return Appended(msg.conv, seq, msg.ts, items=tuple(items))

    def _deliver_to(self, db: sqlite3.Connection, user: str,
                    msg: Message) -> tuple[str, Item]:
        q = self._next_q(db, user)
        self._buf.inbox.append((user, q, msg.conv, msg.seq, None))
        self._remember(user, q, (msg.sender, msg.conv, msg.seq))
        return user, Delivery(q, msg)

    async def fanout(self, conv: str, seq: int) -> bool:
        """Run the fan-out job of a group message to the end (FANOUT_CHUNK inbox appends per
        batch), after the unfinished older jobs of its conversation. False if there is no
        such job (done already, by this node or another)."""
        ran = False
        while await self._do(lambda db: self._fanout_step(db, (conv, seq))) is not None:
            ran = True  # (the step after the last one finds no job)
        return ran

    async def fanout_some(self) -> bool:
        """One step of the oldest jobs (FANOUT_CHUNK inbox appends, one batch of its own,
        queued behind the writes waiting now); whether jobs are left. Those found unfinished
        when the store opened are among them."""
        if self._jobs:
            await self._do(self._fanout_step)
        return bool(self._jobs)

    async def pending_fanouts(self) -> list[tuple[str, int]]:
        """Committed group messages whose fan-out has not finished (from the table)."""
        return await self._do(lambda db: [(c, q) for c, q in db.execute(
            "SELECT conv, seq FROM fanout ORDER BY conv, seq")])

    def _fanout_step(self, db: sqlite3.Connection,
                     only: tuple[str, int] | None = None) -> Appended | None:
        """Append up to FANOUT_CHUNK inbox items from the oldest fan-out jobs (or from the
        job `only` and, first, its conversation's older unfinished jobs, which another node
        may be running too: a member gets a group's messages in seq order; None if there is
        no such job)."""
        jobs = self._jobs
        if only is not None:
            conv, seq = only
            jobs = collections.deque(sorted(
                (j for j in self._jobs if j.conv == conv and j.seq <= seq),
                key=lambda j: j.seq))
            if not jobs:
                return None
        items: list[tuple[str, Item]] = []
        while jobs and len(items) < FANOUT_CHUNK:
            if (jobs[0].conv, jobs[0].seq) not in self._buf.fanout:
                self._check_jobs(db, jobs, FANOUT_CHUNK - len(items))
                if not jobs:  # (finished by another process: found in the table just now)
                    if only is not None and not items:
                        return None
                    break
            job = jobs[0]
            if job.message is None:
                job.message = self._load_message(db, job.conv, job.seq)
            end = min(len(job.recipients), job.done + FANOUT_CHUNK - len(items))
            if job.message is not None:  # (gone if it expired before its fan-out)
                items += [self._deliver_to(db, u, job.message)
                          for u in job.recipients[job.done:end]]
            job.done = end
            if end == len(job.recipients) or job.message is None:
                jobs.popleft()
                if jobs is not self._jobs:
                    self._jobs.remove(job)
                self._buf.fanout[(job.conv, job.seq)] = None
            else:
                self._buf.fanout[(job.conv, job.seq)] = (job.recipients, end)
        return Appended(items=tuple(items))

    def _check_jobs(self, db: sqlite3.Connection, jobs: collections.deque[_Fanout],
                    want: int) -> None:
        """Take the progress of the jobs at the front of `jobs` (as many as may give `want`
        inbox appends) from the fanout table, in the write transaction that will apply their
        next chunk: the table is the truth, memory only a copy that another process may have
        made stale (it ran the job meanwhile). A job whose row is gone is finished: dropped.
        One query for them all. (A job this transaction has written already is in the
        buffer, and memory agrees with it: not asked again.)"""
        front: list[_Fanout] = []
        left = 0
        for job in jobs:
            if left >= want or len(front) >= 500:
                break
            if (job.conv, job.seq) in self._buf.fanout:
                break
            front.append(job)
            left += len(job.recipients) - job.done
        rows = dict(((c, q), d) for c, q, d in _by_keys(
            db, "fanout", ("conv", "seq"), ("done",), [(j.conv, j.seq) for j in front]))
        for job in front:
            done = rows.get((job.conv, job.seq))
            if done is None:  # run to the end by another process: nothing left to do
                jobs.remove(job)
                if jobs is not self._jobs:
                    self._jobs.remove(job)
            else:
                job.done = done

    def _load_message(self, db: sqlite3.Connection, conv: str, seq: int) -> Message | None:
        self._buf.flush(db)
        row = db.execute("SELECT ts, sender, device, client_id, body, media, grp, event"
                         " FROM messages WHERE conv=? AND seq=?", (conv, seq)).fetchone()
        if row is None:
            return None
        ts, sender, dev, cid, body, media, grp, event = row
        return Message(conv=conv, seq=seq, ts=ts, sender=sender, device=dev, id=cid,
                       body=body, group=grp, media=blobs.media(media),
                       event=msgpack.unpackb(event) if event else None)

    # ---- groups ----------------------------------------------------------------------------

    def _group_info(self, db: sqlite3.Connection, group: str, g: _Group) -> GroupInfo:
        mode, ttl = self._mode(db, convs.of_group(group))
        return dataclasses.replace(g.info(group), mode=mode, ttl=ttl)

    def _group(self, db: sqlite3.Connection, group: str) -> _Group | None:
        if group in self._groups:
            return self._groups[group]
        row = db.execute("SELECT name FROM groups WHERE grp=?", (group,)).fetchone()
        g = None
        if row is not None:
            members = {u: (bool(a), j) for u, a, j in db.execute(
                "SELECT user, admin, joined_seq FROM group_members WHERE grp=?"
                " ORDER BY joined_seq, user", (group,))}
            g = _Group(row[0], members)
        self._groups[group] = g
        return g

    def _post_event(self, db: sqlite3.Connection, conv: str, actor: str, ts: int,
                    event: dict[str, Any], also: tuple[str, ...] = ()) -> Appended:
        """A server-made message in the chat (sent like any message)."""
        return self._append(db, modes.chat_event(conv, actor, ts, event, also))

    async def create_group(self, group: str, name: str, creator: str, members: list[str],
                           ts: int) -> GroupInfo | None:
        def op(db: sqlite3.Connection) -> GroupInfo | None:
            if self._group(db, group) is not None:
                return None
            everyone = group_rules.founders(creator, members)
            db.execute("INSERT INTO groups VALUES (?, ?, ?)", (group, name, ts))
            db.executemany("INSERT INTO group_members VALUES (?, ?, ?, 0)",
                           [(group, u, int(u == creator)) for u in everyone])
            self._groups[group] = _Group(name, {u: (u == creator, 0) for u in everyone})
            self._post_event(db, convs.of_group(group), creator, ts,
                             group_rules.created(creator, name, everyone))
            return self._groups[group].info(group)  # type: ignore[union-attr]

        return await self._do(op)

    async def group(self, group: str) -> GroupInfo | None:
        def op(db: sqlite3.Connection) -> GroupInfo | None:
            g = self._group(db, group)
            return None if g is None else self._group_info(db, group, g)

        return await self._do(op)

    async def change_group(self, group: str, actor: str, ts: int, *,
                           add: tuple[str, ...] = (), remove: tuple[str, ...] = (),
                           name: str | None = None) -> GroupInfo:
        def op(db: sqlite3.Connection) -> GroupInfo:
            g = self._group(db, group)
            if g is None:
                raise KeyError(group)
            conv = convs.of_group(group)
            last = self._last_seq_of(db, conv)
            plan = group_rules.change({u: a for u, (a, _) in g.members.items()}, actor,
                                      add, remove, name)
            for u in plan.added:  # a new member starts after the messages sent before joining
                g.members[u] = (False, last)
                self._set_state(conv, u, [last, last])
                self._state[(conv, u)] = [last, last]
            self._marks.pop(conv, None)  # counted again over the new members when needed
            for u in plan.removed:
                del g.members[u]
            if plan.successor is not None:
                g.members[plan.successor] = (True, g.members[plan.successor][1])
                db.execute("UPDATE group_members SET admin=1 WHERE grp=? AND user=?",
                           (group, plan.successor))
            db.executemany("INSERT INTO group_members VALUES (?, ?, 0, ?)",
                           [(group, u, last) for u in plan.added])
            db.executemany("DELETE FROM group_members WHERE grp=? AND user=?",
                           [(group, u) for u in plan.removed])
            if plan.name is not None:
                g.name = plan.name
                db.execute("UPDATE groups SET name=? WHERE grp=?", (plan.name, group))
            for event, also in plan.events:
                self._post_event(db, conv, actor, ts, event, also)
            if plan.recount:
                self._advance_all(db, conv, actor, ts)  # the rest may all have it now
            return self._group_info(db, group, g)

        return await self._do(op)

    async def user_groups(self, user: str) -> list[str]:
        return await self._do(lambda db: [g for (g,) in db.execute(
            "SELECT grp FROM group_members WHERE user=? ORDER BY grp", (user,))])

    async def joined_at(self, group: str, user: str) -> int | None:
        def op(db: sqlite3.Connection) -> int | None:
            g = self._group(db, group)
            return None if g is None or user not in g.members else g.members[user][1]

        return await self._do(op)

    # ---- presence ------------------------------------------------------------------------

    def _presence(self, db: sqlite3.Connection, user: str) -> list[Any]:
        p = self._seen.get(user)
        if p is None:
            row = db.execute("SELECT last_seen, hide_last_seen FROM users WHERE user=?",
                             (user,)).fetchone()
            p = self._seen[user] = [row[0], bool(row[1])] if row else [None, False]
        return p

    async def presence_of(self, user: str) -> tuple[int | None, bool]:
        def op(db: sqlite3.Connection) -> tuple[int | None, bool]:
            last, hidden = self._presence(db, user)
            return last, hidden

        return await self._do(op)

    async def set_last_seen(self, seen: dict[str, int]) -> None:
        def op(db: sqlite3.Connection) -> None:
            rows = []
            for user, ts in seen.items():
                p = self._presence(db, user)
                if p[0] is None or ts > p[0]:
                    p[0] = ts
                    self._ensure_user(db, user)
                    rows.append((ts, user))
            self._buf.flush(db)
            db.executemany("UPDATE users SET last_seen=? WHERE user=?", rows)

        await self._do(op)

    async def set_privacy(self, user: str, hide_last_seen: bool) -> None:
        def op(db: sqlite3.Connection) -> None:
            self._presence(db, user)[1] = hide_last_seen
            self._ensure_user(db, user)
            self._buf.flush(db)
            db.execute("UPDATE users SET hide_last_seen=? WHERE user=?",
                       (int(hide_last_seen), user))

        await self._do(op)

    # ---- chat modes and expiry ---------------------------------------------------------------

    def _mode(self, db: sqlite3.Connection, conv: str) -> tuple[int, int]:
        row = db.execute("SELECT mode, ttl FROM convs WHERE conv=?", (conv,)).fetchone()
        return (row[0], row[1]) if row else modes.DEFAULT

    async def conv_mode(self, conv: str) -> tuple[int, int]:
        return await self._do(lambda db: self._mode(db, conv))

    async def set_mode(self, conv: str, mode: int, ttl: int, actor: str, ts: int) -> None:
        def op(db: sqlite3.Connection) -> Appended:
            self._buf.flush(db)  # the conversation row may be in the buffer
            db.execute("INSERT INTO convs (conv, last_seq, mode, ttl) VALUES (?, ?, ?, ?)"
                       " ON CONFLICT DO UPDATE SET mode=excluded.mode, ttl=excluded.ttl",
                       (conv, self._last_seq_of(db, conv), mode, ttl))
            # (returned: pushed live like a message; a group's by its fan-out)
            return self._post_event(db, conv, actor, ts, modes.event(mode, ttl, actor))

        await self._do(op)

    async def collect(self, now: int, max_age_ms: int) -> dict[str, int]:
        """Forget what the chat modes say to forget. Inbox items every device of their user
        has acknowledged go; then messages of TEMPORARY chats that no inbox holds any more
        (every recipient device has them) or older than max_age_ms (never delivered), and
        messages of DISAPPEARING chats older than their ttl. PERMANENT messages stay.

        Every step uses an index and touches only what changed: the users whose devices
        acknowledged something since the last pass, the messages their deleted inbox items
        pointed at, and at most COLLECT_LIMIT expired messages per rule (the rest next pass),
        because the writer does nothing else meanwhile. The DISAPPEARING chats (each looked
        at) then go CONVS_PER_BATCH a batch, and the expired client ids IDS_PER_BATCH a
        batch, with other writes stored between."""
        def op(db: sqlite3.Connection) -> dict[str, int]:
            self._buf.flush(db)
            users, self._acked_users = self._acked_users, set()
            candidates: set[tuple[str, int]] = set()
            acked = 0
            for user in users:
                devs = self._devices_of(db, user)
                if not devs:
                    continue
                rows = db.execute("DELETE FROM inbox WHERE user=? AND q<=? RETURNING conv, seq",
                                  (user, min(devs.values()))).fetchall()
                acked += len(rows)
                candidates.update((c, q) for c, q in rows if q)  # receipts have seq 0
            pending = {(j.conv, j.seq) for j in self._jobs}
            seen: dict[str, int] = {}

            def mode(conv: str) -> int:
                if conv not in seen:
                    seen[conv] = self._mode(db, conv)[0]
                return seen[conv]

            delivered = [k for k in candidates if modes.forgets_delivered(mode(k[0])) and k not in
                         pending and db.execute("SELECT 1 FROM inbox WHERE conv=? AND seq=?",
                                                k).fetchone() is None]
            db.executemany("DELETE FROM messages WHERE conv=? AND seq=?", delivered)
            old = db.execute("SELECT conv, seq FROM messages WHERE ts < ? ORDER BY ts LIMIT ?",
                             (now - max_age_ms, COLLECT_LIMIT)).fetchall()
            too_old = [k for k in old if modes.forgets_undelivered(mode(k[0]))
                       and k not in pending]
            return {"inbox_acked": acked, "delivered": len(delivered), "too_old": len(too_old),
                    "expired": 0, "inbox_orphans": forget(db, too_old)}

        def forget(db: sqlite3.Connection, gone: list[tuple[str, int]]) -> int:
            """Delete these messages and their inbox items (never delivered now): how many
            inbox items went."""
            db.executemany("DELETE FROM messages WHERE conv=? AND seq=?", gone)
            return sum(db.execute("DELETE FROM inbox WHERE conv=? AND seq=?", k).rowcount
                       for k in gone)

        def expire(db: sqlite3.Connection, after: str) -> tuple[int, int, str | None]:
            """The expired messages of the next CONVS_PER_BATCH DISAPPEARING chats (by conv
            id, after `after`): (messages, inbox items) deleted and where to go on from
            (None: that was the last of them)."""
            self._buf.flush(db)
            chats = db.execute("SELECT conv, ttl FROM convs WHERE mode=? AND conv>? ORDER BY"
                               " conv LIMIT ?", (Mode.DISAPPEARING, after, CONVS_PER_BATCH)
                               ).fetchall()
            expired: list[tuple[str, int]] = []
            for conv, ttl in chats:
                expired += db.execute("SELECT conv, seq FROM messages WHERE conv=? AND ts<?"
                                      " LIMIT ?", (conv, modes.expires_before(
                                          Mode.DISAPPEARING, ttl, now), COLLECT_LIMIT))
            return (len(expired), forget(db, expired),
                    chats[-1][0] if len(chats) == CONVS_PER_BATCH else None)

        def forget_ids(db: sqlite3.Connection) -> int:
            """The oldest expired client ids, IDS_PER_BATCH (and any sharing the last one's
            ts): each such batch is short, and sends are stored between them."""
            cutoff = now - max_age_ms
            last = db.execute("SELECT ts FROM client_ids WHERE ts < ? ORDER BY ts LIMIT 1"
                              " OFFSET ?", (cutoff, IDS_PER_BATCH - 1)).fetchone()
            return int(db.execute("DELETE FROM client_ids WHERE ts < ?" if last is None else
                                  "DELETE FROM client_ids WHERE ts <= ?",
                                  (cutoff if last is None else last[0],)).rowcount)

        gone = await self._do(op)
        after: str | None = ""
        while after is not None:  # (a million such chats held the writer for seconds)
            expired, orphans, after = await self._do(functools.partial(expire, after=after))
            gone["expired"] += expired
            gone["inbox_orphans"] += orphans
        gone["client_ids"] = 0
        while True:  # (after a long stop, a day's worth at once held the writer 4 s)
            n = await self._do(forget_ids)
            gone["client_ids"] += n
            if n < IDS_PER_BATCH:
                return gone

    async def receipt_state(self, conv: str, seq: int) -> ReceiptState:
        def op(db: sqlite3.Connection) -> ReceiptState:
            group = convs.group_of(conv)
            g = self._group(db, group) if group is not None else None
            users = g.members if g is not None else convs.pair(conv) or ()
            self._buf.flush(db)
            row = db.execute("SELECT sender FROM messages WHERE conv=? AND seq=?",
                             (conv, seq)).fetchone()
            return delivery.receipt_state(users, row[0] if row else None, seq,
                                          lambda u: self._member_state(db, conv, u))

        return await self._do(op)

    def _mark(self, db: sqlite3.Connection, conv: str, user: str, delivered: int | None,
              read: int | None) -> None:
        """Raise a member's watermarks (never lower them), keeping a group's counts right."""
        st = self._member_state(db, conv, user)
        marks = self._marks.get(conv)
        for i, value in ((0, delivered), (1, read)):
            if value is not None and value > st[i]:
                if marks is not None:
                    marks.move(user, i, st[i], value)
                st[i] = value
        self._set_state(conv, user, st)

    def _advance_all(self, db: sqlite3.Connection, conv: str, by: str, ts: int) -> list[
            tuple[str, Item]]:
        """Receipts with all=True for the group messages every member now has (or read).

        How many members stand at each watermark is counted per group (MarkCounts), so an
        ack costs O(distinct watermarks), not O(members)."""
        g = self._group(db, convs.group_of(conv) or "")
        if g is None or not g.members:
            return []
        marks = self._marks.get(conv)
        if marks is None:
            for u, d, r in db.execute("SELECT user, delivered_upto, read_upto FROM member_state"
                                      " WHERE conv=?", (conv,)):
                self._state.setdefault((conv, u), [d, r])
            marks = self._marks[conv] = delivery.MarkCounts(
                {u: self._member_state(db, conv, u) for u in g.members})
        before = self._all.get(conv)
        if before is None:
            row = db.execute("SELECT all_delivered, all_read FROM convs WHERE conv=?",
                             (conv,)).fetchone()
            before = self._all[conv] = list(row) if row else [0, 0]
        out: list[tuple[str, Item]] = []
        for status, lo, hi in delivery.all_receipts(before, marks.floor()):
            self._buf.flush(db)
            rows = db.execute("SELECT sender, seq, event IS NOT NULL FROM messages WHERE conv=?"
                              " AND seq>? AND seq<=? ORDER BY seq", (conv, lo, hi)).fetchall()
            out += self._put_receipts(db, delivery.all_receipts_for(by, conv, status, ts, rows))
            before[0 if status == Status.DELIVERED else 1] = hi
            self._buf.all[conv] = before
        return out

    def _page(self, db: sqlite3.Connection, user: str, device: str, after: int,
              limit: int) -> Page:
        self._buf.flush(db)
        rows = db.execute(
            "SELECT i.q, i.conv, i.seq, i.receipt, m.ts, m.sender, m.device, m.client_id,"
            " m.body, m.media, m.grp, m.event FROM inbox i LEFT JOIN messages m"
            " ON m.conv = i.conv AND m.seq = i.seq"
            " WHERE i.user=? AND i.q>? ORDER BY i.q LIMIT ?", (user, after, limit)).fetchall()
        items: list[Item] = []
        for q, conv, seq, receipt, ts, sender, dev, cid, body, media, grp, event in rows:
            if receipt is not None:
                items.append(blobs.receipt(user, q, conv, receipt))
            elif sender is not None and delivery.shown_to(user, device, sender, dev):
                items.append(Delivery(q, Message(
                    conv=conv, seq=seq, ts=ts, sender=sender, device=dev, id=cid, body=body,
                    group=grp, media=blobs.media(media),
                    event=msgpack.unpackb(event) if event else None)))
        upto = rows[-1][0] if rows else after
        return Page(items, upto, len(rows) == limit)

    async def inbox(self, user: str, device: str, after: int, limit: int) -> Page:
        return await self._do(lambda db: self._page(db, user, device, after, limit))

    def _put_receipts(self, db: sqlite3.Connection, notes: list[ReceiptNote]
                      ) -> list[tuple[str, Item]]:
        out: list[tuple[str, Item]] = []
        for n in notes:
            if not self._user_known(db, n.to):
                continue  # (a deleted user's messages: nobody to tell, and no user to make)
            q = self._next_q(db, n.to)
            self._remember(n.to, q, None)
            self._buf.inbox.append((n.to, q, n.conv, 0, blobs.receipt_blob(n)))
            out.append((n.to, Notice(q, n)))
        return out

    async def ack(self, user: str, device: str, upto: int, ts: int, *,
                  lazy: bool = True) -> Appended:
        def op(db: sqlite3.Connection) -> Appended:
            devs = self._devices_of(db, user)
            old = devs.get(device)
            if old is None:
                return Appended()
            new = delivery.new_cursor(old, upto, self._last_q_of(db, user))
            if new is None:
                return Appended()
            devs[device] = self._buf.devices[(user, device)] = new
            self._acked_users.add(user)  # collect() may delete what all devices now have
            got = delivery.delivered(user, self._delivered_by_ack(db, user, old, new),
                                     lambda conv: self._member_state(db, conv, user)[0])
            for conv, seq in got.raised.items():
                self._mark(db, conv, user, seq, None)
            items = self._put_receipts(db, delivery.receipts(user, Status.DELIVERED, ts,
                                                             got.direct))
            for conv in got.groups:  # coalesced: one receipt when all have it
                items += self._advance_all(db, conv, user, ts)
            return Appended(items=tuple(items))

        return await self._do(op, lazy=lazy)

    async def mark_read(self, user: str, conv: str, upto: int, ts: int) -> Appended:
        def op(db: sqlite3.Connection) -> Appended:
            st = self._member_state(db, conv, user)
            old = st[1]
            new = delivery.new_read(upto, self._last_seq_of(db, conv), old)
            if new is None:
                return Appended()
            self._mark(db, conv, user, new, new)
            rows: list[tuple[str, int, bool]] = []
            if not convs.is_group(conv):
                self._buf.flush(db)
                rows = db.execute("SELECT sender, seq, event IS NOT NULL FROM messages"
                                  " WHERE conv=? AND seq>? AND seq<=? ORDER BY seq",
                                  (conv, old, new)).fetchall()
            items = self._put_receipts(db, delivery.read_receipts(
                user, conv, new, ts, len(self._devices_of(db, user)), rows))
            if convs.is_group(conv):
                items += self._advance_all(db, conv, user, ts)
            return Appended(items=tuple(items))

        return await self._do(op)

    async def history(self, conv: str, before: int | None, limit: int,
                      after: int = 0) -> list[HistoryItem]:
        def op(db: sqlite3.Connection) -> list[HistoryItem]:
            self._buf.flush(db)
            rows = db.execute(
                "SELECT seq, ts, sender, device, client_id, body, media, event FROM messages"
                " WHERE conv=? AND seq<? AND seq>? ORDER BY seq DESC LIMIT ?",
                (conv, before if before is not None else 2**62, after, limit)).fetchall()
            return [HistoryItem(seq=s, ts=ts, sender=f, device=d, id=i, body=b,
                                media=blobs.media(m), event=blobs.event(e))
                    for s, ts, f, d, i, b, m, e in rows]

        return await self._do(op)

    # ---- admin -----------------------------------------------------------------------------

    async def devices(self, user: str) -> dict[str, int]:
        return await self._do(lambda db: dict(self._devices_of(db, user)))

    async def revoke(self, user: str, device: str | None, at: int) -> None:
        await self._do(lambda db: db.execute(
            "INSERT INTO revocations VALUES (?, ?, ?) ON CONFLICT DO UPDATE"
            " SET at=max(at, excluded.at)", (user, device or "", at)))

    async def revoked_at(self, user: str, device: str) -> int:
        def op(db: sqlite3.Connection) -> int:
            (at,) = db.execute("SELECT max(at) FROM revocations WHERE user=? AND device"
                               " IN (?, '')", (user, device)).fetchone()
            return at or 0

        return await self._do(op)

    async def revocations_since(self, since: int) -> list[Revocation]:
        return await self._do(lambda db: [
            Revocation(u, d or None, at) for u, d, at in db.execute(
                "SELECT user, device, at FROM revocations WHERE at>=?", (since,))])

    async def delete_user(self, user: str) -> None:
        def op(db: sqlite3.Connection) -> None:
            self._buf.flush(db)  # (rows of this batch's earlier operations go first)
            for table in ("devices", "inbox", "member_state", "users"):
                db.execute(f"DELETE FROM {table} WHERE user=?", (user,))
            self._reset_caches(jobs=False)  # the user's cached state: read again

        await self._do(op)
