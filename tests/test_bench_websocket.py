"""The benchmarks' WebSocket modes (issue 17) run end to end, on a small scale."""

from __future__ import annotations

from bench import connections, memory


def test_memory_bench_measures_tcp_and_websocket_in_one_run() -> None:
    result = memory.run(30, ("tcp", "ws"))
    assert result["chatd"]["connections"] == result["chatd_ws"]["connections"] == 30
    assert result["chatd_ws"]["kib_per_connection"] > 0 and result["ratio_vs_bare_ws"] > 0


def test_connections_bench_holds_websocket_connections() -> None:
    """Held longer than the node's idle timeout (3 x the heartbeat): the node still holds
    every one, so each was pinged (a binary message) every heartbeat. (Until 2026-12-04 the
    pings were never sent, and the bench went on counting connections the node had closed.)"""
    result = connections.run(target=30, workers=1, hold=4.0, heartbeat=1.0, max_seconds=60,
                             probe_pairs=2, probe_rate=50, transport="ws")
    assert result["transport"] == "ws"
    assert result["opened"] == 30 and result["failed"] == 0
    assert result["held_after_hold"] == result["server_held_after_hold"] == 30
