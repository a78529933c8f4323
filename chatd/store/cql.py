"""cassandra-driver under trio: the URL, the connection, awaiting a request, the schema.

The driver runs its own I/O thread. A request is sent with `execute_async`; its callbacks run
on that thread and hand each page to the trio task through `run_sync_soon` (thread-safe), so
the event loop never blocks on Cassandra. Blocking driver calls (connecting, preparing,
shutting down) run in `trio.to_thread`. Every driver error becomes a StoreError: the server
treats it as "the store cannot do this now", and the client sends again later.

Schema changes are made by `chatd migrate --store cassandra://...`, not by `chatd serve`:
Cassandra schema changes are cluster-wide and not transactional, and several nodes starting at
once would race to make them. `serve` checks the schema version and refuses to start (with the
command to run) if the keyspace is missing, older or newer.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import urllib.parse
from collections.abc import Sequence
from typing import Any, Final, cast

import outcome
import trio

from chatd.util import redact

from .base import StoreError

LEVELS: Final = ("ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM",
                 "LOCAL_ONE")
SERIAL_LEVELS: Final = ("SERIAL", "LOCAL_SERIAL")


class BadCassandraURL(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class CassandraURL:
    """cassandra://[user:password@]host[:port][,host[:port]...]/keyspace[?option=value&...]

    Options: replication=N (SimpleStrategy, N copies) or replication=dc1:3,dc2:3
    (NetworkTopologyStrategy; used by `chatd migrate` when it creates the keyspace),
    consistency=LOCAL_QUORUM (reads and writes), serial=LOCAL_SERIAL (lightweight
    transactions), dc=NAME (the local data centre for routing), timeout=SECONDS (per request),
    numbering=paxos|owner (how seqs are taken: docs/CASSANDRA.md), lease=SECONDS (a shard
    lease's time to live with numbering=owner; over twice timeout + 2 s).
    """

    hosts: tuple[tuple[str, int], ...]
    keyspace: str
    replication: dict[str, int] = dataclasses.field(default_factory=lambda: {"": 1})
    consistency: str = "LOCAL_QUORUM"
    serial: str = "LOCAL_SERIAL"
    dc: str | None = None
    timeout: float = 5.0
    numbering: str = "paxos"  # "owner": conversation owners under shard leases (CASSANDRA.md)
    lease: float = 30.0  # seconds a shard lease lives unrenewed (numbering=owner)
    user: str | None = None  # password authentication (PasswordAuthenticator)
    password: str | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> CassandraURL:
        u = urllib.parse.urlsplit(url)
        url = redact(url)  # (for the messages below)
        if u.scheme != "cassandra" or not u.netloc:
            raise BadCassandraURL(f"{url!r}: expected cassandra://host[:port][,host...]/keyspace")
        hosts = []
        userinfo, _, netloc = u.netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        for part in netloc.split(","):
            host, _, port = part.rpartition(":") if ":" in part else (part, "", "9042")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise BadCassandraURL(f"{url!r}: bad host {part!r}")
            hosts.append((host, int(port)))
        keyspace = u.path.strip("/")
        if not keyspace.replace("_", "a").isalnum() or len(keyspace) > 48:
            raise BadCassandraURL(f"{url!r}: the keyspace must be 1-48 letters, digits or _")
        opts: dict[str, Any] = {}
        for key, values in urllib.parse.parse_qs(u.query, keep_blank_values=True).items():
            value = values[-1]
            if key == "replication":
                opts[key] = _replication(url, value)
            elif key == "consistency":
                if value.upper() not in LEVELS:
                    raise BadCassandraURL(f"{url!r}: consistency is one of {', '.join(LEVELS)}")
                opts[key] = value.upper()
            elif key == "serial":
                if value.upper() not in SERIAL_LEVELS:
                    raise BadCassandraURL(f"{url!r}: serial is SERIAL or LOCAL_SERIAL")
                opts[key] = value.upper()
            elif key == "dc":
                opts[key] = value
            elif key == "timeout":
                try:
                    opts[key] = float(value)
                except ValueError:
                    opts[key] = -1.0
                if not 0 < opts[key] <= 600:
                    raise BadCassandraURL(f"{url!r}: timeout is seconds, 0 < timeout <= 600")
            elif key == "numbering":
                if value not in ("paxos", "owner"):
                    raise BadCassandraURL(f"{url!r}: numbering is paxos or owner")
                opts[key] = value
            elif key == "lease":
                try:
                    opts[key] = float(value)
                except ValueError:
                    opts[key] = -1.0
                if not 0 < opts[key] <= 3600:
                    raise BadCassandraURL(f"{url!r}: lease is seconds, 0 < lease <= 3600")
            else:
                raise BadCassandraURL(f"{url!r}: unknown option {key!r} (replication,"
                                      " consistency, serial, dc, timeout, numbering, lease)")
        if opts.get("numbering") == "owner" and opts.get("lease", 30.0) <= 2 * lease_margin(
                opts.get("timeout", 5.0)):
            raise BadCassandraURL(f"{url!r}: lease must be over twice timeout + 2 s (the"
                                  " margin an owner keeps before its lease ends)")
        if user:
            opts["user"] = urllib.parse.unquote(user)
            opts["password"] = urllib.parse.unquote(password)
        return cls(tuple(hosts), keyspace.lower(), **opts)

    def replication_cql(self) -> str:
        if "" in self.replication:
            return ("{'class': 'SimpleStrategy', 'replication_factor': "
                    f"{self.replication['']}}}")
        dcs = ", ".join(f"'{dc}': {n}" for dc, n in self.replication.items())
        return "{'class': 'NetworkTopologyStrategy', " + dcs + "}"


def lease_margin(timeout: float) -> float:
    """How long before its shard lease ends an owner stops numbering: a request's time in
    flight (the request timeout), a second for pauses and clock rate drift, and a second
    because Cassandra ends a TTL on whole seconds (up to one early)."""
    return timeout + 2.0


def _replication(url: str, value: str) -> dict[str, int]:
    try:
        if value.isdigit():
            out = {"": int(value)}
        else:
            out = {dc: int(n) for dc, _, n in (p.partition(":") for p in value.split(","))}
    except ValueError:
        out = {}
    if not out or not all(0 < n <= 10 for n in out.values()) or any(
            not dc.replace("_", "a").replace("-", "a").isalnum() for dc in out if dc):
        raise BadCassandraURL(f"{url!r}: replication is N or dc1:N,dc2:M")
    return out


class StoreTimeout(StoreError):
    """The request timed out: it may or may not have been applied."""


def store_error(exc: BaseException) -> StoreError:
    """A driver error as the project's own: the message says what failed and that it is
    Cassandra, without the driver's internals."""
    from cassandra import OperationTimedOut, Timeout

    text = str(exc).split("\n")[0][:300] or type(exc).__name__
    kind = StoreTimeout if isinstance(exc, (Timeout, OperationTimedOut)) else StoreError
    return kind(f"cassandra: {type(exc).__name__}: {text}")


class _Waiter:
    """One request's next page (ok, rows or error), awaited by one trio task: lighter than a
    memory channel per request."""

    __slots__ = ("task", "result")

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.result: tuple[bool, Any] | None = None

    def put(self, result: tuple[bool, Any]) -> None:
        if self.task is not None:
            task, self.task = self.task, None
            trio.lowlevel.reschedule(task, outcome.Value(result))
        else:  # (not awaited yet, or its task was cancelled: then nobody takes it)
            self.result = result

    async def get(self) -> tuple[bool, Any]:
        if self.result is not None:
            result, self.result = self.result, None
            await trio.lowlevel.checkpoint()
            return result

        def abort(_: Any) -> trio.lowlevel.Abort:
            self.task = None
            return trio.lowlevel.Abort.SUCCEEDED

        self.task = trio.lowlevel.current_task()
        result = await trio.lowlevel.wait_task_rescheduled(abort)
        return cast(tuple[bool, Any], result)


class Session:
    """One driver Session for one trio run: prepared statements and awaited requests."""

    def __init__(self, url: CassandraURL) -> None:
        self.url = url
        self._cluster: Any = None
        self._session: Any = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._prepared: dict[str, Any] = {}
        # per prepared statement: its id, its columns' types, the protocol (for batch())
        self._binders: dict[str, tuple[bytes, list[Any], int]] = {}
        self._conditional: set[str] = set()  # prepared statements that are Paxos rounds
        self.requests = 0  # requests sent (a batch is one), for metrics and benchmarks
        self.paxos = 0  # of which lightweight transactions (conditional statements, batches)
        # requests by what they ran: a statement's name, or a batch's names joined by "+"
        self.by_statement: collections.Counter[str] = collections.Counter()
        # responses handed from the driver's thread (_deliver), taken on the trio thread
        self._arrived: collections.deque[tuple[_Waiter, bool, Any]] = collections.deque()
        self._woken = False  # a _drain is scheduled and has not started

    async def connect(self, keyspace: str | None) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._arrived.clear()
        self._woken = False
        driver_log = logging.getLogger("cassandra")
        if driver_log.level == logging.NOTSET:  # its tracebacks say what our StoreError says
            driver_log.setLevel(logging.CRITICAL)
        try:
            await trio.to_thread.run_sync(self._connect, keyspace)
        except Exception as exc:
            await self.close()
            raise store_error(exc) from exc

    async def use(self, keyspace: str) -> None:
        try:
            await trio.to_thread.run_sync(self._session.set_keyspace, keyspace)
        except Exception as exc:
            raise store_error(exc) from exc

    def _connect(self, keyspace: str | None) -> None:
        from cassandra import ConsistencyLevel
        from cassandra.auth import PlainTextAuthProvider
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import (
            ConstantReconnectionPolicy,
            DCAwareRoundRobinPolicy,
            TokenAwarePolicy,
        )
        from cassandra.query import dict_factory

        u = self.url
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=u.dc)),
            consistency_level=getattr(ConsistencyLevel, u.consistency),
            serial_consistency_level=getattr(ConsistencyLevel, u.serial),
            request_timeout=u.timeout, row_factory=dict_factory)
        self._cluster = Cluster(
            contact_points=list(u.hosts), execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            protocol_version=5, connect_timeout=u.timeout,
            # come back within a second of the node returning, whatever the outage length
            reconnection_policy=ConstantReconnectionPolicy(1.0, None),
            auth_provider=PlainTextAuthProvider(u.user, u.password or "") if u.user else None)
        self._session = self._cluster.connect(keyspace)

    def set_page_size(self, rows: int) -> None:
        """Rows per page of a result (the driver's default: 5,000)."""
        self._session.default_fetch_size = rows

    async def close(self) -> None:
        if self._cluster is not None:
            cluster, self._cluster = self._cluster, None
            await trio.to_thread.run_sync(cluster.shutdown)

    async def prepare(self, statements: dict[str, str]) -> None:
        def run() -> None:
            for name, cql in statements.items():
                ps = self._session.prepare(cql)
                self._binders[name] = (ps.query_id, [c.type for c in ps.column_metadata],
                                       ps.protocol_version)
                self._prepared[name] = ps  # (last: a name here can be batched)
                if " IF " in cql:
                    self._conditional.add(name)

        try:
            await trio.to_thread.run_sync(run)
        except Exception as exc:
            raise store_error(exc) from exc

    def batch(self, items: Sequence[tuple[str, Sequence[Any]]]) -> Any:
        """One batch of prepared statements (a conditional batch if they have IF: those must
        all be in one partition). The first statement is bound by the driver (the batch's
        routing key is its); the others' values are serialized here, as the driver would,
        without a BoundStatement each (a third of the cost of a row)."""
        from cassandra.query import BatchStatement, BatchType

        b = BatchStatement(batch_type=BatchType.UNLOGGED)
        rows = b._statements_and_parameters
        for i, (name, params) in enumerate(items):
            query_id, types, version = self._binders[name]
            if i == 0 or len(params) != len(types):
                b.add(self._prepared[name], params)
            else:
                rows.append((True, query_id, [
                    None if v is None else t.serialize(v, version)
                    for t, v in zip(types, params, strict=True)]))
        if len(rows) > 0xFFFF:
            raise ValueError("a batch of over 65,535 statements")
        b.chatd_paxos = any(name in self._conditional for name, _ in items)
        b.chatd_names = "+".join(sorted({name for name, _ in items}))
        return b

    async def run(self, stmt: Any, params: Sequence[Any] | None = None
                  ) -> list[dict[str, Any]]:
        """Execute and await the rows (every page of them). stmt is the name of a prepared
        statement, CQL text, or a batch."""
        self.requests += 1
        if isinstance(stmt, str):
            self.paxos += stmt in self._conditional
            self.by_statement[stmt if " " not in stmt else "cql"] += 1
            stmt = stmt if " " in stmt else self._prepared[stmt]
        else:
            self.paxos += bool(getattr(stmt, "chatd_paxos", False))
            self.by_statement[getattr(stmt, "chatd_names", "other")] += 1
        assert self._token is not None and self._session is not None, "not connected"
        waiter = _Waiter()
        try:
            future = self._session.execute_async(stmt, params)
        except Exception as exc:
            raise store_error(exc) from exc
        future.add_callbacks(self._deliver, self._deliver, callback_args=(waiter, True),
                             errback_args=(waiter, False))
        out: list[dict[str, Any]] = []
        while True:
            ok, value = await waiter.get()
            if not ok:
                raise store_error(value)
            if value:
                out.extend(value)
            if not future.has_more_pages:
                return out
            future.start_fetching_next_page()

    def _deliver(self, value: Any, waiter: _Waiter, ok: bool) -> None:
        """A page or an error, on the driver's thread: queued, and the trio thread woken
        once for all that arrive before it drains the queue (not once per response)."""
        self._arrived.append((waiter, ok, value))
        if not self._woken:
            self._woken = True
            try:
                assert self._token is not None
                self._token.run_sync_soon(self._drain)
            except trio.RunFinishedError:  # (nobody is waiting any more)
                self._woken = False

    def _drain(self) -> None:
        self._woken = False  # (before the queue is read: what comes after wakes it again)
        while self._arrived:
            waiter, ok, value = self._arrived.popleft()
            waiter.put((ok, value))

    async def applied(self, stmt: Any, params: Sequence[Any] | None = None
                      ) -> tuple[bool, list[dict[str, Any]]]:
        """A lightweight transaction: (applied, the current rows when it was not)."""
        rows = await self.run(stmt, params)
        return bool(rows and rows[0].get("[applied]")), rows


