"""The Prometheus endpoint: what a scraper sees after real traffic."""

from __future__ import annotations

import urllib.request

import chatd_client as cc
import trio

from .conftest import StartNode, messages


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def test_metrics_count_connections_messages_and_latency(start_node: StartNode) -> None:
    node = await start_node(metrics_port=0)
    port = node.server.metrics_port
    assert port > 0
    before = await trio.to_thread.run_sync(scrape, port)
    await node.add_users("alice", "bob")
    async with node.connect("alice") as alice, node.connect("bob") as bob:
        with trio.fail_after(5):
            await bob.next_event(cc.Synced)
        for i in range(10):
            await alice.send("bob", f"m{i}")
        await messages(bob, 10)
        after = await trio.to_thread.run_sync(scrape, port)
    assert after["chatd_connections"] - before.get("chatd_connections", 0) == 2
    assert after["chatd_messages_received_total"] - before["chatd_messages_received_total"] == 10
    got = (after["chatd_delivery_latency_seconds_count"]
           - before["chatd_delivery_latency_seconds_count"])
    assert got >= 10
    assert after["chatd_store_commit_seconds_count"] > before["chatd_store_commit_seconds_count"]
    assert "process_cpu_seconds_total" in after and "chatd_resident_memory_bytes" in after
