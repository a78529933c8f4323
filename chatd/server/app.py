"""The chatd node: listeners, authentication, sessions, clean shutdown."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import logging
import ssl
import sys
from typing import Any

import trio
from wsproto.events import Request

from chatd import __version__, need
from chatd.admin import RevocationWatch, is_void
from chatd.admin.revocations import REVOKED_MESSAGE
from chatd.admin.watch import poll_revocations
from chatd.analytics import events as analytics
from chatd.auth import AuthError, load_or_create_secret, read_token
from chatd.core import convs, now_ms, wire
from chatd.protocol import (
    MAX_FRAME_SIZE,
    NEED_DATA,
    PEER_CLOSED,
    PROTOCOL_VERSION,
    Connection,
    ErrorCode,
    ProtocolError,
    Role,
    decode_body,
)
from chatd.protocol import frames as F
from chatd.protocol.limits import MAX_HELLO_SIZE
from chatd.router import LocalRouter
from chatd.router.peers import Peers, UnixPeers
from chatd.store import FanoutJobs, Store, StoreError, StoreStats, open_store
from chatd.store.base import OwnedNumbering
from chatd.util import redact
from chatd.web.origins import origin_allowed, parse_origins, request_origin

from . import metrics
from .config import Config
from .identity import store_name
from .limits import UserLimits
from .presence import PresenceService
from .session import Flusher, Session
from .transport import HELLO_RECEIVE_SIZE, StreamTransport, WebSocketTransport
from .websocket import Refusal, WebSocketListener
from .websocket import handshake as websocket_handshake

log = logging.getLogger("chatd")
WS_PATH = "/ws"
BACKLOG = 65535  # the kernel caps it at net.core.somaxconn
SERVER = f"chatd/{__version__}"  # in Welcome
KNOWN_USERS_CACHE = 100_000  # user names known to exist, kept before starting over


async def listen(host: str, port: int, reuse_port: bool = False) -> list[trio.SocketListener]:
    """Listening sockets for host:port; with reuse_port, several processes may listen on the
    same port and the kernel spreads the connections between them (SO_REUSEPORT)."""
    out = []
    for family, type_, proto, _, addr in await trio.socket.getaddrinfo(
            host, port, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE):
        sock = trio.socket.socket(family, type_, proto)
        try:
            sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
            if family == trio.socket.AF_INET6:
                sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
            await sock.bind(addr)
            sock.listen(BACKLOG)
        except OSError:
            sock.close()
            raise
        out.append(trio.SocketListener(sock))
        if port == 0:  # one kernel-chosen port: every address would get a different one
            break
    return out


def peer_address(link: trio.abc.Stream | WebSocketTransport) -> str:
    """The client's address ("?" if it cannot be told)."""
    try:
        stream: Any = link.stream if isinstance(link, WebSocketTransport) else link
        while isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        return str(stream.socket.getpeername()[0])
    except (OSError, AttributeError, IndexError):
        return "?"


