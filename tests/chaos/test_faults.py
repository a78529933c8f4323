"""One short seeded chaos run per fault kind, against real chatd processes (and real Redis and
Cassandra), judged by the checker. The long runs are in docs/RELIABILITY.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.cassandra import CassandraNode
from bench.chaos import Options, run_async
from bench.chaos_check import violations
from tests.server.redis_servers import RedisServer

# Violations found by these runs that are open bugs outside the checker (docs/RELIABILITY.md,
# "Open findings"): a run whose only violations are of these kinds is an expected failure.
KNOWN: dict[str, set[str]] = {
    # two nodes through Redis: nothing known (finding 1, fixed: a node runs a group's older
    # fan-out jobs before the one it is handed)
    "two-nodes": set(),
    # Cassandra (docs/RELIABILITY.md, findings 2-5; lost, duplicated and gaps fixed): a send
    # cut short by the restart after taking its seq keeps its place while its device keeps
    # trying (a minute at most), so a longer outage can still reorder it (reordered); its
    # receipt is made now (receipts: none in the last four long runs, kept here until the
    # suite has run clean for a while)
    "cassandra": {"reordered", "receipts"},
}


def short(**kw: Any) -> Options:
    base: dict[str, Any] = {"seed": 13, "duration": 10.0, "rate": 30.0, "settle": 45.0,
                            "offline": 2, "verbose": False}
    return Options(**{**base, **kw})


def judge(result: dict[str, Any], known: frozenset[str] | set[str] = frozenset(),
          min_acknowledged: int = 100) -> None:
    bad = {k: n for k, n in result["violations"].items() if n}
    summary = json.dumps({"violations": bad, "examples": result.get("examples"),
                          "stats": result["stats"], "run": result["run"]}, indent=1)
    assert result["stats"]["acknowledged"] >= min_acknowledged, summary
    if bad and set(bad) <= known:
        pytest.xfail(f"known open finding(s) {sorted(bad)}: {summary[:2000]}")
    assert result["ok"], summary


def injected(result: dict[str, Any], kind: str) -> int:
    return int(result["stats"]["faults"].get(kind, 0))


async def test_whole_node_sigkill(tmp_path: Path) -> None:
    result, _ = await run_async(short(faults={"kill-node": 2}), tmp_path)
    assert injected(result, "kill-node") == 2
    judge(result)


async def test_single_worker_sigkill(tmp_path: Path) -> None:
    result, _ = await run_async(short(workers=2, faults={"kill-worker": 3}), tmp_path)
    assert injected(result, "kill-worker") == 3
    judge(result)


async def test_connection_drops(tmp_path: Path) -> None:
    result, _ = await run_async(short(faults={"drop": 6}), tmp_path)
    assert injected(result, "drop") == 6
    judge(result)


async def test_silent_connections(tmp_path: Path) -> None:
    result, records = await run_async(short(faults={"silent": 3}), tmp_path)
    assert injected(result, "silent") == 3
    timeouts = [r for r in records if r["t"] == "conn" and r["what"] == "disconnected"
                and "TooSlowError" in r["why"]]
    assert timeouts  # the clients noticed through their missed heartbeats
    judge(result)


async def test_app_restarts(tmp_path: Path) -> None:
    result, _ = await run_async(short(faults={"app-restart": 4}), tmp_path)
    assert injected(result, "app-restart") == 4
    judge(result)


async def test_redis_restarted_empty(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    try:
        result, _ = await run_async(short(nodes=2, faults={"redis-restart": 1}), tmp_path,
                                    redis=redis)
    finally:
        redis.stop()
    assert injected(result, "redis-restart") == 1
    judge(result, KNOWN["two-nodes"])


async def test_node_killed_while_its_users_fail_over(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    try:
        result, _ = await run_async(short(nodes=2, faults={"failover": 1}), tmp_path,
                                    redis=redis)
    finally:
        redis.stop()
    assert injected(result, "failover") == 1
    judge(result, KNOWN["two-nodes"])


async def test_cassandra_restarted(cassandra: CassandraNode, tmp_path: Path) -> None:
    cassandra.truncate()
    # (a slower heartbeat: a node waiting on a slow store stops reading its connections, and
    # a short idle timeout then drops them; the restart is the fault tested here)
    result, _ = await run_async(short(store="cassandra", duration=8.0, rate=20.0, settle=60.0,
                                      heartbeat=5.0, idle_timeout=30.0,
                                      faults={"cassandra-restart": 1}), tmp_path,
                                cassandra=cassandra)
    assert injected(result, "cassandra-restart") == 1
    judge(result, KNOWN["cassandra"], min_acknowledged=50)


async def test_two_cassandra_nodes_numbering_by_owner_killed(cassandra: CassandraNode,
                                                             tmp_path: Path) -> None:
    """Conversation owners (numbering=owner) on two nodes, each SIGKILLed once and started
    again: the chats it owned go on, in seq order, with nothing lost (docs/RELIABILITY.md,
    finding 6: 150 reordered and 2 duplicated in 195 before, and a 30 s stall per kill)."""
    cassandra.truncate()
    redis = RedisServer(tmp_path / "redis")
    try:
        result, records = await run_async(short(store="cassandra", numbering="owner", nodes=2,
                                          seed=1, duration=15.0, settle=60.0,
                                          faults={"kill-node": 2}), tmp_path, redis=redis,
                                    cassandra=cassandra)
    finally:
        redis.stop()
    assert injected(result, "kill-node") == 2
    # one-to-one chats keep their order (150 of 195 reordered before: finding 6 (a)); a
    # group's message reaching its members after a later one is an expected failure for
    # now (finding 6: the sweep's cause is fixed, one seen with two nodes disagreeing about
    # a group's owner is not understood yet)
    direct = [v for v in violations(records)["reordered"] if v["conv"].startswith("d:")]
    assert not direct, direct[:5]
    judge(result, {"reordered"}, min_acknowledged=100)


async def test_self_test_on_a_recorded_history(tmp_path: Path) -> None:
    """The corruptions are caught in a real run's history too (not only in a made-up one)."""
    from bench.chaos_check import self_test

    _, records = await run_async(short(duration=5.0, faults={"drop": 2}), tmp_path)
    report = self_test(records)
    assert report["ok"], report
