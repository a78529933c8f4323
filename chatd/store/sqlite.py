"""SQLite store: the embedded default. One writer thread, group commit, write-behind rows.

Every operation is a small synchronous function run in a worker thread (never on the trio
thread) against one connection. Operations that arrive while a batch runs are queued and run as
the next batch inside one transaction. Hot state (sequence and inbox counters, device cursors,
receipt watermarks) is cached in memory; each operation updates the cache and appends the rows
it writes to per-table buffers, which are written with one executemany per table before the
batch's single COMMIT (one fsync in WAL mode with synchronous=FULL). An awaited write returns
only after its batch committed, so "returned" means "durable". If a commit fails, every
operation of the batch fails with StoreError and the caches are dropped (reloaded from disk).

This process must be the only writer of the database file (chatd serve holds it; `chatd
token` only adds users, which is safe alongside).
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from collections.abc import Callable
from typing import Any, Final, TypeVar

import msgpack
import trio

from chatd.protocol.frames import Deliver, HistoryItem, Media, Receipt, Status
from chatd.protocol.schema import from_map, to_map

from .base import Appended, AppendListener, Item, NewMessage, Page, StoreError, receipts_for

T = TypeVar("T")
log = logging.getLogger("chatd.store")
MAX_BATCH: Final = 2000
RECENT_PER_USER: Final = 20_000  # inbox items per user remembered for acks without a query
SCHEMA_VERSION: Final = 1

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
"""


@dataclasses.dataclass(slots=True)
class _Op:
    fn: Callable[[sqlite3.Connection], Any]
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


def _media_blob(media: tuple[Media, ...]) -> bytes | None:
    return msgpack.packb([to_map(m) for m in media]) if media else None


def _media(blob: bytes | None) -> tuple[Media, ...]:
    if not blob:
        return ()
    return tuple(from_map(Media, m, "media") for m in msgpack.unpackb(blob))


class _Buffers:
    """Rows written by the operations of one batch, flushed table by table."""

    def __init__(self) -> None:
        self.users: list[tuple[Any, ...]] = []
        self.devices: dict[tuple[str, str], int] = {}
        self.messages: list[tuple[Any, ...]] = []
        self.ids: dict[tuple[str, str], tuple[str, int, int]] = {}  # (sender, client id)
        self.inbox: list[tuple[Any, ...]] = []
        self.last_seq: dict[str, int] = {}
        self.last_q: dict[str, int] = {}
        self.state: dict[tuple[str, str], list[int]] = {}

    def __bool__(self) -> bool:
        return bool(self.users or self.devices or self.messages or self.inbox or self.last_q
                    or self.state or self.ids or self.last_seq)

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
            db.executemany("INSERT INTO convs VALUES (?, ?) ON CONFLICT DO UPDATE"
                           " SET last_seq=excluded.last_seq", list(self.last_seq.items()))
        if self.ids:
            db.executemany("INSERT INTO client_ids VALUES (?, ?, ?, ?, ?)",
                           [(s, c, *v) for (s, c), v in self.ids.items()])
        if self.messages:
            db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           self.messages)
        if self.inbox:
            db.executemany("INSERT INTO inbox VALUES (?, ?, ?, ?, ?)", self.inbox)
        if self.state:
            db.executemany("INSERT INTO member_state VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE"
                           " SET delivered_upto=excluded.delivered_upto,"
                           " read_upto=excluded.read_upto",
                           [(c, u, d, r) for (c, u), (d, r) in self.state.items()])
        self.__init__()  # type: ignore[misc]


