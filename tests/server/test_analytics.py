"""Analytics events from real traffic (a real node, SDK clients) through a real Redis Stream to
`chatd analytics`; with Redis stopped, delivery goes on and the lost events are counted."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import coredis
import pytest
import trio
from prometheus_client import REGISTRY

from chatd import cli
from chatd.analytics import events
from chatd.analytics.publisher import FLUSH_INTERVAL
from chatd.auth import load_or_create_secret
from chatd.server import Config, serve

from ..media.images import photo
from .conftest import Node, messages
from .redis_servers import RedisServer
from .scenarios import first

STREAM = "chatd:analytics"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    r = RedisServer(tmp_path / "redis")
    yield r
    r.stop()


async def start(nursery: trio.Nursery, tmp_path: Path, **settings: Any) -> Node:
    cfg = Config(host="127.0.0.1", tcp_port=0, ws_port=-1, data_dir=str(tmp_path / "data"),
                 **settings)
    load_or_create_secret(cfg.data_dir)
    node = Node(await nursery.start(serve, cfg), cfg)
    await node.add_users("alice", "bob", "carol")
    return node


async def stream_events(url: str) -> list[dict[str, Any]]:
    from chatd.analytics.report import parse

    async with coredis.Redis.from_url(url) as r:
        return [parse(e.field_values) for e in await r.xrange(STREAM)]


async def published(url: str, kind: str, n: int) -> list[dict[str, Any]]:
    """The stream's events once it holds at least n of this kind."""
    with trio.fail_after(10):
        while True:
            got = await stream_events(url)
            if sum(1 for e in got if e["k"] == kind) >= n:
                return got
            await trio.sleep(FLUSH_INTERVAL / 2)


async def report(*args: str) -> tuple[int, str]:
    out = io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out):
            return cli.main(["analytics", *args])

    code = await trio.to_thread.run_sync(run)
    return code, out.getvalue()


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("chatd_analytics_events_dropped_total",
                                     {"reason": reason}) or 0.0


async def test_real_traffic_reaches_the_report(redis: RedisServer, tmp_path: Path,
                                               nursery: trio.Nursery) -> None:
    node = await start(nursery, tmp_path, analytics=redis.url, analytics_content=True,
                       http_port=0)
    picture = tmp_path / "view.jpg"
    picture.write_bytes(photo(300, 200))
    async with node.connect("alice") as alice, node.connect("bob") as bob, \
            node.connect("carol") as carol:
        for text in ("pizza tonight?", "pizza at eight", "bring the pizza"):
            await alice.send("bob", text)
        got = await messages(bob, 3)
        await bob.send_image("alice", str(picture), "view")
        await messages(alice, 1)
        await bob.mark_read(got[-1].conv, got[-1].seq)
        await first(alice, events_of("Read"))
        group = await alice.create_group("Climbing", ["bob", "carol"])
        await carol.send(None, "rope check", group=group.group)
        await messages(carol, 1)  # (the group's "created" event)
        await messages(bob, 2)
        stream = await published(redis.url, "send", 5)  # (the last one: all before it too)
    kinds = {e["k"] for e in stream}
    assert {"connect", "send", "deliver", "read", "group"} <= kinds
    sends = [e for e in stream if e["k"] == "send"]
    assert [(e["u"], e["n"], e["g"], e["m"]) for e in sends] == [
        ("alice", 14, 0, 0), ("alice", 14, 0, 0), ("alice", 15, 0, 0), ("bob", 4, 0, 1),
        ("carol", 10, 1, 0)]
    [upload] = [e for e in stream if e["k"] == "upload"]
    assert upload["u"] == "bob" and upload["y"] == "image/jpeg" and upload["n"] > 1000
    assert sends[0]["c"].startswith("d:") and "bob" not in sends[0]["c"]  # (no pair of names)
    assert all("body" not in e and "b" not in e for e in stream)  # never the message itself

    code, out = await report("--redis", redis.url, "--json", "--since", "1h", "--content")
    assert code == 0
    r = json.loads(out)
    assert list(r["daily_active"].values()) == [3]
    assert r["messages"] == 5
    assert r["delivery_ms"]["count"] >= 4 and r["delivery_ms"]["median"] is not None
    assert r["read_ms"]["count"] == 1 and r["read_ms"]["median"] >= 0
    assert r["busiest_groups"] == [{"group": f"g:{group.group}", "messages": 1}]
    assert r["trending_words"][0] == {"word": "pizza", "count": 3}
    code, text = await report("--redis", redis.url, "--since", "1h")  # text, no words asked
    assert code == 0 and "daily active users" in text and "messages: 5" in text
    assert "trending" not in text


