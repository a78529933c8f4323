"""Several chatd nodes: a session registry in Redis and cross-node delivery through Redis.

Redis says *where to try*, never what was said: the store (shared by every node) stays the
source of truth. Keys (every key is one slot, so this works the same on Redis Cluster):

  chatd:node:{id}     node liveness: the node's boot id, with a TTL refreshed every few seconds
  chatd:nodes         hash node -> boot id of every node that ever joined (pruned by liveness)
  chatd:u:{user}      the registry: hash device -> "node boot", TTL refreshed every 30 s
  chatd:nu:{id}       the users node id registered (to clean its stale entries when it restarts)
  chatd:in:{id}       the node's inbound stream: peer datagrams (chatd.router.peers) to apply
  chatd:fanout        group fan-out jobs (conversation, seq), consumer group "chatd": each job
                      is run by one node; its lag and pending count are the fan-out backlog

Group fan-out (numbering=paxos; with numbering=owner the group's owner runs its jobs itself,
chatd.store.cassandra): the store commits a group message together with its fan-out job (that
is SENT); the node then adds the job to the chatd:fanout stream, and whichever node reads it
first (XREADGROUP) runs it through the shared store and acknowledges it (XACK). A job taken by
a node that died is claimed by another after FANOUT_CLAIM_MS. The job itself stays in the
store until it is done, so a job that never reached Redis (down at the time) or that Redis
lost (restarted empty) is added again from the store when the node (re)joins: Redis
distributes the work, the store remembers it.

A node hands the inbox items it committed to the nodes the registry names for each user, with
one pipeline per flush (one XADD per destination node), never a round trip per message. A
route cache (ROUTE_TTL) saves registry reads. When a device connects, its node tells every
live node ("k"): they end an older connection of that device and drop their cached route for
the user. A route that is still wrong sends a message to a node that no longer holds the
device (ignored there). Nothing is black-holed: the device read the store when it connected,
and its new node has it read the store once more ROUTE_TTL + 1 s after registering it, when
no node can still hold the old route. When Redis is unreachable the node keeps serving its own
devices and retries; when Redis comes back (restarted, maybe empty) the node registers its
devices again and has every local device re-read the store, so whatever crossed Redis while it
was away is delivered. A node none of whose requests failed learns that Redis lost its keys
from its next heartbeat (SET ... GET of its own liveness key finds nothing) and does the same.
What a node could not hand on while Redis was away for it (maybe for it alone), it hands on as
pokes to its users' nodes when Redis is back, and they have those users re-read the store. The
stream reader reads on from the last entry it read (stream ids grow with Redis's clock).
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any, Final

import coredis
import coredis.exceptions
import trio
from coredis.typing import Node

from chatd.store.base import FanoutJobs, OwnedNumbering

from .peers import Outbox, PeerHandler, handle

log = logging.getLogger("chatd.redis")
NODE_TTL: Final = 10  # seconds a node counts as alive without a heartbeat
REGISTRY_TTL: Final = 90  # seconds a registry entry lives unrefreshed (every 30 s)
HEARTBEAT: Final = 3.0
ROUTE_TTL: Final = 2.0  # seconds a looked-up route is trusted
# a registry entry (KEYS[1] field ARGV[1]) deleted only if it still has value ARGV[2]
DELETE_IF_OURS: Final = ("if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then"
                         " return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0")
STREAM_MAXLEN: Final = 100_000
FANOUT_STREAM: Final = "chatd:fanout"
FANOUT_GROUP: Final = "chatd"
FANOUT_CLAIM_MS: Final = 30_000  # a job unacknowledged this long is taken over
MAX_HELD: Final = 100_000  # kicks and privacy changes kept while Redis is away
REDIS_ERRORS: Final = (coredis.exceptions.RedisError, OSError, trio.BrokenResourceError,
                       trio.ClosedResourceError, trio.TooSlowError)


def connect_redis(url: str) -> Any:
    """`redis://host:port` for one Redis; `redis+cluster://host:port[,host:port...]` (seed
    nodes) for Redis Cluster."""
    if url.startswith("redis+cluster://"):
        seeds = []
        for part in url.removeprefix("redis+cluster://").split(","):
            host, _, port = part.rstrip("/").rpartition(":")
            seeds.append(Node(host=host, port=int(port)))
        return coredis.RedisCluster(startup_nodes=seeds, stream_timeout=5, connect_timeout=2)
    if url.startswith("redis://"):
        return coredis.Redis.from_url(url, stream_timeout=5, connect_timeout=2)
    raise ValueError(f"{url!r}: expected redis://host:port or redis+cluster://host:port,...")


class RedisPeers:
    def __init__(self, url: str, node_id: str, store: object = None) -> None:
        self.url = url
        self.node_id = node_id
        self.boot = secrets.token_hex(4)
        self.outbox = Outbox(node_id)
        self.redis: Any = None
        self._wake = trio.Event()
        self._routes: dict[str, tuple[float, set[str]]] = {}
        self._live: dict[str, str] = {}  # node -> boot id, refreshed every heartbeat
        self._ttl_at = 0.0  # when the registry TTLs were last refreshed
        self._handler: Any = None
        self._nursery: Any = None
        self._last_id = "$"  # the last entry of this node's stream that was read
        self._route_epoch = 0  # bumped when a device connects anywhere (routes may change)
        self._attached: dict[tuple[str, str], bool] = {}  # (user, device) -> registered yet
        self._detached: list[tuple[str, str]] = []
        self.healthy = trio.Event()
        # the fan-out jobs this router shares out through the stream; none when the store
        # numbers by owners: a group's owner runs its jobs (and the jobs of a dead owner's
        # groups: the store's sweep), with no hop through Redis
        self.store: FanoutJobs | None = store if isinstance(store, FanoutJobs) and not (
            isinstance(store, OwnedNumbering) and store.owners) else None
        self._fanouts: list[tuple[str, int]] = []  # jobs to add to the stream
        self._missed: set[str] = set()  # users whose items Redis did not take: poked later
        self._held: dict[tuple[str, ...], list[Any]] = {}  # kicks, privacy: sent when back
        self.fanout_lag = 0  # jobs in the stream not yet read or not yet acknowledged

    # ---- what the node calls ----------------------------------------------------------------

    def flush_soon(self) -> None:
        self._wake.set()

    def attach(self, user: str, device: str) -> None:
        self._attached[(user, device)] = False
        self._routes.pop(user, None)
        self._wake.set()

    def detach(self, user: str, device: str) -> None:
        self._attached.pop((user, device), None)
        self._detached.append((user, device))
        self._wake.set()

    def _unhealthy(self) -> None:
        """Redis is away. A new Event only if the current one was set: tasks waiting on an
        unset one (the reader, the fan-out worker) must be woken by the set() that ends this
        outage, not left waiting on an Event nobody will set (every retry used to replace
        it, and a node stopped reading its stream for good after Redis came back)."""
        if self.healthy.is_set():
            self.healthy = trio.Event()

    # ---- running ----------------------------------------------------------------------------

    async def run(self, handler: PeerHandler, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.redis = connect_redis(self.url)
        if self.store is not None:
            self.store.fanout_mode = "external"
            self.store.on_fanout = self._enqueue_fanout
        self._handler = handler
        try:
            async with self.redis, trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._keep_alive, handler)
                with trio.move_on_after(10):  # start even if Redis is down: it may come back
                    await self.healthy.wait()
                nursery.start_soon(self._receive, handler)
                nursery.start_soon(self._send_loop)
                if self.store is not None:
                    nursery.start_soon(self._fanout_worker)
                task_status.started()
        finally:  # leaving: peers stop counting on this node (its shards move) at once
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                try:  # (a new client: the cancel closed the other one's connections)
                    async with connect_redis(self.url) as r:
                        await r.delete([f"chatd:node:{self.node_id}"])
                except Exception:  # (then it expires after NODE_TTL; coredis may raise a
                    pass               # group of its errors here)

    async def _keep_alive(self, handler: PeerHandler) -> None:
        """Heartbeat: node liveness, registry TTLs, the live-node list. After Redis was away,
        register every device again and have them all re-read the store."""
        first = True
        while True:
            try:
                with trio.fail_after(5):
                    if first or not self.healthy.is_set():
                        for key in self._attached:  # (Redis may have come back empty)
                            self._attached[key] = False
                        self._routes.clear()
                        await self._join()
                        await self._register()
                        if not first:
                            log.warning("redis is back: re-registering, devices resync")
                            handler.peer_poke(sorted({u for u, _ in self._attached}))
                            for user in sorted(self._missed):  # their nodes: read the store
                                self.outbox.poke(user)
                            self._missed.clear()
                        # peers forget what this node said about presence before (a restart,
                        # or news lost while Redis was away); then what it holds, and who is
                        # online here (no await from here to healthy: all go out together)
                        self.outbox.hello()
                        for m in self._held.values():
                            self.outbox.raw(m)
                        self._held.clear()
                        if not first:
                            handler.peers_rejoined()
                        first = False
                        self.healthy.set()
                        self._wake.set()  # (what _join and the pokes above queued: send it)
                    if not await self._heartbeat():
                        log.warning("redis lost this node's keys (restarted empty?):"
                                    " re-registering, devices resync")
                        self._unhealthy()
                        continue  # join again now, not a heartbeat later
            except REDIS_ERRORS as exc:
                if self.healthy.is_set():
                    log.warning("redis unreachable (%r): serving local devices, retrying", exc)
                self._unhealthy()
            await trio.sleep(HEARTBEAT if self.healthy.is_set() else 0.5)

    async def _join(self) -> None:
        """Announce this node, and clean the entries an earlier run of it left behind."""
        r = self.redis
        if self._last_id == "$":  # read what peers send from here on, announced or not yet
            info = await r.xrevrange(f"chatd:in:{self.node_id}", count=1)
            self._last_id = _s(info[0].identifier) if info else "0-0"
        stale = await r.smembers(f"chatd:nu:{self.node_id}")
        if stale:
            async with r.pipeline(transaction=False) as p:
                for user in stale:
                    p.hgetall(f"chatd:u:{_s(user)}")
            for user, entries in zip(stale, p.results or (), strict=False):
                mine = [d for d, v in (entries or {}).items()
                        if _s(v).split(" ")[0] == self.node_id
                        and (_s(user), _s(d)) not in self._attached]
                if mine:
                    await r.hdel(f"chatd:u:{_s(user)}", mine)
            await r.delete([f"chatd:nu:{self.node_id}"])
        if self.store is not None:
            try:
                await r.xgroup_create(FANOUT_STREAM, FANOUT_GROUP, "$", mkstream=True)
            except coredis.exceptions.StreamDuplicateConsumerGroupError:
                pass  # made by another node (or an earlier run)
            # jobs the store still owes: maybe never added (Redis was down) or lost by Redis
            self._fanouts.extend(await self.store.pending_fanouts())
        await r.set(f"chatd:node:{self.node_id}", self.boot, ex=NODE_TTL)
        await r.hset("chatd:nodes", {self.node_id: self.boot})

    async def _heartbeat(self) -> bool:
        """False if this node's liveness key was gone: Redis lost what the node wrote (it
        restarted empty, or the node was paused past NODE_TTL), so the registry has none of
        its devices. A node that had no request fail while Redis was away learns it here."""
        r = self.redis
        was = await r.set(f"chatd:node:{self.node_id}", self.boot, ex=NODE_TTL, get=True)
        if was is None or _s(was) != self.boot:
            return False
        await self._refresh_live()
        if time.monotonic() - self._ttl_at < REGISTRY_TTL / 3:
            return True
        self._ttl_at = time.monotonic()
        # every registered device's TTL, a third of the way through it (a pipeline per 5,000)
        users = sorted({u for u, _ in self._attached})
        for i in range(0, len(users), 5000):
            async with r.pipeline(transaction=False) as p:
                for u in users[i : i + 5000]:
                    p.expire(f"chatd:u:{u}", REGISTRY_TTL)
        await r.expire(f"chatd:nu:{self.node_id}", REGISTRY_TTL * 2)
        return True

    async def _refresh_live(self) -> None:
        """Which nodes are alive (a node's liveness key expires NODE_TTL after its last
        heartbeat)."""
        r = self.redis
        nodes = await r.hgetall("chatd:nodes")
        names = [_s(n) for n in nodes]
        async with r.pipeline(transaction=False) as p:
            for n in names:
                p.get(f"chatd:node:{n}")
        alive = p.results or []
        self._live = {n: _s(b) for n, b in zip(names, alive, strict=False) if b is not None}
        gone = [n for n in names if n not in self._live]
        if gone:
            await r.hdel("chatd:nodes", gone)

    async def _register(self) -> None:
        """Registry writes for devices that connected or left since the last flush."""
        new = [k for k, done in self._attached.items() if not done]
        gone, self._detached = self._detached, []
        if not new and not gone:
            return
        value = f"{self.node_id} {self.boot}"
        async with self.redis.pipeline(transaction=False) as p:
            for user, device in new:
                p.hset(f"chatd:u:{user}", {device: value})
                p.expire(f"chatd:u:{user}", REGISTRY_TTL)
            if new:
                p.sadd(f"chatd:nu:{self.node_id}", [u for u, _ in new])
            for user, device in gone:
                if (user, device) not in self._attached:
                    # (only while it names this node: the device may have connected to
                    # another one since, whose entry this is now)
                    p.eval(DELETE_IF_OURS, keys=[f"chatd:u:{user}"], args=[device, value])
        for k in new:
            if k in self._attached:
                self._attached[k] = True
        if new:
            # Until every node has dropped its cached route (the "k" broadcast, at most
            # ROUTE_TTL), a message may still go to the device's old node: read the store
            # once more after that, so a device that moved misses nothing.
            self._nursery.start_soon(self._resync_later, sorted({u for u, _ in new}))

    async def _resync_later(self, users: list[str]) -> None:
        await trio.sleep(ROUTE_TTL + 1.0)
        self._handler.peer_poke(users)

    async def _routes_for(self, users: set[str]) -> dict[str, set[str]]:
        """user -> live nodes other than this one that hold one of the user's devices."""
        now = time.monotonic()
        out: dict[str, set[str]] = {}
        missing = []
        for u in users:
            cached = self._routes.get(u)
            if cached is not None and cached[0] > now:
                out[u] = cached[1]
            else:
                missing.append(u)
        if missing:
            epoch = self._route_epoch  # a device that moves meanwhile makes these stale
            async with self.redis.pipeline(transaction=False) as p:
                for u in missing:
                    p.hgetall(f"chatd:u:{u}")
            found = {u: [_s(v).partition(" ")[::2] for v in (entries or {}).values()]
                     for u, entries in zip(missing, p.results or (), strict=False)}
            unknown = {n for entries in found.values() for n, b in entries
                       if n != self.node_id and self._live.get(n) != b}
            if unknown:  # a node that joined since the last heartbeat: is it alive?
                names = sorted(unknown)
                async with self.redis.pipeline(transaction=False) as p:
                    for n in names:
                        p.get(f"chatd:node:{n}")
                for n, b in zip(names, p.results or (), strict=False):
                    if b is not None:
                        self._live[n] = _s(b)
            for u, entries in found.items():
                # a dead node's (or an earlier boot's) entry is skipped
                nodes = {n for n, b in entries if n != self.node_id and self._live.get(n) == b}
                if epoch == self._route_epoch:
                    self._routes[u] = (now + ROUTE_TTL, nodes)
                out[u] = nodes
            if len(self._routes) > 100_000:
                self._routes = {k: v for k, v in self._routes.items() if v[0] > now}
        return out

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await trio.lowlevel.checkpoint()  # gather what this tick adds
            if not self.healthy.is_set():  # Redis is away: this node's devices resync when
                items, pokes, other = self.outbox.split()  # it is back, and the users of
                self._missed.update(u for u, _ in items)  # what it could not pass on are
                self._missed.update(pokes)  # poked; kicks and privacy changes wait
                self._hold(other)
                self.outbox.direct()  # (calls and answers: they time out)
                continue
            try:
                with trio.fail_after(5):
                    await self._register()
                    await self._flush()
            except REDIS_ERRORS as exc:
                log.warning("redis send failed (%r): will resync when it is back", exc)
                self._unhealthy()

    def _enqueue_fanout(self, conv: str, seq: int) -> None:
        self._fanouts.append((conv, seq))
        self._wake.set()

    async def _flush(self) -> None:
        if self._fanouts:
            jobs, self._fanouts = self._fanouts, []
            try:
                async with self.redis.pipeline(transaction=False) as p:
                    for conv, seq in jobs:
                        p.xadd(FANOUT_STREAM, {"c": conv, "s": str(seq)},
                               trim_strategy=coredis.PureToken.MAXLEN,
                               threshold=STREAM_MAXLEN,
                               trim_operator=coredis.PureToken.APPROXIMATELY)
            except BaseException:
                self._fanouts[:0] = jobs  # (also in the store: added again on rejoin)
                raise
        if not self.outbox:
            return
        items, pokes, other = self.outbox.split()
        direct = self.outbox.direct()  # (calls and answers: lost with Redis, they time out)
        try:
            await self._pass_on(items, pokes, other, direct)
        except BaseException:  # (Redis failed: poke these users' nodes when it is back)
            self._missed.update(u for u, _ in items)
            self._missed.update(pokes)
            self._hold(other)
            raise

    def _hold(self, other: list[list[Any]]) -> None:
        """News for every peer that Redis did not take, kept (the latest per user, or per
        device for kicks) until it is back: a privacy change must hold on every node, and an
        older connection of a device that connected here must end. Presence is told afresh
        when Redis is back (peers_rejoined), hellos are sent again."""
        for m in other:
            if m[0] == "v" and len(self._held) < MAX_HELD:
                self._held[("v", m[2])] = m
            elif m[0] == "k" and len(self._held) < MAX_HELD:
                self._held[("k", m[2], m[3])] = m

    async def _pass_on(self, items: list[tuple[str, bytes]], pokes: list[str],
                       other: list[list[Any]], direct: dict[str, list[list[Any]]]) -> None:
        if other:  # broadcasts must reach a node that joined a moment ago: ask Redis now
            await self._refresh_live()
        routes = await self._routes_for({u for u, _ in items} | set(pokes))
        per_node: dict[str, Outbox] = {}

        def box(node: str) -> Outbox:
            if node not in per_node:
                per_node[node] = Outbox(self.node_id)
            return per_node[node]

        for user, body in items:
            for node in routes.get(user, ()):
                box(node).items([(user, body)])
        if items:
            log.debug("routes %s", {u: sorted(routes.get(u, ())) for u, _ in items})
        for user in pokes:
            for node in routes.get(user, ()):
                box(node).poke(user)
        for m in other:  # presence, hellos and "device connected here": to every live node
            for node in set(self._live) - {self.node_id}:
                box(node).raw(m)
        for node, messages in direct.items():
            for m in messages:
                box(node).raw(m)
        if not per_node:
            return
        async with self.redis.pipeline(transaction=False) as p:
            for node, ob in per_node.items():
                for data in ob.take():
                    p.xadd(f"chatd:in:{node}", {"b": data},
                           trim_strategy=coredis.PureToken.MAXLEN, threshold=STREAM_MAXLEN,
                           trim_operator=coredis.PureToken.APPROXIMATELY)

    async def _fanout_worker(self) -> None:
        """Take fan-out jobs from the stream (one node runs each) and run them."""
        await self.healthy.wait()
        claimed_at = 0.0
        while True:
            try:
                if time.monotonic() - claimed_at > FANOUT_CLAIM_MS / 2000:
                    claimed_at = time.monotonic()
                    taken = await self.redis.xautoclaim(
                        FANOUT_STREAM, FANOUT_GROUP, self.node_id, FANOUT_CLAIM_MS, "0-0",
                        count=100)
                    await self._run_jobs(taken[1] if taken else ())
                    await self._sample_lag()
                got = await self.redis.xreadgroup(FANOUT_GROUP, self.node_id,
                                                  streams={FANOUT_STREAM: ">"}, count=20,
                                                  block=1000)
                for entries in (got or {}).values():
                    await self._run_jobs(entries)
            except REDIS_ERRORS as exc:
                log.debug("fan-out stream: %r", exc)
                await trio.sleep(0.5)
                await self.healthy.wait()

    async def _run_jobs(self, entries: Any) -> None:
        from chatd.store import StoreError

        assert self.store is not None
        for entry in entries or ():
            fields = {_s(k): _s(v) for k, v in entry.field_values.items()}
            try:
                for attempt in range(3):  # a timeout under load: try again soon
                    try:
                        await self.store.fanout(fields["c"], int(fields["s"]))
                        break
                    except StoreError:
                        if attempt == 2:
                            raise
                        await trio.sleep(0.5 * (attempt + 1))
            except StoreError as exc:  # not acknowledged: taken again after the claim time
                log.warning("fan-out of %s failed, will retry: %s", fields, exc)
                continue
            except (KeyError, ValueError):
                log.warning("dropped a bad fan-out job: %r", fields)
            await self.redis.xack(FANOUT_STREAM, FANOUT_GROUP, [entry.identifier])

    async def _sample_lag(self) -> None:
        for g in await self.redis.xinfo_groups(FANOUT_STREAM):
            g = {_s(k): v for k, v in g.items()}
            if _s(g.get("name", "")) == FANOUT_GROUP:
                self.fanout_lag = int(g.get("lag") or 0) + int(g.get("pending") or 0)

    def live_nodes(self) -> list[str]:
        """The nodes alive at the last heartbeat (this one included, even before its first)."""
        return sorted({*self._live, self.node_id})

    def route_changed(self, user: str) -> None:
        """A device of user connected somewhere: look the user up again (and do not cache a
        lookup that was under way)."""
        self._routes.pop(user, None)
        self._route_epoch += 1

    async def _receive(self, handler: PeerHandler) -> None:
        key = f"chatd:in:{self.node_id}"
        handler = _Joined(handler, self)
        while True:
            try:
                if self._last_id == "$":  # Redis was away: what arrives from now on
                    await self.healthy.wait()
                    if self._last_id == "$":
                        info = await self.redis.xrevrange(key, count=1)
                        self._last_id = _s(info[0].identifier) if info else "0-0"
                got = await self.redis.xread({key: self._last_id}, count=500, block=1000)
            except REDIS_ERRORS as exc:
                # Read on from the last entry read, once Redis answers again: stream ids grow
                # with Redis's clock, so what peers add after a restart (even an empty one)
                # comes after it ("$" would skip what they added before this read)
                log.debug("redis read failed: %r", exc)
                await trio.sleep(0.5)
                continue
            for entries in (got or {}).values():
                for entry in entries:
                    self._last_id = _s(entry.identifier)
                    data = entry.field_values.get(b"b") or entry.field_values.get("b")
                    if data is not None:
                        handle(bytes(data) if not isinstance(data, str) else data.encode(),
                               handler)


class _Joined:
    """The node's handler, plus: a device that connected on another node invalidates the
    cached route of its user."""

    def __init__(self, handler: PeerHandler, peers: RedisPeers) -> None:
        self._h = handler
        self._peers = peers
        self.peer_items = handler.peer_items
        self.peer_poke = handler.peer_poke
        self.peer_presence = handler.peer_presence
        self.peer_restarted = handler.peer_restarted
        self.peer_privacy = handler.peer_privacy
        self.peers_rejoined = handler.peers_rejoined
        self.peer_call = handler.peer_call
        self.peer_answer = handler.peer_answer

    def peer_kick(self, user: str, device: str, at: int) -> None:
        log.debug("kick %s/%s", user, device)
        self._peers.route_changed(user)
        self._h.peer_kick(user, device, at)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)