class SqliteStore:
    def __init__(self, path: str, synchronous: str = "FULL") -> None:
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                         (str(SCHEMA_VERSION),))
        self._queue: list[_Op] = []
        self._wake = trio.Event()
        self._closed = False
        self.on_append: AppendListener | None = None
        self.batches = 0
        self.ops = 0
        self._buf = _Buffers()
        self._reset_caches()

    def _reset_caches(self) -> None:
        self._users: set[str] = set()
        self._last_seq: dict[str, int] = {}
        self._last_q: dict[str, int] = {}
        self._devices: dict[str, dict[str, int]] = {}
        self._state: dict[tuple[str, str], list[int]] = {}  # [delivered_upto, read_upto]
        # Inbox items not yet acknowledged by any device, per user: q -> (sender, conv, seq) for
        # a message, None for a receipt. Complete above _recent_floor[user]; below it, ask SQL.
        self._recent: dict[str, dict[int, tuple[str, str, int] | None]] = {}
        self._recent_floor: dict[str, int] = {}

    # ---- the writer ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run batches until cancelled. Started by open_store()."""
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await trio.to_thread.run_sync(self._run_batch, batch, abandon_on_cancel=False)
                listener = self.on_append
                for op in batch:
                    if listener is not None and op.result:
                        results = op.result if type(op.result) is list else (op.result,)
                        for r in results:
                            if type(r) is Appended and r.items:
                                try:
                                    listener(r.items)
                                except Exception:  # a broken listener must not stop the store
                                    log.exception("append listener failed")
                    op.done.set()

    def _run_batch(self, batch: list[_Op]) -> None:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
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
            self._reset_caches()
            for op in batch:
                op.result, op.error = None, StoreError(f"sqlite: {exc}")
        self.batches += 1
        self.ops += len(batch)

    async def _do(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreError("store is closed")
        op = _Op(fn)
        self._queue.append(op)
        self._wake.set()
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

    def _next_q(self, db: sqlite3.Connection, user: str) -> int:
        q = self._last_q.get(user)
        if q is None:
            self._ensure_user(db, user)
            row = db.execute("SELECT last_q FROM users WHERE user=?", (user,)).fetchone()
            q = row[0] if row else 0
        q += 1
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
        return await self._do(lambda db: [self._append(db, m) for m in msgs])

    async def append_message(self, msg: NewMessage) -> Appended:
        return await self._do(lambda db: self._append(db, msg))

    def _append(self, db: sqlite3.Connection, msg: NewMessage) -> Appended:
        key = (msg.sender, msg.client_id)
        row = self._buf.ids.get(key)
        if row is None:
            row = db.execute("SELECT conv, seq, ts FROM client_ids WHERE sender=? AND"
                             " client_id=?", key).fetchone()
        if row is not None:
            return Appended(row[0], row[1], row[2], duplicate=True)
        seq = self._last_seq_of(db, msg.conv) + 1
        self._last_seq[msg.conv] = self._buf.last_seq[msg.conv] = seq
        buf = self._buf
        buf.ids[key] = (msg.conv, seq, msg.ts)
        buf.messages.append((msg.conv, seq, msg.ts, msg.sender, msg.device, msg.client_id,
                             msg.body, _media_blob(msg.media), msg.group))
        template = Deliver(q=1, conv=msg.conv, seq=seq, ts=msg.ts, sender=msg.sender,
                           device=msg.device, id=msg.client_id, body=msg.body, group=msg.group,
                           media=msg.media)
        items: list[tuple[str, Item]] = []
        targets = msg.recipients
        if len(self._devices_of(db, msg.sender)) > 1:  # a copy for the sender's other devices
            targets = (*targets, msg.sender)
        for user in targets:
            q = self._next_q(db, user)
            buf.inbox.append((user, q, msg.conv, seq, None))
            self._remember(user, q, (msg.sender, msg.conv, seq))
            items.append((user, dataclasses.replace(template, q=q)))
        return Appended(msg.conv, seq, msg.ts, items=tuple(items))

    def _page(self, db: sqlite3.Connection, user: str, device: str, after: int,
              limit: int) -> Page:
        self._buf.flush(db)
        rows = db.execute(
            "SELECT i.q, i.conv, i.seq, i.receipt, m.ts, m.sender, m.device, m.client_id,"
            " m.body, m.media, m.grp FROM inbox i LEFT JOIN messages m"
            " ON m.conv = i.conv AND m.seq = i.seq"
            " WHERE i.user=? AND i.q>? ORDER BY i.q LIMIT ?", (user, after, limit)).fetchall()
        items: list[Item] = []
        for q, conv, seq, receipt, ts, sender, dev, cid, body, media, grp in rows:
            if receipt is not None:
                r = msgpack.unpackb(receipt)
                items.append(Receipt(q=q, conv=conv, seqs=tuple(r["ss"]), by=r["by"],
                                     status=r["st"], ts=r["ts"], all=r.get("all", False)))
            elif sender is not None and not (sender == user and dev == device):
                items.append(Deliver(q=q, conv=conv, seq=seq, ts=ts, sender=sender,
                                     device=dev, id=cid, body=body, group=grp,
                                     media=_media(media)))
        upto = rows[-1][0] if rows else after
        return Page(items, upto, len(rows) == limit)

    async def inbox(self, user: str, device: str, after: int, limit: int) -> Page:
        return await self._do(lambda db: self._page(db, user, device, after, limit))

    def _receipts(self, db: sqlite3.Connection, by: str, status: int, ts: int,
                  newly: list[tuple[str, str, int]]) -> Appended:
        if not newly:
            return Appended()
        next_q = {s: self._next_q(db, s) for s in {s for s, _, _ in newly}}
        out = receipts_for(by, status, ts, newly, dict(next_q))
        for sender, r in out:
            self._remember(sender, r.q, None)
            self._buf.inbox.append((sender, r.q, r.conv, 0, msgpack.packb(
                {"ss": list(r.seqs), "by": by, "st": status, "ts": ts})))
            if r.q > self._last_q[sender]:  # _next_q reserved only the first position
                self._last_q[sender] = self._buf.last_q[sender] = r.q
        return Appended(items=tuple(out))

    async def ack(self, user: str, device: str, upto: int, ts: int) -> Appended:
        def op(db: sqlite3.Connection) -> Appended:
            devs = self._devices_of(db, user)
            old = devs.get(device)
            if old is None:
                return Appended()
            if user not in self._last_q:
                row = db.execute("SELECT last_q FROM users WHERE user=?", (user,)).fetchone()
                self._last_q[user] = row[0] if row else 0
            new = min(upto, self._last_q[user])
            if new <= old:
                return Appended()
            devs[device] = self._buf.devices[(user, device)] = new
            newly: list[tuple[str, str, int]] = []
            for sender, conv, seq in self._delivered_by_ack(db, user, old, new):
                st = self._member_state(db, conv, user)
                if seq > st[0]:
                    st[0] = seq
                    self._set_state(conv, user, st)
                    newly.append((sender, conv, seq))
            return self._receipts(db, user, Status.DELIVERED, ts, newly)

        return await self._do(op)

    async def mark_read(self, user: str, conv: str, upto: int, ts: int) -> Appended:
        def op(db: sqlite3.Connection) -> Appended:
            last = self._last_seq_of(db, conv)
            upto_ = min(upto, last)
            st = self._member_state(db, conv, user)
            if upto_ <= st[1]:
                return Appended()
            old = st[1]
            st[0], st[1] = max(st[0], upto_), upto_
            self._set_state(conv, user, st)
            self._buf.flush(db)
            newly = db.execute("SELECT sender, conv, seq FROM messages WHERE conv=? AND seq>?"
                               " AND seq<=? AND sender != ? ORDER BY seq",
                               (conv, old, upto_, user)).fetchall()
            return self._receipts(db, user, Status.READ, ts, newly)

        return await self._do(op)

    async def history(self, conv: str, before: int | None, limit: int) -> list[HistoryItem]:
        def op(db: sqlite3.Connection) -> list[HistoryItem]:
            self._buf.flush(db)
            rows = db.execute(
                "SELECT seq, ts, sender, device, client_id, body, media FROM messages"
                " WHERE conv=? AND seq<? ORDER BY seq DESC LIMIT ?",
                (conv, before if before is not None else 2**62, limit)).fetchall()
            return [HistoryItem(seq=s, ts=ts, sender=f, device=d, id=i, body=b, media=_media(m))
                    for s, ts, f, d, i, b, m in rows]

        return await self._do(op)