async def test_message_words_only_with_the_nodes_content_setting(
        redis: RedisServer, tmp_path: Path, nursery: trio.Nursery) -> None:
    node = await start(nursery, tmp_path, analytics=redis.url)  # analytics_content: off
    async with node.connect("alice") as alice, node.connect("bob") as bob:
        await alice.send("bob", "secret plans")
        await messages(bob, 1)
        stream = await published(redis.url, "send", 1)
    assert all("w" not in e for e in stream)
    code, out = await report("--redis", redis.url, "--json", "--content")
    assert code == 0 and json.loads(out)["trending_words"] == []


async def test_delivery_goes_on_while_redis_is_down_and_drops_are_counted(
        redis: RedisServer, tmp_path: Path, nursery: trio.Nursery) -> None:
    node = await start(nursery, tmp_path, analytics=redis.url)
    async with node.connect("alice") as alice, node.connect("bob") as bob:
        await alice.send("bob", "before")
        await messages(bob, 1)
        await published(redis.url, "send", 1)
        redis.stop()
        before = dropped("redis")
        for i in range(20):
            await alice.send("bob", f"while down {i}")
        assert [m.text for m in await messages(bob, 20)] == [f"while down {i}"
                                                             for i in range(20)]
        with trio.fail_after(15):
            while dropped("redis") == before:
                await trio.sleep(0.05)
        assert node.server.stats["failed_analytics"] >= 1
    redis.start()  # (the same port) the next events go through again
    async with node.connect("carol") as carol:
        await first(carol, events_of("Synced"))
        await published(redis.url, "connect", 1)


async def test_a_node_starts_and_delivers_with_its_analytics_redis_down(
        tmp_path: Path, nursery: trio.Nursery) -> None:
    from bench.common import free_port

    before = dropped("redis")
    node = await start(nursery, tmp_path, analytics=f"redis://127.0.0.1:{free_port()}")
    async with node.connect("alice") as alice, node.connect("bob") as bob:
        await alice.send("bob", "hello")
        assert [m.text for m in await messages(bob, 1)] == ["hello"]
        with trio.fail_after(15):
            while dropped("redis") == before:  # (the connects and the send, at least)
                await trio.sleep(0.05)


def events_of(name: str) -> type:
    import chatd_client as cc

    kind: type = getattr(cc, name)
    return kind


def test_the_buffer_is_capped_and_counts_what_it_refuses() -> None:
    buf = events.EventBuffer(cap=3)
    for i in range(5):
        buf.add({"k": "x", "t": i})
    assert (len(buf), buf.dropped) == (3, 2)
    assert [e["t"] for e in buf.take(2)] == [0, 1] and len(buf) == 1


def test_hooks_do_nothing_while_analytics_is_off() -> None:
    events.stop()
    events.connected("alice", "phone")  # (no buffer: nothing kept, nothing raised)
    buf = events.start(cap=10)
    try:
        events.connected("alice", "phone")
        assert [e["k"] for e in buf.take(10)] == ["connect"]
    finally:
        events.stop()


async def test_the_report_needs_to_know_where_the_stream_is(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHATD_ANALYTICS", raising=False)
    monkeypatch.delenv("CHATD_CONFIG", raising=False)
    code, _ = await report()
    assert code == 2 and "give --redis" in capsys.readouterr().err
    from bench.common import free_port

    code, _ = await report("--redis", f"redis://127.0.0.1:{free_port()}")
    assert code == 1 and "Unable to establish a connection" in capsys.readouterr().err
