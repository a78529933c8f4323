"""Shards changing owner under load (Cassandra numbering=owner, Redis, chatd processes): a
node joins, leaves cleanly, and a third joins and is SIGKILLed, while devices pinned to
nodes keep sending into two chats. No seq is given twice or skipped, nothing acknowledged
is lost, each device's messages keep their order, and sends made through the node that
joined are answered (forwarded to the owner), not refused."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import trio

from bench.cassandra import CassandraNode
from bench.common import ChatdProcess, RawClient
from chatd.protocol import frames as F
from chatd.store import open_store

from .redis_servers import RedisServer

CHATS = {"alice": "bob", "carol": "dave"}  # sender -> recipient
DEVICES = 3


async def send_until_acked(up: list[ChatdProcess], k: int, sender: str, to: str, cid: str
                           ) -> tuple[int, ChatdProcess]:
    """Send through the node device k is pinned to (it changes as nodes come and go), again
    with the same client id until it is SENT: (seq, the node that answered)."""
    with trio.fail_after(120):
        while True:
            node = up[k % len(up)]
            try:
                c = await RawClient.connect(node.port, node.token(sender), f"d{k}")
                try:
                    await c.send(F.Send(id=cid, to=to, body=cid.encode()))
                    with trio.move_on_after(30):
                        while not isinstance(f := await c.next(), F.Error):
                            if isinstance(f, F.Sent) and f.id == cid:
                                return f.seq, node
                finally:
                    await c.stream.aclose()
            except (RuntimeError, EOFError, OSError, trio.BrokenResourceError):
                pass
            await trio.sleep(0.3)


async def scenario(start: list[ChatdProcess], spawn: object) -> tuple[
        dict[str, int], dict[str, list[str]], dict[str, set[str]]]:
    up = list(start)
    acked: dict[str, int] = {}  # client id -> seq
    order: dict[str, list[str]] = {}  # device -> its client ids, in send order
    through: dict[str, set[str]] = {}  # node name -> client ids it answered
    names = {id(start[0]): "a"}
    stop = trio.Event()

    async def device(sender: str, k: int) -> None:
        mine = order.setdefault(f"{sender}/d{k}", [])
        n = 0
        while not stop.is_set():
            cid = f"{sender}-d{k}-{n}"
            mine.append(cid)
            seq, node = await send_until_acked(up, k, sender, CHATS[sender], cid)
            acked[cid] = seq
            through.setdefault(names.get(id(node), "?"), set()).add(cid)
            n += 1
            await trio.sleep(0.1)

    async def start_node(name: str) -> ChatdProcess:
        node: ChatdProcess = await trio.to_thread.run_sync(spawn, name)  # type: ignore[arg-type]
        names[id(node)] = name
        await trio.sleep(4)  # a heartbeat: every node sees it alive
        up.append(node)
        return node

    async with trio.open_nursery() as n:
        for sender in CHATS:
            for k in range(DEVICES):
                n.start_soon(device, sender, k)
        await trio.sleep(3)
        b = await start_node("b")  # joins: takes the shards it wins
        await trio.sleep(8)
        up.remove(b)
        await trio.to_thread.run_sync(b.stop)  # leaves cleanly: gives them back
        await trio.sleep(5)
        c = await start_node("c")
        await trio.sleep(8)
        up.remove(c)
        os.kill(c.proc.pid, signal.SIGKILL)  # dies with its leases
        await trio.sleep(5)
        stop.set()
    return acked, order, through


def test_shards_move_under_load_without_losing_or_repeating_a_seq(
        cassandra: CassandraNode, tmp_path: Path) -> None:
    cassandra.truncate()
    url = cassandra.url(numbering="owner", timeout="2", lease="9")
    redis = RedisServer(tmp_path / "redis")
    nodes: list[ChatdProcess] = []

    def spawn(name: str) -> ChatdProcess:
        (tmp_path / name).mkdir()
        node = ChatdProcess(str(tmp_path / name), [*CHATS, *CHATS.values()] if name == "a"
                            else [], store=url,
                            extra=("--node-id", f"moves-{name}", "--redis", redis.url))
        nodes.append(node)
        return node

    try:
        acked, order, through = trio.run(scenario, [spawn("a")], spawn)
    finally:
        for node in nodes:
            if node.proc.poll() is None:
                node.stop()
        redis.stop()

    async def stored(conv: str) -> list[tuple[int, str]]:
        async with open_store(cassandra.url()) as s:
            return sorted((h.seq, h.id) for h in await s.history(conv, None, 10_000))

    for sender, to in CHATS.items():
        rows = trio.run(stored, "d:" + ":".join(sorted((sender, to))))
        assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1))  # none twice, none skipped
        assert len({cid for _, cid in rows}) == len(rows)  # no message twice
        at = dict(rows)
        mine = {cid: seq for cid, seq in acked.items() if cid.startswith(f"{sender}-")}
        assert all(at.get(seq) == cid for cid, seq in mine.items())  # nothing acked lost
        assert len(mine) == len(rows)  # (every send was retried until SENT)
    for cids in order.values():
        seqs = [acked[c] for c in cids if c in acked]
        assert seqs == sorted(seqs)  # each device's messages in the order it sent them
    assert through.get("b") and through.get("c")  # the nodes that joined answered sends
