"""The benchmark harness runs end to end at tiny sizes (figures are not checked: benchmarks
report them, tests never time anything)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from bench import codec, drain, memory, throughput


def test_codec_bench_reports_every_frame() -> None:
    result = codec.run(seconds=0.01)
    assert set(result["frames"]) == set(codec.FRAMES)
    assert all(r["encode_per_s"] > 0 and r["decode_per_s"] > 0
               for r in result["frames"].values())


def test_throughput_bench_runs_relay_and_chatd() -> None:
    result = throughput.run(npairs=2, window=2, seconds=0.3, store="sqlite://TMP/chatd.db",
                            history=2000)
    assert result["relay"]["msgs_per_s"] > 0 and result["chatd"]["msgs_per_s"] > 0
    assert result["chatd_with_history"]["msgs_per_s"] > 0 and result["history_vs_fresh"] > 0


def test_a_history_is_what_a_running_node_keeps(tmp_path: object) -> None:
    import sqlite3

    throughput.prefill(f"sqlite://{tmp_path}/chatd.db", 2500)
    with sqlite3.connect(f"{tmp_path}/chatd.db") as db:
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone() == (2500,)
        assert db.execute("SELECT COUNT(*) FROM client_ids c JOIN messages m"
                          " ON m.conv = c.conv AND m.seq = c.seq").fetchone() == (2500,)


def test_drain_bench_receives_everything() -> None:
    result = drain.run(300)
    assert result["received"] == 300


def test_memory_bench_measures_both_servers() -> None:
    result = memory.run(50)
    assert result["chatd"]["connections"] == result["bare_trio"]["connections"] == 50


def test_fanout_bench_reaches_every_member() -> None:
    from bench import fanout

    result = fanout.run(size=20, messages=2)
    assert result["members"] == 20 and result["fanout_to_last_member_ms"]["max"] > 0


def test_fanout_bench_on_cassandra_counts_requests_per_group_message(cassandra: object) -> None:
    from bench import fanout
    from bench.cassandra import CassandraNode

    assert isinstance(cassandra, CassandraNode)
    result = fanout.run(size=5, messages=2, store=cassandra.url("chatd_fanout_bench",
                                                                 numbering="owner"))
    assert result["fanout_to_last_member_ms"]["max"] > 0
    by_statement = result["cassandra_requests_per_group_msg_by_statement"]
    # each of the four members' copies is written (and acknowledged): at least one request each
    assert result["cassandra_requests_per_group_msg"] >= 4
    assert by_statement.get("own_marker+own_q+put_item", 0) >= 4


def test_connections_bench_opens_holds_and_reports(tmp_path: object) -> None:
    from bench import connections, plots

    # held longer than the node's idle timeout (3 x the heartbeat): pinged, none dropped,
    # by the node's own count over its two workers too
    result = connections.run(target=40, workers=2, hold=4.0, heartbeat=1.0, max_seconds=60,
                             probe_pairs=2, probe_rate=50)
    assert result["opened"] == 40 and result["failed"] == 0
    assert result["held_after_hold"] == result["server_held_after_hold"] == 40
    assert result["probe"]["messages"] > 0
    import pathlib

    png = plots.plot_ramp(result, pathlib.Path(str(tmp_path)) / "ramp.png")
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"


def test_throughput_sweep_pairs_every_point_with_the_relay(tmp_path: object) -> None:
    import pathlib

    from bench import plots

    result = throughput.sweep([1, 2], [1, 2], seconds=0.2, store="sqlite://TMP/chatd.db")
    assert [(r["pairs"], r["window"]) for r in result["runs"]] == [(1, 1), (1, 2), (2, 1),
                                                                   (2, 2)]
    assert all(r["chatd"]["msgs_per_s"] > 0 and r["relay"]["msgs_per_s"] > 0
               for r in result["runs"])
    png = plots.plot_sweep(result, pathlib.Path(str(tmp_path)) / "sweep.png")
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"


def test_cluster_bench_compares_cross_and_same_node() -> None:
    from bench import cluster

    result = cluster.run(npairs=2, window=2, seconds=0.3, churn_n=20)
    assert result["same_node"]["msgs_per_s"] > 0 and result["cross_node"]["msgs_per_s"] > 0
    assert result["connect_cycles_per_s"]["with_redis"] > 0


def test_stores_bench_runs_sqlite_and_cassandra(cassandra: object) -> None:
    from bench import stores
    from bench.cassandra import CassandraNode

    assert isinstance(cassandra, CassandraNode)
    result = stores.run(npairs=2, window=2, seconds=0.3, cassandra=cassandra.url("chatd_bench"),
                        warmup=0.3)
    assert result["cassandra_warmup_s"] == 0.3
    assert result["cassandra"]["warmup_msgs_per_s"] > 0  # (the warm-up sent messages)
    assert result["sqlite"]["msgs_per_s"] > 0 and result["cassandra"]["msgs_per_s"] > 0
    # counted by the node (chatd_cassandra_requests, _paxos): each seq is a Paxos round here
    assert result["cassandra"]["requests_per_msg"] > result["cassandra"]["paxos_per_msg"] > 0


def test_abuse_bench_runs_every_attack_between_quiet_windows() -> None:
    from bench import abuse

    result = abuse.run(seconds=1, quiet_seconds=0.5, rate=20, flooders=2, slow_readers=2,
                       history_loops=1, junk=4, silent=8, hold=0.5, settle=0.2)
    assert [w["window"] for w in result["windows"]] == [
        "quiet1", "flood", "quiet2", "slow", "quiet3", "junk", "quiet4"]
    assert all(w["victim"]["messages"] > 0 for w in result["windows"])
    attacks = {w["window"]: w for w in result["windows"] if w["attack_kind"]}
    assert all(w["attack"]["done"] and w["attacker_connections"] > 0
               for w in attacks.values())
    assert attacks["flood"]["attack"]["counts"]["sends"] > 0
    assert attacks["junk"]["attack"]["counts"]["silent_opened"] == 8
    assert result["node_alive_at_end"] and result["limits"]["max_outbound"] > 0
    assert {"latency_bar_met", "memory_bar_met"} <= set(result)


def test_versus_bench_quick_compares_chatd_with_the_relay() -> None:
    from bench import versus

    result = versus.run(quick=True, systems=("relay", "chatd"), rates=("half",), quiet=True)
    shapes = [r["shape"]["name"] for r in result["runs"]]
    assert shapes[:2] == [s.name for s in versus.QUICK] and shapes[2].startswith("paced")
    for r in result["runs"]:
        for name in ("relay", "chatd"):
            assert "incomplete" not in r[name], (r["shape"]["name"], name, r[name])
            assert r[name]["messages"] > 0 and r[name]["p99_ms"] > 0
        assert r["chatd_vs_relay"]["msgs_per_s"] > 0
    assert result["runs"][0]["chatd"]["messages"] == 5 * 100  # every message got its receipt


def test_versus_xmpp_stanzas_split_whole_and_byte_by_byte() -> None:
    from bench.xmpp import StanzaSplitter

    stream = (b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' id='x'>"
              b"<stream:features><mechanisms><mechanism>PLAIN</mechanism></mechanisms>"
              b"</stream:features><message id='a' from='s0@localhost/b'><body>1 &lt; 2</body>"
              b"</message><presence/><message id='b'><received xmlns='urn:xmpp:receipts'"
              b" id='b'/></message>")
    whole = StanzaSplitter().feed(stream)
    split = StanzaSplitter()
    pieces = [s for i in range(len(stream)) for s in split.feed(stream[i:i + 1])]
    assert whole == pieces and [s[:9] for s in whole] == [
        b"<stream:f", b"<message ", b"<presence", b"<message "]
    assert whole[1].endswith(b"</message>") and whole[3].endswith(b"</message>")


def test_free_port_never_hands_out_one_port_twice() -> None:
    """Two servers given the same spare port collide (SeaweedFS's master and filer once got
    one gRPC port, and every S3 test failed); the kernel may repeat a spare port."""
    from bench.common import free_port

    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)


def test_test_processes_running_side_by_side_hand_out_disjoint_ports(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """scripts/test runs two pytest-xdist workers; each starts servers on spare ports. Each
    worker hands out only its own share of the ports, so one port never goes to two servers
    of two workers (their `free_port` memories are not shared)."""
    from bench.common import free_port

    shares = []
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
        shares.append({free_port() for _ in range(200)})
    assert {p // 64 % 2 for p in shares[0]} == {0} and {p // 64 % 2 for p in shares[1]} == {1}


@pytest.mark.parametrize("system", ["relay", "chatd"])
def test_throughput_counts_no_answer_to_an_earlier_runs_message(system: str) -> None:
    """The load keeps W messages in flight per sender. A message still in flight when one
    run (the warm-up) stopped is answered during the next: it used to count there, with
    its latency from the run before, and give its sender one more message in flight for
    the whole run (10 x 1 ran at ~1.5 in flight)."""
    def go(port: int, token: Any) -> list[float]:
        async def main() -> list[float]:
            pairs = await throughput.connect_pairs(port, 8, token, system == "relay")
            for _ in range(3):  # (each run stops with messages in flight: answered later)
                await throughput.run_pairs(pairs, 1, 0.3, None, [])
            await trio.sleep(1.0)
            lat: list[float] = []
            await throughput.run_pairs(pairs, 1, 0.3, None, lat)
            return lat

        return trio.run(main)

    if system == "relay":
        with throughput.relay_process() as (port, _):
            lat = go(port, lambda u: u)
    else:
        with throughput.chatd_process(8, "sqlite://TMP/chatd.db", 1) as node:
            lat = go(node.port, node.token)
    assert lat and max(lat) < 0.9  # (an earlier run's message waited 1 s more than that)