# ---- schema -----------------------------------------------------------------------------

# MIGRATIONS[v] takes the keyspace from version v to v + 1. See docs/CASSANDRA.md for why
# each table looks the way it does.
MIGRATIONS: Final[dict[int, list[str]]] = {
    0: [
        "CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value int)",
        "CREATE TABLE IF NOT EXISTS users (user text PRIMARY KEY, last_seen bigint,"
        " hide_last_seen boolean)",
        "CREATE TABLE IF NOT EXISTS devices (user text, device text, cursor bigint,"
        " PRIMARY KEY (user, device))",
        # Each user's inbox: one partition, items by position q; last_q is the counter, moved
        # with the items it numbers in one conditional batch.
        "CREATE TABLE IF NOT EXISTS inbox (user text, q bigint, conv text, seq bigint,"
        " sender text, receipt blob, last_q bigint static, PRIMARY KEY (user, q))",
        # Each conversation's sequence counter and the client ids sent in it (idempotency),
        # claimed together in one conditional batch.
        "CREATE TABLE IF NOT EXISTS sends (conv text, sender text, client_id text,"
        " seq bigint, ts bigint, at bigint, done boolean, last_seq bigint static,"
        " PRIMARY KEY (conv, sender, client_id))",
        "CREATE TABLE IF NOT EXISTS messages (conv text, bucket bigint, seq bigint, ts bigint,"
        " sender text, device text, client_id text, body blob, media blob, grp text,"
        " event blob, holders set<text>, PRIMARY KEY ((conv, bucket), seq))"
        " WITH CLUSTERING ORDER BY (seq DESC) AND gc_grace_seconds = 10800",
        "CREATE TABLE IF NOT EXISTS convs (conv text PRIMARY KEY, mode int, ttl int,"
        " all_delivered bigint, all_read bigint, expired_upto bigint)",
        "CREATE TABLE IF NOT EXISTS disappearing (k int, conv text, PRIMARY KEY (k, conv))",
        "CREATE TABLE IF NOT EXISTS marks (conv text, user text, delivered bigint,"
        " read bigint, PRIMARY KEY (conv, user))",
        "CREATE TABLE IF NOT EXISTS groups (grp text PRIMARY KEY, name text,"
        " created_ts bigint)",
        "CREATE TABLE IF NOT EXISTS group_members (grp text, user text, admin boolean,"
        " joined_seq bigint, pos int, PRIMARY KEY (grp, user))",
        "CREATE TABLE IF NOT EXISTS user_groups (user text, grp text,"
        " PRIMARY KEY (user, grp))",
        # a job per partition (its transactions contend with nobody else's), and a list of
        # the unfinished ones
        "CREATE TABLE IF NOT EXISTS fanout (conv text, seq bigint, recipients list<text>,"
        " done int, owner text, lease bigint, PRIMARY KEY ((conv, seq)))"
        " WITH gc_grace_seconds = 3600",
        "CREATE TABLE IF NOT EXISTS fanout_jobs (shard int, conv text, seq bigint,"
        " PRIMARY KEY (shard, conv, seq)) WITH gc_grace_seconds = 3600",
        "CREATE TABLE IF NOT EXISTS temp_queue (day bigint, ts bigint, conv text, seq bigint,"
        " PRIMARY KEY (day, ts, conv, seq)) WITH gc_grace_seconds = 10800 AND compaction ="
        " {'class': 'TimeWindowCompactionStrategy', 'compaction_window_unit': 'DAYS',"
        " 'compaction_window_size': 1}",
        "CREATE TABLE IF NOT EXISTS temp_days (k int, day bigint, PRIMARY KEY (k, day))",
    ],
    # chatd admin revoke: per (user, device; '' = every device) the time (ms) up to which its
    # tokens are void, read by Hello; and the same by day, read by the nodes' poll.
    1: [
        "CREATE TABLE IF NOT EXISTS revocations (user text, device text, at bigint,"
        " PRIMARY KEY (user, device))",
        "CREATE TABLE IF NOT EXISTS revocation_feed (day bigint, at bigint, user text,"
        " device text, PRIMARY KEY (day, at, user, device)) WITH gc_grace_seconds = 10800",
    ],
    # numbering=owner: each shard's lease (owner lives for the lease's TTL, epoch for ever)
    2: [
        "CREATE TABLE IF NOT EXISTS shard_leases (shard int PRIMARY KEY, owner text,"
        " epoch bigint)",
        # (a marker row written by an owner says where its item is: see _write_inbox_owned)
        "ALTER TABLE IF EXISTS inbox ADD IF NOT EXISTS item_q bigint",
    ],
}
SCHEMA_VERSION: Final = len(MIGRATIONS)
TABLES: Final = ("meta", "users", "devices", "inbox", "sends", "messages", "convs",
                 "disappearing", "marks", "groups", "group_members", "user_groups", "fanout",
                 "fanout_jobs",
                 "temp_queue", "temp_days", "revocations", "revocation_feed", "shard_leases")
