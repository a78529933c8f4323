"""The SDK under an application that reads its events slower than they arrive: nothing is
dropped, each message is seen exactly once and in order, and only what the application took
is acknowledged (issue 13, bug 2)."""

from __future__ import annotations

import chatd_client as cc
import pytest
import trio

from chatd.cli import build_parser, run_listen

from .conftest import Node, StartNode

# The store only matters to the server: one is enough here.
pytestmark = pytest.mark.parametrize("start_node", ["sqlite"], indirect=True)

BUFFER = 20


async def setup(start_node: StartNode, **config: object) -> Node:
    node: Node = await start_node(**config)
    await node.add_users("alice", "bob")
    return node


async def send_while_bob_does_not_read(node: Node, n: int, body: str = "") -> list[str]:
    """alice sends n messages to bob (each SENT); then give bob's client time to get them."""
    texts = [f"m{i}{body}" for i in range(n)]
    async with node.connect("alice") as alice:
        for text in texts:
            await alice.send("bob", text)
    await trio.sleep(0.5)  # bob's application is busy: its client receives (or stops reading)
    return texts


async def messages(client: cc.Client, n: int, timeout: float = 10) -> list[cc.Message]:
    """The client's next n messages, or those that came within timeout (to compare in full)."""
    out: list[cc.Message] = []
    with trio.move_on_after(timeout):
        while len(out) < n:
            m = await client.next_event(cc.Message)
            assert isinstance(m, cc.Message)
            out.append(m)
    return out


async def no_more_messages(client: cc.Client, wait: float = 0.3) -> None:
    with trio.move_on_after(wait):
        extra = await client.next_event(cc.Message)
        pytest.fail(f"a message came twice, or one too many: {extra}")


async def wait_cursor(node: Node, device: str, at_least: int) -> None:
    """Until the server stored bob's acknowledgement (the client said goodbye after it)."""
    with trio.fail_after(5):
        while await node.server.store.cursor("bob", device) < at_least:
            await trio.sleep(0.01)


async def test_app_reading_late_sees_every_message_once_in_order(
        start_node: StartNode) -> None:
    node = await setup(start_node)
    n = 5 * BUFFER
    async with node.connect("bob", "phone", event_buffer=BUFFER) as bob:
        await bob.next_event(cc.Synced)
        texts = await send_while_bob_does_not_read(node, n)
        got = await messages(bob, n)
        assert [m.text for m in got] == texts
        assert [m.seq for m in got] == list(range(1, n + 1))
        await no_more_messages(bob)
    async with node.connect("bob", "phone") as bob:  # all taken, so all acknowledged
        await bob.next_event(cc.Synced)
        await no_more_messages(bob)


@pytest.mark.parametrize("took", [BUFFER - 5, 3 * BUFFER])
async def test_fresh_client_gets_what_the_first_did_not_take(start_node: StartNode,
                                                            took: int) -> None:
    node = await setup(start_node)
    n = 5 * BUFFER
    async with node.connect("bob", "phone", event_buffer=BUFFER) as bob:
        await bob.next_event(cc.Synced)
        texts = await send_while_bob_does_not_read(node, n)
        assert [m.text for m in await messages(bob, took)] == texts[:took]
    await wait_cursor(node, "phone", took)
    async with node.connect("bob", "phone", event_buffer=BUFFER) as bob:
        got = await messages(bob, n - took)
        assert [m.text for m in got] == texts[took:]
        await no_more_messages(bob)


async def test_delivered_receipts_only_for_what_the_app_took(start_node: StartNode) -> None:
    node = await setup(start_node)
    async with node.connect("bob", "phone", event_buffer=BUFFER) as bob, \
            node.connect("alice") as alice:
        await bob.next_event(cc.Synced)
        for i in range(3):
            await alice.send("bob", f"m{i}")
        with trio.move_on_after(0.5):
            d = await alice.next_event(cc.Delivered)
            pytest.fail(f"DELIVERED before bob's application took anything: {d}")
        await messages(bob, 3)
        got: set[int] = set()
        with trio.fail_after(5):
            while len(got) < 3:
                d = await alice.next_event(cc.Delivered)
                assert isinstance(d, cc.Delivered)
                got.update(d.seqs)
        assert got == {1, 2, 3}


