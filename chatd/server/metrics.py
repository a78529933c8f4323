"""Prometheus metrics (`chatd serve --metrics-port P`, then GET http://host:P/metrics).

One process: the node serves its own registry, with the client library's process metrics.
Workers (`--workers N`): every worker writes its values to files in <data_dir>/run/metrics
(prometheus-client's multiprocess mode, chosen by PROMETHEUS_MULTIPROC_DIR, which the
supervisor sets for them) and the supervisor serves the sum. Gauges are summed over live
workers ("livesum"), so chatd_connections is the node's total.

The same port answers GET /healthz (200 while the process serves HTTP at all) and GET /readyz:
200 only when every process's last probe (every PROBE_INTERVAL) found the store answering,
and Redis when the node uses it, and that probe is recent; otherwise 503 with the reason.
Load balancers and the systemd unit / container health check use them (deploy/).
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, make_server

import trio
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer

LATENCY_BUCKETS: Final = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")
PROBE_INTERVAL: Final = 2.0  # seconds between readiness probes of the store and Redis
PROBE_TIMEOUT: Final = 5.0  # a store read slower than this counts as not answering
PROBE_STALE: Final = 15.0  # /readyz: a process whose last probe is older is not ready
DISK_INTERVAL: Final = 60.0  # seconds between walks of the data dir (chatd_data_dir_bytes)
log = logging.getLogger("chatd.metrics")

CONNECTIONS = Gauge("chatd_connections", "Authenticated device connections",
                    multiprocess_mode="livesum")
MESSAGES_IN = Counter("chatd_messages_received", "Messages stored (SENT), duplicates excluded")
SEND_FAILURES = Counter("chatd_send_failures", "Sends answered with a retryable INTERNAL error"
                        " (ref, retry_ms) because the store did not take their batch, e.g."
                        " the chat's owner did not answer in time; the connection stays open")
ITEMS_OUT = Counter("chatd_items_delivered", "Messages and receipts queued to devices")
DELIVERY_LATENCY = Histogram(
    "chatd_delivery_latency_seconds",
    "From a message's arrival at the server to its frame queued to a recipient device",
    buckets=LATENCY_BUCKETS)
OUTBOUND_QUEUED = Gauge("chatd_outbound_queued_frames", "Frames waiting to be written to devices",
                        multiprocess_mode="livesum")
STORE_QUEUE = Gauge("chatd_store_queue_ops", "Store operations waiting for the next batch",
                    multiprocess_mode="livesum")
FANOUT_PENDING = Gauge("chatd_fanout_pending", "Group deliveries committed but not yet appended"
                       " to members' inboxes (the fan-out lag)", multiprocess_mode="max")
FANOUT_QUEUE = Gauge("chatd_fanout_queue", "Group fan-out jobs in the Redis stream not yet read"
                     " or not yet acknowledged (several nodes)", multiprocess_mode="max")
STORE_COMMIT = Histogram("chatd_store_commit_seconds", "Duration of one store batch (commit)",
                         buckets=LATENCY_BUCKETS)
CPU = Gauge("chatd_cpu_seconds", "CPU time used by chatd processes (user + system)",
            multiprocess_mode="livesum")
RSS = Gauge("chatd_resident_memory_bytes", "Resident memory of chatd processes",
            multiprocess_mode="livesum")
PEER_ITEMS = Counter("chatd_peer_items", "Inbox items received from other workers or nodes")
SLOW_CONSUMERS = Counter("chatd_slow_consumers", "Connections closed for not reading what they"
                         " were sent (outbound budget exceeded)")
LIMITED = Counter("chatd_rate_limited", "Requests refused by a limit", ["kind"])
REFUSED = Counter("chatd_connections_refused", "Connections refused before authentication",
                  ["reason"])
TASK_FAILURES = Counter("chatd_background_failures", "Failures of the node's background jobs"
                        " (contained, logged, retried)", ["task"])
ANALYTICS_PUBLISHED = Counter("chatd_analytics_events_published", "Analytics events written to"
                              " the Redis Stream (setting analytics)")
ANALYTICS_DROPPED = Counter("chatd_analytics_events_dropped", "Analytics events dropped: buffer"
                            " full, or Redis did not take them (delivery never waits)",
                            ["reason"])
# Series that exist from the start at 0, so that rate() over them (alerts, dashboards) has
# data before the first failure.
for _reason in ("address", "unauthenticated"):
    REFUSED.labels(_reason)
for _job in ("sweep", "presence", "collect", "probe"):
    TASK_FAILURES.labels(_job)
for _reason in ("full", "redis"):
    ANALYTICS_DROPPED.labels(_reason)
# readiness, disk and limits (sampled by probe(); "livemin": the worst live worker counts)
STORE_UP = Gauge("chatd_store_up", "1 if the store answered the last probe (a read)",
                 multiprocess_mode="livemin")
REDIS_UP = Gauge("chatd_redis_up", "1 if Redis answered the last heartbeat, or the node uses"
                 " no Redis", multiprocess_mode="livemin")
PROBED = Gauge("chatd_probe_timestamp_seconds", "Unix time of the last readiness probe",
               multiprocess_mode="livemin")
DATA_DIR_BYTES = Gauge("chatd_data_dir_bytes", "Bytes of the files in the data dir (SQLite"
                       " database, media, ...)", multiprocess_mode="livemax")
FS_SIZE = Gauge("chatd_data_dir_fs_size_bytes", "Size of the filesystem holding the data dir",
                multiprocess_mode="livemax")
FS_FREE = Gauge("chatd_data_dir_fs_free_bytes", "Bytes free (for unprivileged users) on the"
                " filesystem holding the data dir", multiprocess_mode="livemin")
OPEN_FDS = Gauge("chatd_open_fds", "Open file descriptors (connections among them) of the"
                 " chatd process with the most", multiprocess_mode="livemax")
MAX_FDS = Gauge("chatd_max_fds", "Open-file limit (RLIMIT_NOFILE) of one chatd process",
                multiprocess_mode="livemin")
CPUS = Gauge("chatd_cpus", "CPUs this node may use (its affinity mask)",
             multiprocess_mode="livemax")
CQL_REQUESTS = Gauge("chatd_cassandra_requests", "Requests this process sent to Cassandra"
                     " (a batch is one), since it started", multiprocess_mode="livesum")
CQL_PAXOS = Gauge("chatd_cassandra_paxos", "Of chatd_cassandra_requests, the lightweight"
                  " transactions (each a Paxos round)", multiprocess_mode="livesum")
CQL_BY_STATEMENT = Gauge("chatd_cassandra_requests_by_statement", "chatd_cassandra_requests by"
                         " what they ran: a statement, or a batch's statements joined by +",
                         ["statement"], multiprocess_mode="livesum")
OUTBOUND_FULLEST = Gauge("chatd_outbound_fullest_ratio", "The fullest connection's outbound"
                         " queue as a fraction of its budget (max_queue frames or max_outbound"
                         " bytes); at 1 it is disconnected as a slow consumer",
                         multiprocess_mode="livemax")


def sample_process() -> None:
    """Refresh this process's CPU, memory and file gauges (called every few seconds)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    CPU.set(ru.ru_utime + ru.ru_stime)
    with open("/proc/self/statm") as f:
        RSS.set(int(f.read().split()[1]) * PAGE_SIZE)
    OPEN_FDS.set(len(os.listdir("/proc/self/fd")))
    MAX_FDS.set(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    CPUS.set(len(os.sched_getaffinity(0)))


def tree_bytes(path: str) -> int:
    """Bytes of the regular files under path (symlinks not followed; vanished files skipped)."""
    total = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        pass
        except OSError:
            pass
    return total


def sample_disk(data_dir: str) -> None:
    st = os.statvfs(data_dir)
    FS_SIZE.set(st.f_blocks * st.f_frsize)
    FS_FREE.set(st.f_bavail * st.f_frsize)


async def probe(server: Any) -> None:
    """Run beside a node (a chatd.server.app.ChatServer): every PROBE_INTERVAL, whether its
    store answers a read and Redis its heartbeat (what /readyz reports), the data dir's disk
    and the fullest outbound queue. Never returns."""
    walked = -DISK_INTERVAL
    while True:
        up = False
        with trio.move_on_after(PROBE_TIMEOUT):
            try:
                await server.store.has_user("chatd-readiness-probe")
                up = True
            except Exception as exc:  # StoreError, or anything a driver raises
                log.debug("store probe failed: %r", exc)
        STORE_UP.set(up)
        healthy = getattr(server.peers, "healthy", None)  # RedisPeers only
        REDIS_UP.set(healthy is None or healthy.is_set())  # (1 for a node without Redis)
        try:
            if trio.current_time() - walked >= DISK_INTERVAL:
                walked = trio.current_time()
                DATA_DIR_BYTES.set(await trio.to_thread.run_sync(
                    tree_bytes, server.config.data_dir))
            sample_node(server)
        except Exception as exc:
            server.failed("probe", exc)
        else:
            server.recovered("probe")
        PROBED.set(time.time())
        await trio.sleep(PROBE_INTERVAL)


def sample_node(server: Any) -> None:
    cfg = server.config
    sample_disk(cfg.data_dir)
    fullest = 0.0
    for session in server.sessions():
        fullest = max(fullest, session.queued / max(1, cfg.max_queue),
                      getattr(session, "_out_bytes", 0) / max(1, cfg.max_outbound))
    OUTBOUND_FULLEST.set(fullest)
    db = getattr(server.store, "db", None)  # (the Cassandra store's session)
    if db is not None and hasattr(db, "paxos"):
        CQL_REQUESTS.set(db.requests)
        CQL_PAXOS.set(db.paxos)
        for name, n in db.by_statement.items():
            CQL_BY_STATEMENT.labels(name).set(n)


def observe_delivery(ts_ms: int) -> None:
    DELIVERY_LATENCY.observe(max(0.0, time.time() - ts_ms / 1000))


def values(registry: Any, name: str) -> list[float]:
    return [s.value for m in registry.collect() for s in m.samples if s.name == name]


def not_ready(registry: Any, check: Callable[[], str] | None = None,
              now: float | None = None) -> str:
    """Why the node is not ready ("" when it is), from the probe gauges in registry."""
    now = time.time() if now is None else now
    reason = check() if check is not None else ""
    if reason:
        return reason
    probed = values(registry, "chatd_probe_timestamp_seconds")
    if not probed or min(probed) == 0:
        return "starting: the store has not been probed yet"
    if now - min(probed) > PROBE_STALE:
        return f"no readiness probe for {now - min(probed):.0f} s (event loop stuck?)"
    if min(values(registry, "chatd_store_up"), default=0) < 1:
        return "the store does not answer"
    if min(values(registry, "chatd_redis_up"), default=1) < 1:
        return "redis does not answer"
    return ""


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # no line per scrape on stderr
        pass


def metrics_app(registry: Any, check: Callable[[], str] | None = None) -> Any:
    """WSGI: /metrics (Prometheus text), /healthz, /readyz."""
    exposition = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            status, text = "200 OK", "ok"
        elif path == "/readyz":
            reason = not_ready(registry, check)
            status, text = ("503 Service Unavailable", reason) if reason else ("200 OK", "ready")
        else:
            return exposition(environ, start_response)  # type: ignore[no-any-return]
        body = (text + "\n").encode()
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                ("Content-Length", str(len(body)))])
        return [body]

    return app


def serve_metrics(host: str, port: int, multiprocess_dir: str | None = None,
                  check: Callable[[], str] | None = None) -> int:
    """Serve /metrics, /healthz and /readyz in a thread; returns the port (port 0 picks
    one). check() may give a reason the node is not ready (the supervisor: a worker down)."""
    registry: Any = REGISTRY
    if multiprocess_dir is not None:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    server_class = type("MetricsServer", (ThreadingWSGIServer,), {
        "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
    server: Any = make_server(host, port, metrics_app(registry, check), server_class,
                              handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="chatd-metrics", daemon=True).start()
    return int(server.server_address[1])

