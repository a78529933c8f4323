"""SQLite store: the embedded default. One writer thread, group commit.

Every operation is a small synchronous function run against one connection in a worker thread
(never on the trio thread). Operations that arrive while a batch runs are queued and run as the
next batch inside a single transaction, each in its own savepoint; one COMMIT (and one fsync
in WAL mode with synchronous=FULL) then covers them all. An awaited write returns only after
its batch committed, so "returned" means "durable".
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable
from typing import Any, Final, TypeVar

import msgpack
import trio

from chatd.protocol.frames import Deliver, HistoryItem, Media, Receipt, Status
from chatd.protocol.schema import from_map, to_map

from .base import Appended, AppendListener, Item, NewMessage, Page, StoreError, receipts_for

T = TypeVar("T")
MAX_BATCH: Final = 2000
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
                    if listener is not None and type(op.result) is Appended and op.result.items:
                        listener(op.result.items)
                    op.done.set()

    def _run_batch(self, batch: list[_Op]) -> None:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            for op in batch:
                db.execute("SAVEPOINT op")
                try:
                    op.result = op.fn(db)
                except Exception as exc:
                    db.execute("ROLLBACK TO op")
                    op.error = exc
                db.execute("RELEASE op")
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            for op in batch:
                op.error = StoreError(f"sqlite: {exc}")
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
            if isinstance(op.error, sqlite3.Error):
                raise StoreError(f"sqlite: {op.error}") from op.error
            raise op.error
        result: T = op.result
        return result

    async def aclose(self) -> None:
        self._closed = True
        await trio.to_thread.run_sync(self._db.close)

    # ---- operations ----------------------------------------------------------------------

    async def add_user(self, user: str) -> None:
        await self._do(lambda db: db.execute("INSERT OR IGNORE INTO users(user) VALUES (?)",
                                             (user,)))

    async def has_user(self, user: str) -> bool:
        return await self._do(lambda db: db.execute(
            "SELECT 1 FROM users WHERE user=?", (user,)).fetchone() is not None)

    async def attach_device(self, user: str, device: str) -> int:
        def op(db: sqlite3.Connection) -> int:
            db.execute("INSERT OR IGNORE INTO users(user) VALUES (?)", (user,))
            row = db.execute("SELECT cursor FROM devices WHERE user=? AND device=?",
                             (user, device)).fetchone()
            if row is not None:
                return int(row[0])
            (start,) = db.execute("SELECT coalesce(min(cursor), 0) FROM devices WHERE user=?",
                                  (user,)).fetchone()
            db.execute("INSERT INTO devices VALUES (?, ?, ?)", (user, device, start))
            return int(start)

        return await self._do(op)

    async def cursor(self, user: str, device: str) -> int:
        row = await self._do(lambda db: db.execute(
            "SELECT cursor FROM devices WHERE user=? AND device=?", (user, device)).fetchone())
        return int(row[0]) if row else 0

    async def append_message(self, msg: NewMessage) -> Appended:
        return await self._do(lambda db: self._append(db, msg))

    @staticmethod
    def _next_q(db: sqlite3.Connection, user: str) -> int:
        row = db.execute("UPDATE users SET last_q = last_q + 1 WHERE user=? RETURNING last_q",
                         (user,)).fetchone()
        if row is None:
            db.execute("INSERT INTO users(user, last_q) VALUES (?, 1)", (user,))
            return 1
        return int(row[0])

    def _append(self, db: sqlite3.Connection, msg: NewMessage) -> Appended:
        row = db.execute("SELECT conv, seq, ts FROM client_ids WHERE sender=? AND client_id=?",
                         (msg.sender, msg.client_id)).fetchone()
        if row is not None:
            return Appended(row[0], row[1], row[2], duplicate=True)
        row = db.execute("UPDATE convs SET last_seq = last_seq + 1 WHERE conv=? "
                         "RETURNING last_seq", (msg.conv,)).fetchone()
        if row is None:
            db.execute("INSERT INTO convs VALUES (?, 1)", (msg.conv,))
            seq = 1
        else:
            seq = row[0]
        db.execute("INSERT INTO client_ids VALUES (?, ?, ?, ?, ?)",
                   (msg.sender, msg.client_id, msg.conv, seq, msg.ts))
        db.execute("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (msg.conv, seq, msg.ts, msg.sender, msg.device, msg.client_id, msg.body,
                    _media_blob(msg.media), msg.group))
        template = Deliver(q=1, conv=msg.conv, seq=seq, ts=msg.ts, sender=msg.sender,
                           device=msg.device, id=msg.client_id, body=msg.body, group=msg.group,
                           media=msg.media)
        items: list[tuple[str, Item]] = []
        for user in (*msg.recipients, msg.sender):
            q = self._next_q(db, user)
            db.execute("INSERT INTO inbox VALUES (?, ?, ?, ?, NULL)", (user, q, msg.conv, seq))
            items.append((user, dataclasses.replace(template, q=q)))
        return Appended(msg.conv, seq, msg.ts, items=tuple(items))

    async def inbox(self, user: str, device: str, after: int, limit: int) -> Page:
        def op(db: sqlite3.Connection) -> Page:
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

        return await self._do(op)

    def _receipts(self, db: sqlite3.Connection, by: str, status: int, ts: int,
                  newly: list[tuple[str, str, int]]) -> Appended:
        if not newly:
            return Appended()
        next_q = {s: self._next_q(db, s) for s in {s for s, _, _ in newly}}
        out = receipts_for(by, status, ts, newly, dict(next_q))
        used: dict[str, int] = {}
        for sender, r in out:
            db.execute("INSERT INTO inbox VALUES (?, ?, ?, 0, ?)", (sender, r.q, r.conv,
                       msgpack.packb({"ss": list(r.seqs), "by": by, "st": status, "ts": ts})))
            used[sender] = r.q
        for sender, q in used.items():  # _next_q reserved one position already
            if q != next_q[sender]:
                db.execute("UPDATE users SET last_q=? WHERE user=?", (q, sender))
        return Appended(items=tuple(out))

    async def ack(self, user: str, device: str, upto: int, ts: int) -> Appended:
        def op(db: sqlite3.Connection) -> Appended:
            row = db.execute("SELECT d.cursor, u.last_q FROM devices d JOIN users u"
                             " ON u.user = d.user WHERE d.user=? AND d.device=?",
                             (user, device)).fetchone()
            if row is None:
                return Appended()
            old, last_q = row
            new = min(upto, last_q)
            if new <= old:
                return Appended()
            db.execute("UPDATE devices SET cursor=? WHERE user=? AND device=?",
                       (new, user, device))
            rows = db.execute(
                "SELECT i.conv, max(i.seq) FROM inbox i"
                " JOIN messages m2 ON m2.conv = i.conv AND m2.seq = i.seq"
                " WHERE i.user=? AND i.q>? AND i.q<=? AND i.receipt IS NULL AND m2.sender != ?"
                " GROUP BY i.conv", (user, old, new, user)).fetchall()
            newly: list[tuple[str, str, int]] = []
            for conv, top in rows:
                st = db.execute("SELECT delivered_upto FROM member_state WHERE conv=? AND user=?",
                                (conv, user)).fetchone()
                done = st[0] if st else 0
                if top <= done:
                    continue
                db.execute("INSERT INTO member_state(conv, user, delivered_upto) VALUES (?,?,?)"
                           " ON CONFLICT DO UPDATE SET delivered_upto=excluded.delivered_upto",
                           (conv, user, top))
                newly += db.execute(
                    "SELECT m.sender, i.conv, i.seq FROM inbox i JOIN messages m"
                    " ON m.conv = i.conv AND m.seq = i.seq WHERE i.user=? AND i.q>? AND i.q<=?"
                    " AND i.conv=? AND i.seq>? AND i.receipt IS NULL AND m.sender != ?"
                    " ORDER BY i.q", (user, old, new, conv, done, user)).fetchall()
            return self._receipts(db, user, Status.DELIVERED, ts, newly)

        return await self._do(op)

    async def mark_read(self, user: str, conv: str, upto: int, ts: int) -> Appended:
        def op(db: sqlite3.Connection) -> Appended:
            row = db.execute("SELECT last_seq FROM convs WHERE conv=?", (conv,)).fetchone()
            if row is None:
                return Appended()
            upto_ = min(upto, row[0])
            st = db.execute("SELECT delivered_upto, read_upto FROM member_state"
                            " WHERE conv=? AND user=?", (conv, user)).fetchone()
            delivered, read = st if st else (0, 0)
            if upto_ <= read:
                return Appended()
            db.execute("INSERT INTO member_state VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
                       " delivered_upto=excluded.delivered_upto, read_upto=excluded.read_upto",
                       (conv, user, max(delivered, upto_), upto_))
            newly = db.execute("SELECT sender, conv, seq FROM messages WHERE conv=? AND seq>?"
                               " AND seq<=? AND sender != ? ORDER BY seq",
                               (conv, read, upto_, user)).fetchall()
            return self._receipts(db, user, Status.READ, ts, newly)

        return await self._do(op)

    async def history(self, conv: str, before: int | None, limit: int) -> list[HistoryItem]:
        def op(db: sqlite3.Connection) -> list[HistoryItem]:
            rows = db.execute(
                "SELECT seq, ts, sender, device, client_id, body, media FROM messages"
                " WHERE conv=? AND seq<? ORDER BY seq DESC LIMIT ?",
                (conv, before if before is not None else 2**62, limit)).fetchall()
            return [HistoryItem(seq=s, ts=ts, sender=f, device=d, id=i, body=b, media=_media(m))
                    for s, ts, f, d, i, b, m in rows]

        return await self._do(op)
