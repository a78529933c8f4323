"""Prometheus metrics (`chatd serve --metrics-port P`, then GET http://host:P/metrics).

One process: the node serves its own registry, with the client library's process metrics.
Workers (`--workers N`): every worker writes its values to files in <data_dir>/run/metrics
(prometheus-client's multiprocess mode, chosen by PROMETHEUS_MULTIPROC_DIR, which the
supervisor sets for them) and the supervisor serves the sum. Gauges are summed over live
workers ("livesum"), so chatd_connections is the node's total.
"""

from __future__ import annotations

import os
import resource
import time
from typing import Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

LATENCY_BUCKETS: Final = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
PAGE_SIZE: Final = os.sysconf("SC_PAGE_SIZE")

CONNECTIONS = Gauge("chatd_connections", "Authenticated device connections",
                    multiprocess_mode="livesum")
MESSAGES_IN = Counter("chatd_messages_received", "Messages stored (SENT), duplicates excluded")
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


def sample_process() -> None:
    """Refresh this process's CPU and memory gauges (called every few seconds)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    CPU.set(ru.ru_utime + ru.ru_stime)
    with open("/proc/self/statm") as f:
        RSS.set(int(f.read().split()[1]) * PAGE_SIZE)


def observe_delivery(ts_ms: int) -> None:
    DELIVERY_LATENCY.observe(max(0.0, time.time() - ts_ms / 1000))


def serve_metrics(host: str, port: int, multiprocess_dir: str | None = None) -> int:
    """Serve /metrics in a thread; returns the port (port 0 picks one)."""
    registry: Any = None
    if multiprocess_dir is not None:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    server, _ = (start_http_server(port, addr=host, registry=registry) if registry is not None
                 else start_http_server(port, addr=host))
    return int(server.server_address[1])