async def test_slow_consumer_disconnect_then_every_message_once(start_node: StartNode) -> None:
    """Bob's client stops reading the socket, the server disconnects it as a slow consumer;
    after the reconnect the server sends again what was not acknowledged, and the application
    still sees each message once, in order."""
    node = await setup(start_node, max_queue=16, max_outbound=256 * 1024)
    n = 150
    big = "x" * 60_000  # enough to fill the socket buffers between them
    async with node.connect("bob", "phone", event_buffer=10) as bob:
        await bob.next_event(cc.Synced)
        texts = await send_while_bob_does_not_read(node, n, big)
        got = await messages(bob, n, timeout=20)
        assert [m.text for m in got] == texts
        await no_more_messages(bob)
        assert bob.reconnects >= 1
    assert node.server.stats["slow_consumers"] >= 1  # the path this test is about was taken


async def test_heartbeats_go_on_while_the_reader_waits(start_node: StartNode) -> None:
    """The reader waits for the application, but the pings still go out: the server does not
    take the connection for idle."""
    node = await setup(start_node, heartbeat=0.2, idle_timeout=1.0)
    async with node.connect("bob", "phone", event_buffer=5) as bob:
        await bob.next_event(cc.Synced)
        texts = await send_while_bob_does_not_read(node, 20)
        await trio.sleep(2.5)  # over twice the idle timeout
        got = await messages(bob, 20)
        assert [m.text for m in got] == texts
        await no_more_messages(bob)
        assert bob.reconnects == 0 and bob.resyncs == 0


async def test_sends_and_requests_work_while_the_buffer_is_full(start_node: StartNode) -> None:
    """An echo bot: it awaits a send (and a request) for each message it takes, while its
    buffer is full. The reader keeps reading for those answers, sets aside what does not fit,
    and gets it again: every message is seen once, in order, and answered."""
    node = await setup(start_node)
    n = 3 * BUFFER
    async with node.connect("bob", "phone", event_buffer=BUFFER) as bob:
        await bob.next_event(cc.Synced)
        texts = await send_while_bob_does_not_read(node, n)
        seen: list[str] = []
        with trio.move_on_after(20):
            async for event in bob.events():
                assert not isinstance(event, (cc.Disconnected, cc.ServerError)), event
                if isinstance(event, cc.Message):
                    seen.append(event.text)
                    await bob.send("alice", f"echo {event.text}")
                    if len(seen) % 10 == 1:
                        page = await bob.history(event.conv, limit=1)
                        assert page.items
                    if len(seen) == n:
                        break
        assert seen == texts
        await no_more_messages(bob)
        assert bob.resyncs >= 1  # the path this test is about was taken
    async with node.connect("alice") as alice:
        got = await messages(alice, n)
        assert [m.text for m in got] == [f"echo {t}" for t in texts]


async def test_listen_count_acknowledges_only_what_it_printed(
        start_node: StartNode, capsys: pytest.CaptureFixture[str]) -> None:
    node = await setup(start_node)
    async with node.connect("bob", "phone") as bob:  # register the device
        await bob.next_event(cc.Synced)
    texts = await send_while_bob_does_not_read(node, 10)
    args = build_parser().parse_args(["listen", "--url", node.tcp, "--token", node.token("bob"),
                                      "--device", "phone", "--count", "3", "--timeout", "10"])
    assert await run_listen(args) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if '"message"' in line]
    assert len(printed) == 3
    await wait_cursor(node, "phone", 3)
    async with node.connect("bob", "phone") as bob:
        got = await messages(bob, 7)
        assert [m.text for m in got] == texts[3:]
        await no_more_messages(bob)
