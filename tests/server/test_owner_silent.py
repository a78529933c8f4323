"""A send forwarded to its chat's owner, and the owner paused (SIGSTOP): the device gets a
clear retryable error, and its retry with the same client id is numbered once, never twice
(docs/CASSANDRA.md, "Conversation owners")."""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path

import trio

from bench.cassandra import CassandraNode
from bench.common import ChatdProcess, RawClient
from chatd.core.owners import owner, shard_of
from chatd.protocol import frames as F
from chatd.protocol.errors import ErrorCode
from chatd.store import open_store

from .redis_servers import RedisServer

CONV = "d:alice:bob"


def ids_owned_by_second() -> tuple[str, str]:
    """Two node ids; the chat (and alice's and bob's inboxes) owned by the second."""
    for i in itertools.count():
        a, b = f"silent{i}-a", f"silent{i}-b"
        if all(owner(shard_of(k), [a, b]) == b for k in (CONV, "alice", "bob")):
            return a, b
    raise AssertionError


async def send(node: ChatdProcess, cid: str) -> F.Sent | F.Error | None:
    """alice sends one message through node: its Sent, the Error, or None (closed)."""
    c = await RawClient.connect(node.port, node.token("alice"), "phone")
    try:
        await c.send(F.Send(id=cid, to="bob", body=cid.encode()))
        while True:
            f = await c.next()
            if isinstance(f, F.Sent | F.Error) and getattr(f, "id", cid) == cid:
                return f
    except (EOFError, OSError, trio.BrokenResourceError):
        return None
    finally:
        await c.stream.aclose()


async def until_sent(node: ChatdProcess, cid: str) -> F.Sent:
    with trio.fail_after(60):
        while not isinstance(f := await send(node, cid), F.Sent):
            await trio.sleep(0.5)
        return f


async def scenario(a: ChatdProcess, b: ChatdProcess) -> tuple[list[F.Sent], F.Error | None]:
    first = await until_sent(a, "m0")  # forwarded to b, answered
    os.kill(b.proc.pid, signal.SIGSTOP)
    try:
        with trio.fail_after(60):
            silent = await send(a, "m1")  # b reads nothing now
        assert isinstance(silent, F.Error), silent
        again = await until_sent(a, "m1")  # once the chat moved to a (b's lease ran out)
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)
    await trio.sleep(3)  # b reads what waited in its stream: the call it must not run
    retry = await until_sent(b, "m1")  # through b now: the same message
    return [first, again, retry], silent


def test_a_silent_owner_gives_a_retryable_error_and_the_retry_is_numbered_once(
        cassandra: CassandraNode, tmp_path: Path) -> None:
    cassandra.truncate()
    url = cassandra.url(numbering="owner", timeout="2", lease="9")
    redis = RedisServer(tmp_path / "redis")
    ida, idb = ids_owned_by_second()
    nodes = []
    try:
        for name, node_id, users in (("a", ida, ["alice", "bob"]), ("b", idb, [])):
            nodes.append(ChatdProcess(str(tmp_path / name), users, store=url,
                                      extra=("--node-id", node_id, "--redis", redis.url)))
        trio.run(trio.sleep, 4)  # a heartbeat: each node sees the other alive
        (first, again, retry), silent = trio.run(scenario, *nodes)
    finally:
        for node in nodes:
            os.kill(node.proc.pid, signal.SIGCONT)
            node.stop()
        redis.stop()
    assert silent is not None and silent.code == ErrorCode.INTERNAL
    assert "did not answer" in silent.message and "send it again" in silent.message
    assert (first.seq, again.seq, retry.seq) == (1, 2, 2)

    async def stored() -> list[tuple[int, str]]:
        async with open_store(cassandra.url()) as s:
            return sorted((h.seq, h.id) for h in await s.history(CONV, None, 100))

    assert trio.run(stored) == [(1, "m0"), (2, "m1")]