# Statements of CassandraStore's admin section (prepared on first use).
ADMIN_STATEMENTS: Final = {
    # the highest time wins on every replica, whichever write came last
    "revoke": "INSERT INTO revocations (user, device, at) VALUES (?, ?, ?) USING TIMESTAMP ?",
    "revoked": "SELECT device, at FROM revocations WHERE user = ? AND device IN ?",
    "all_revoked": "SELECT user, device, at FROM revocations",
    "feed_put": "INSERT INTO revocation_feed (day, at, user, device) VALUES (?, ?, ?, ?)"
                " USING TTL 2678400",
    "feed": "SELECT user, device, at FROM revocation_feed WHERE day = ? AND at >= ?",
    "del_devices": "DELETE FROM devices WHERE user = ?",
    "del_inbox": "DELETE FROM inbox WHERE user = ?",
    "del_user": "DELETE FROM users WHERE user = ?",
    "del_user_groups": "DELETE FROM user_groups WHERE user = ?",
    "del_mark": "DELETE FROM marks WHERE conv = ? AND user = ?",
}


async def schema_version(session: Session) -> int:
    try:
        rows = await session.run(f"SELECT value FROM {session.url.keyspace}.meta"
                                 " WHERE key = 'schema_version'")
    except StoreError as exc:
        if "unconfigured table" in str(exc) or "does not exist" in str(exc) or (
                "Keyspace" in str(exc)):
            return 0
        raise
    return int(rows[0]["value"]) if rows else 0


async def migrate(url: str) -> tuple[int, int]:
    """Create the keyspace if needed and bring it to SCHEMA_VERSION: (before, after)."""
    u = CassandraURL.parse(url)
    s = Session(u)
    await s.connect(None)
    try:
        await s.run(f"CREATE KEYSPACE IF NOT EXISTS {u.keyspace} WITH replication ="
                    f" {u.replication_cql()}")
        before = version = await schema_version(s)
        if version > SCHEMA_VERSION:
            raise StoreError(f"keyspace {u.keyspace} has schema {version}, newer than this"
                             f" chatd ({SCHEMA_VERSION}): upgrade chatd")
        while version < SCHEMA_VERSION:
            for cql in MIGRATIONS[version]:
                await s.run(cql.replace("EXISTS ", f"EXISTS {u.keyspace}.", 1))
            version += 1
            await s.run(f"INSERT INTO {u.keyspace}.meta (key, value)"
                        f" VALUES ('schema_version', {version})")
        return before, version
    finally:
        await s.close()