class ChatServer:
    def __init__(self, config: Config, store: Store, secret: bytes, node_id: str = "n1",
                 peers: Peers | None = None, share: int = 1, worker: bool = False) -> None:
        self.config = config
        self.worker = worker  # one worker of `chatd serve --workers N` (the supervisor has
        # the node's metrics port); a one-process node may have peers too (other nodes)
        self.store = store
        self.secret = secret
        self.node_id = node_id
        self.router = LocalRouter()
        self.peers = peers
        if isinstance(store, StoreStats):
            store.on_batch = metrics.STORE_COMMIT.observe
        self.reuse_port = peers is not None  # workers share the listening ports
        store.on_append = self.router.dispatch if peers is None else self._dispatch
        self.stats: collections.Counter[str] = collections.Counter()
        self.tcp_port = 0
        self.ws_port = 0
        self.metrics_port = -1
        self._known_users: set[str] = set()
        self.limits = UserLimits(config, share)  # share: this process's part of the node
        self._unauthenticated = 0  # connections before Welcome
        self._signing_in: dict[str, int] = {}  # the same, per client address
        self._failing: set[str] = set()  # background jobs failing now (logged once each)
        self._stop = trio.Event()
        self.stopped = trio.Event()
        self._session_count = 0
        self.presence = PresenceService(self)
        self.flusher = Flusher()  # writes what sessions queued, once a tick each
        self.revocations = RevocationWatch()  # live tokens' issue times (chatd admin revoke)
        self._tasks: trio.Nursery | None = None
        self.media: Any = None  # chatd.media.service.MediaService while http_port >= 0
        self.http_port = -1
        self.media_url = ""
        self.forwarder: Any = None  # chatd.router.forward.Forwarder: owners on other nodes
        self.finishing: set[trio.CancelScope] = set()  # (handlers.sends)

    def stop(self) -> None:
        self._stop.set()

    def _signed_in(self, address: str) -> None:
        """A connection is past Welcome (or gone before it)."""
        self._unauthenticated -= 1
        left = self._signing_in[address] - 1
        if left:
            self._signing_in[address] = left
        else:
            del self._signing_in[address]

    def spawn(self, name: str, fn: Any, *args: Any) -> None:
        """Run a short background job of the node's (presence announcements). Its failure
        is contained: logged and counted, never the end of the node. Once the node is
        stopping (its task nursery closed), none is started: a peer's call then goes
        unanswered, and its caller gives up and retries, as with a node gone."""
        if self._tasks is not None:
            try:
                self._tasks.start_soon(self._contained, name, fn, *args)
            except RuntimeError:  # ("Nursery is closed to new arrivals")
                log.debug("stopping: %s not started", name)

    async def _contained(self, name: str, fn: Any, *args: Any) -> None:
        try:
            await fn(*args)
        except Exception as exc:
            self.failed(name, exc)
        else:
            self.recovered(name)

    def failed(self, job: str, exc: BaseException) -> None:
        """A background job failed: count it; log it once until it works again (periodic
        jobs run again at their next turn)."""
        metrics.TASK_FAILURES.labels(job).inc()
        self.stats[f"failed_{job}"] += 1
        if job in self._failing:
            return
        self._failing.add(job)
        if isinstance(exc, StoreError):
            log.warning("%s failed (store unavailable), will retry: %s", job, exc)
        else:
            log.error("%s failed, will retry", job, exc_info=exc)

    def recovered(self, job: str) -> None:
        if job in self._failing:
            self._failing.discard(job)
            log.info("%s works again", job)

    def _dispatch(self, items: tuple[tuple[str, Any], ...]) -> None:
        """Committed inbox items: to this process's sessions, and to the peers' (each item
        encoded once for both)."""
        assert self.peers is not None
        encoded = [(user, item, wire.body(item)) for user, item in items]
        for user, item, body in encoded:
            self.router.offer(user, item, body)
        self.peers.outbox.items((user, body) for user, _, body in encoded)
        self.peers.flush_soon()

    def _replace(self, user: str, device: str, at: int | None = None) -> None:
        """The device connected again (here, or on a peer at `at` ms): end its older
        connections here. A peer's news can come after the device has connected here again
        (its client gave up on that peer and came back): a connection made after `at` stays
        (docs/RELIABILITY.md, finding 6 (e))."""
        for old in self.router.targets(user):
            if old.device == device:
                assert isinstance(old, Session)
                if at is None or old.connected_ms <= at:
                    old.end(F.Goodbye(code=0, reason="replaced by a newer connection"))

    # ---- what peers tell this process (chatd.router.peers.PeerHandler) ---------------------

    def peer_items(self, items: list[tuple[str, bytes]]) -> None:
        router = self.router
        for user, body in items:
            if user in router:
                router.offer(user, wire.item(user, decode_body(body)), body)  # type: ignore[arg-type]
        self.stats["peer_items"] += len(items)
        metrics.PEER_ITEMS.inc(len(items))

    def peer_poke(self, users: list[str]) -> None:
        for user in users:
            for t in self.router.targets(user):
                t.poke()

    def peer_presence(self, origin: str, user: str, online: bool, active: int) -> None:
        self.presence.remote(origin, user, online, active)

    def peer_kick(self, user: str, device: str, at: int) -> None:
        self._replace(user, device, at)

    def peers_rejoined(self) -> None:
        self.presence.retell()

    def peer_restarted(self, origin: str) -> None:
        self.presence.forget(origin)

    def peer_privacy(self, user: str, hidden: bool) -> None:
        self.presence.privacy_changed(user, hidden)

    def peer_call(self, origin: str, rid: int, what: str, args: Any, until: int) -> None:
        if self.forwarder is not None:  # (else unanswered: the caller gives up and retries)
            self.spawn("forwarded", self.forwarder.serve, origin, rid, what, args, until)

    def peer_answer(self, rid: int, ok: bool, answer: Any) -> None:
        if self.forwarder is not None:
            self.forwarder.answered(rid, ok, answer)

    def sessions(self) -> list[Session]:
        """Every connected device's session on this node."""
        return list(self.router)  # type: ignore[arg-type]

    async def user_exists(self, user: str) -> bool:
        if user in self._known_users:
            return True
        if await self.store.has_user(user):
            if len(self._known_users) >= KNOWN_USERS_CACHE:
                self._known_users.clear()
            self._known_users.add(user)
            return True
        return False

    # ---- running ---------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.config.tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        return ctx

    async def run(self, *, task_status: trio.TaskStatus[ChatServer] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        cfg = self.config
        ssl_ctx = self._ssl_context()
        async with trio.open_nursery() as sessions:
            await sessions.start(self.flusher.run)  # (until the last session has ended)
            async with trio.open_nursery() as listeners:
                tcp = await listen(cfg.host, cfg.tcp_port, self.reuse_port)
                self.tcp_port = tcp[0].socket.getsockname()[1]
                wrapped: Any = tcp if ssl_ctx is None else [
                    trio.SSLListener(t, ssl_ctx, https_compatible=False) for t in tcp]
                serve: Any = self.serve_connection  # (a stream, or a WebSocketTransport)
                await listeners.start(functools.partial(
                    trio.serve_listeners, serve, wrapped,
                    handler_nursery=sessions))
                if cfg.ws_port >= 0:
                    ws = await listen(cfg.host, cfg.ws_port, self.reuse_port)
                    self.ws_port = ws[0].socket.getsockname()[1]
                    wrapped = [WebSocketListener(w if ssl_ctx is None else trio.SSLListener(
                        w, ssl_ctx, https_compatible=True)) for w in ws]
                    await listeners.start(functools.partial(
                        trio.serve_listeners, serve, wrapped, handler_nursery=sessions))
                if cfg.http_port >= 0:
                    await self._start_http(listeners, ssl_ctx)
                if cfg.metrics_port >= 0 and not self.worker:  # (workers: the supervisor)
                    self.metrics_port = metrics.serve_metrics(cfg.host, cfg.metrics_port)
                log.info("chatd listening: tcp %s:%d ws %s:%s%s (store %s)", cfg.host,
                         self.tcp_port, cfg.host, self.ws_port, WS_PATH,
                         redact(cfg.store_url).split("?")[0])
                self._tasks = listeners
                listeners.start_soon(self.sweep)
                listeners.start_soon(self.collect_garbage)
                listeners.start_soon(poll_revocations, self)
                if cfg.analytics:  # (opt-in: user actions to a Redis Stream)
                    need("redis")
                    from chatd.analytics.publisher import publish
                    listeners.start_soon(publish, cfg, self.failed, self.recovered)
                if cfg.metrics_port >= 0:  # readiness (/readyz) and disk gauges
                    listeners.start_soon(metrics.probe, self)
                task_status.started(self)
                await self._stop.wait()
                listeners.cancel_scope.cancel()
            log.info("shutting down: %d connections", len(self.router))
            for s in self.sessions():
                s.close_with(ErrorCode.SHUTTING_DOWN, "server shutting down",
                             grace=cfg.shutdown_grace)
            with trio.move_on_after(cfg.shutdown_grace + 1):
                while len(self.router):
                    await trio.sleep(0.05)
            for scope in list(self.finishing):
                scope.cancel()
            sessions.cancel_scope.cancel()
        self.stopped.set()

    async def _start_http(self, listeners: trio.Nursery, ssl_ctx: ssl.SSLContext | None
                          ) -> None:
        """The HTTP listener for image uploads and downloads (chatd.media)."""
        need("media")
        from chatd.media.blobs import open_blob_store
        from chatd.media.http import MediaApp, http_socket, serve_http
        from chatd.media.service import MediaService
        from chatd.web import with_web

        cfg = self.config
        self.media = MediaService(open_blob_store(cfg.media, cfg.data_dir), self.secret,
                                  f"{cfg.data_dir}/media-tmp", max_upload=cfg.max_upload,
                                  link_ttl=cfg.media_link_ttl, members=self.conv_members,
                                  conv_mode=self.store.conv_mode, devices=self.store.devices)
        sock = http_socket(cfg.host, cfg.http_port, self.reuse_port)
        self.http_port = sock.getsockname()[1]
        self.media_url = cfg.media_url.rstrip("/") or (
            f"{'https' if ssl_ctx else 'http'}://{cfg.host}:{self.http_port}")
        await listeners.start(functools.partial(
            serve_http, with_web(MediaApp(self.media, self.secret, self.takes_part,
                                          self.store.conv_mode, self.conv_members,
                                          self.store.revoked_at),
                                 self.ws_port, ssl_ctx is not None), sock, cfg.tls_cert,
            cfg.tls_key))

    async def takes_part(self, user: str, conv: str) -> bool:
        """Whether user is a member of conv now (media downloads)."""
        return user in await self.conv_members(conv)

    async def conv_members(self, conv: str) -> tuple[str, ...]:
        group = convs.group_of(conv)
        if group is not None:
            info = await self.store.group(group)
            return tuple(info.members) if info is not None else ()
        return convs.pair(conv) or ()

    async def sweep(self) -> None:
        """One task for every connection's idle and slow-frame timeouts (a timer per
        connection would cost each idle connection a cancel scope), and for presence."""
        cfg = self.config
        # Timeouts are enforced within an eighth of their length (at most 5 s late), a busy
        # connection pinged within a quarter of the heartbeat (Session.check_timeouts), presence
        # within a second: every connection is looked at in a timeout pass, so those are few.
        every = max(0.05, min(5.0, cfg.idle_timeout / 8, cfg.frame_timeout / 8,
                              cfg.heartbeat / 4))
        interval = max(0.05, min(1.0, every, cfg.presence_threshold / 8))
        checked = sampled = 0.0
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            try:
                if now - checked >= every - interval / 2:
                    checked = now
                    queued = 0
                    for session in self.sessions():
                        session.check_timeouts(now)
                        queued += session.queued
                    metrics.OUTBOUND_QUEUED.set(queued)
                if now - sampled >= 2:
                    sampled = now
                    self.limits.prune(now)
                    if isinstance(self.store, StoreStats):
                        metrics.STORE_QUEUE.set(self.store.queue_depth)
                    if isinstance(self.store, FanoutJobs):
                        metrics.FANOUT_PENDING.set(self.store.fanout_pending)
                    metrics.FANOUT_QUEUE.set(getattr(self.peers, "fanout_lag", 0))
                    metrics.sample_process()
            except Exception as exc:
                self.failed("sweep", exc)
            try:
                await self.presence.check()  # (writes last seen: fails while the store is down)
            except Exception as exc:
                self.failed("presence", exc)
            else:
                self.recovered("presence")

    async def collect_garbage(self) -> None:
        """Delete, now and then, what the chat modes say to forget (see Store.collect)."""
        while True:
            await trio.sleep(self.config.gc_interval)
            try:
                gone = await self.store.collect(now_ms(), int(self.config.temporary_max_age
                                                              * 1000))
            except Exception as exc:
                self.failed("collect", exc)
                continue
            if self.media is not None:
                try:
                    gone["media_blobs"] = await self.media.collect(
                        now_ms(), self.store.conv_mode, int(self.config.temporary_max_age
                                                            * 1000))
                except Exception as exc:
                    self.failed("collect_media", exc)
                    continue
            self.recovered("collect")
            if any(gone.values()):
                log.info("collected %s", gone)
                self.stats.update({f"collected_{k}": v for k, v in gone.items()})

    # ---- connections -----------------------------------------------------------------------

    async def handle_ws(self, transport: WebSocketTransport) -> bool:
        """A WebSocket connection's opening handshake within auth_timeout (a wrong path, a
        refused Origin or a malformed request get an HTTP error): whether it is open; if
        not, it is closed."""
        with trio.move_on_after(self.config.auth_timeout):
            if await websocket_handshake(transport, self._ws_refusal):
                return True
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(transport.stream)
        return False

    def _ws_refusal(self, request: Request) -> Refusal | None:
        if request.target.split("?")[0] != WS_PATH:
            return 404, b"chatd speaks WebSocket on /ws\n"
        if not origin_allowed(request_origin(request.extra_headers), request.host,
                              parse_origins(self.config.ws_origins), self.http_port,
                              bool(self.config.tls_cert)):
            return 403, (b"this Origin may not use chatd's WebSocket endpoint"
                         b" (setting ws_origins)\n")
        return None

    async def _refuse(self, transport: StreamTransport | WebSocketTransport, conn: Connection,
                      code: ErrorCode, message: str) -> None:
        self.stats[f"refused_{code.name.lower()}"] += 1
        with trio.move_on_after(1):
            try:
                await transport.send(conn.send(F.Error(code=code, message=message)))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _read_hello(self, transport: StreamTransport | WebSocketTransport,
                          conn: Connection) -> F.Hello | None:
        while True:
            ev = conn.next_event()
            if ev is PEER_CLOSED:
                return None
            if ev is NEED_DATA:
                conn.receive_data(await transport.receive(HELLO_RECEIVE_SIZE))
                continue
            assert isinstance(ev, F.Hello)  # the connection refuses anything else first
            return ev

    async def serve_connection(self, link: trio.abc.Stream | WebSocketTransport) -> None:
        """One connection from accept to close: handshake, then the session. (One function,
        not several: every idle connection holds this coroutine frame.)"""
        cfg = self.config
        if isinstance(link, WebSocketTransport) and not await self.handle_ws(link):
            return  # (the handshake in this task: no frame of its own while connected)
        transport: StreamTransport | WebSocketTransport = (
            link if isinstance(link, WebSocketTransport) else StreamTransport(link))
        conn = Connection(Role.SERVER, transport.framing, MAX_FRAME_SIZE)
        address = peer_address(link)
        crowded = self._signing_in.get(address, 0) >= cfg.max_unauthenticated_per_address
        if crowded or self._unauthenticated >= cfg.max_unauthenticated:
            metrics.REFUSED.labels("address" if crowded else "unauthenticated").inc()
            await self._refuse(transport, conn, ErrorCode.RATE_LIMITED,
                               "too many connections are signing in: retry in a moment")
            with trio.CancelScope(shield=True):
                await transport.aclose()
            return
        self._unauthenticated += 1
        self._signing_in[address] = self._signing_in.get(address, 0) + 1
        signing_in = True  # until Welcome: counted in _unauthenticated and _signing_in
        transport.limit(MAX_HELLO_SIZE)
        try:
            try:
                with trio.fail_after(cfg.auth_timeout):
                    hello = await self._read_hello(transport, conn)
            except trio.TooSlowError:
                await self._refuse(transport, conn, ErrorCode.TIMEOUT,
                                   f"no hello within {cfg.auth_timeout:g}s")
                return
            except ProtocolError as exc:
                await self._refuse(transport, conn, exc.code, exc.message)
                return
            if hello is None:
                return
            try:
                user, token_device, issued = read_token(self.secret, hello.token)
            except AuthError as exc:
                await self._refuse(transport, conn, ErrorCode.UNAUTHENTICATED, str(exc))
                return
            device = sys.intern(hello.device)  # devices are mostly named alike
            background = hello.background
            del hello  # this frame lives as long as the connection: keep no token in it
            if token_device is not None and token_device != device:
                if device != "default":
                    await self._refuse(transport, conn, ErrorCode.UNAUTHENTICATED,
                                       f"token is for device {token_device!r}")
                    return
                device = token_device
            if self._stop.is_set():
                await self._refuse(transport, conn, ErrorCode.SHUTTING_DOWN,
                                   "server shutting down")
                return
            if is_void(issued, await self.store.revoked_at(user, device)):
                await self._refuse(transport, conn, ErrorCode.UNAUTHENTICATED, REVOKED_MESSAGE)
                return
            cursor = await self.store.attach_device(user, device)
            self._session_count += 1
            session = Session(self, transport, conn, user, device, cursor, background)
            session.send_frame(F.Welcome(
                version=PROTOCOL_VERSION, user=user, device=device,
                session=f"{self.node_id}-{self._session_count}", server_time=now_ms(),
                heartbeat_ms=int(cfg.heartbeat * 1000), max_frame=MAX_FRAME_SIZE,
                cursor=cursor, media_url=self.media_url, server=SERVER))
            transport.limit(MAX_FRAME_SIZE)
            self._signed_in(address)
            signing_in = False
            address = ""  # (this frame lives as long as the connection: keep it small)
            self._replace(user, device)
            if self.peers is not None:  # the device's older connection may be on a peer
                self.peers.outbox.kick(user, device, session.connected_ms)
                self.peers.attach(user, device)
                self.peers.flush_soon()
            self.router.attach(session)
            self.revocations.connected(session, issued)
            analytics.connected(user, device)
            self.presence.activity(session)  # opening the app is activity (unless background)
            self.stats["connections"] += 1
            metrics.CONNECTIONS.inc()
            try:
                await session.run()
            finally:
                self.router.detach(session)
                self.revocations.gone(session)
                metrics.CONNECTIONS.dec()
                if self.peers is not None and not any(
                        t.device == device for t in self.router.targets(user)):
                    self.peers.detach(user, device)
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    try:
                        await self.presence.disconnected(session)
                    except StoreError as exc:  # (the sweep writes the last seen later)
                        self.failed("presence", exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except StoreError as exc:  # while the store is down: say so; the client retries
            log.warning("connection refused: store unavailable: %s", exc)
            await self._refuse(transport, conn, ErrorCode.INTERNAL, f"store unavailable: {exc}")
        except Exception:
            log.exception("connection failed")
            await self._refuse(transport, conn, ErrorCode.INTERNAL, "internal error")
        finally:
            if signing_in:
                self._signed_in(address)
            with trio.CancelScope(shield=True):
                await transport.aclose()


@dataclasses.dataclass(frozen=True)
class Worker:
    """This process is worker `index` of `count` of one node (see chatd.server.workers)."""

    index: int
    count: int
    run_dir: str


async def serve(config: Config, *, worker: Worker | None = None,
                task_status: trio.TaskStatus[ChatServer] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a node (or one worker of it) until stop() is called on it (or the task is
    cancelled)."""
    config.validate()
    secret = load_or_create_secret(config.data_dir)
    node_id = config.node_id or "n1"
    if worker is not None:
        node_id = f"{config.node_id}-w{worker.index}" if config.node_id else \
            f"w{worker.index}"
    # (a name kept across restarts: a shared store's leases taken back at once after a crash)
    with store_name(config.data_dir, node_id) if config.store_url.startswith(
            "cassandra:") else contextlib.nullcontext() as name:
        async with open_store(config.store_url, name) as store:
            peers: Peers | None = None
            forwarder = None
            if config.redis:  # several nodes (each worker of a node is one of them)
                need("redis")
                from chatd.router.redis import RedisPeers

                peers = RedisPeers(config.redis, node_id, store)
            elif worker is not None:
                peers = UnixPeers(worker.run_dir, worker.index, worker.count)
            if peers is not None and isinstance(store, OwnedNumbering) and store.owners:
                from chatd.router.forward import Forwarder  # (each worker is a node)

                forwarder = store.remote = Forwarder(peers, store)
            server = ChatServer(config, store, secret, node_id, peers,
                                share=worker.count if worker is not None else 1,
                                worker=worker is not None)
            server.forwarder = forwarder
            async with trio.open_nursery() as nursery:
                if peers is not None:
                    await nursery.start(functools.partial(peers.run, server))
                await nursery.start(server.run)
                task_status.started(server)
                await server.stopped.wait()
                nursery.cancel_scope.cancel()
