"""Fan-out to a large group: time from a send to the last member's delivery, and the
sender's SENT latency while fan-outs run, against SENT of one-to-one messages in the same run.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

import trio

from chatd.protocol import frames as F

from .common import ChatdProcess, RawClient, free_port, save


async def measure(node: ChatdProcess, size: int, messages: int) -> dict[str, Any]:
    """size: members of the group, the sender (alice) included."""
    names = [f"m{i}" for i in range(size - 1)]
    members = len(names)  # who receive each message
    alice = await RawClient.connect(node.port, node.token("alice"))
    clients: list[RawClient] = []
    limiter = trio.CapacityLimiter(100)

    async def join(name: str) -> None:
        async with limiter:
            clients.append(await RawClient.connect(node.port, node.token(name)))

    async with trio.open_nursery() as nursery:
        for n in names:
            nursery.start_soon(join, n)
    await alice.send(F.GroupCreate(rid=1, name="big", members=tuple(names)))
    group = await alice.next()
    if not isinstance(group, F.Group):
        raise RuntimeError(f"group not created: {group}")
    last_at: dict[int, float] = {}  # seq -> when the last member got it
    got: dict[int, int] = {}

    async def member(c: RawClient) -> None:
        while True:
            frames = await c.batch()
            upto = 0
            for f in frames:
                if isinstance(f, F.Deliver):
                    upto = f.q
                    got[f.seq] = got.get(f.seq, 0) + 1
                    if got[f.seq] == members:
                        last_at[f.seq] = time.perf_counter()
            if upto:
                await c.send(F.Ack(upto=upto))

    async def sent_latency(frame: F.Send) -> tuple[float, F.Sent]:
        t0 = time.perf_counter()
        await alice.send(frame)
        while not isinstance(f := await alice.next(), F.Sent):
            pass
        return time.perf_counter() - t0, f

    group_sent, fanout, direct_sent = [], [], []
    async with trio.open_nursery() as nursery:
        for c in clients:
            nursery.start_soon(member, c)
        for i in range(messages):
            t0 = time.perf_counter()
            lat, sent = await sent_latency(F.Send(id=f"g{i}", group=group.group, body=b"x" * 100))
            group_sent.append(lat)
            lat, _ = await sent_latency(F.Send(id=f"d{i}", to="m0", body=b"x"))
            direct_sent.append(lat)  # while the group fan-out is still running
            with trio.fail_after(60):
                while sent.seq not in last_at:
                    await trio.sleep(0.001)
            fanout.append(last_at[sent.seq] - t0)
        nursery.cancel_scope.cancel()
    ms = 1000
    return {"members": size, "messages": messages,
            "fanout_to_last_member_ms": {"median": round(statistics.median(fanout) * ms, 1),
                                         "max": round(max(fanout) * ms, 1)},
            "group_sent_ms": {"median": round(statistics.median(group_sent) * ms, 2),
                              "max": round(max(group_sent) * ms, 2)},
            "direct_sent_during_fanout_ms": {
                "median": round(statistics.median(direct_sent) * ms, 2),
                "max": round(max(direct_sent) * ms, 2)}}


def run(size: int, messages: int, store: str = "") -> dict[str, Any]:
    """`store`: the node's store URL (default: SQLite in a temporary directory). On Cassandra
    (a running node; the schema is made if missing) the result also has the Cassandra
    requests and Paxos rounds per group message, from the node's counters (the group's
    creation and the 1:1 messages sent meanwhile included)."""
    cassandra = store.startswith("cassandra")
    with tempfile.TemporaryDirectory() as tmp:
        extra: tuple[str, ...] = ()
        if cassandra:
            from chatd.store.cql import migrate

            from .stores import COUNTED, counts

            trio.run(migrate, store)
            extra = ("--metrics-port", str(mport := free_port()))
        node = ChatdProcess(tmp, ["alice", *(f"m{i}" for i in range(size - 1))], store=store,
                            extra=extra)
        try:
            before = counts(mport) if cassandra else {}
            out = trio.run(measure, node, size, messages)
            if cassandra:
                time.sleep(2.5)  # (the Cassandra counts are sampled every 2 s)
                after = counts(mport)
                for key, name in (("requests", COUNTED[1]), ("paxos", COUNTED[2])):
                    out[f"cassandra_{key}_per_group_msg"] = round(
                        (after[name] - before[name]) / messages, 2)
                out["cassandra_requests_per_group_msg_by_statement"] = dict(sorted((
                    (k, round((after[k] - before.get(k, 0.0)) / messages, 2)) for k in after
                    if k not in COUNTED and after[k] > before.get(k, 0.0)),
                    key=lambda kv: -kv[1]))
            return out
        finally:
            node.stop()


def main(args: Any) -> None:
    r = run(args.members, args.messages, args.store)
    f, g, d = (r["fanout_to_last_member_ms"], r["group_sent_ms"],
               r["direct_sent_during_fanout_ms"])
    print(f"fan-out to {r['members']} members: send -> last member {f['median']} ms median"
          f" ({f['max']} max); SENT for the group message {g['median']} ms median"
          f" ({g['max']} max); SENT for a 1:1 message during the fan-out {d['median']} ms"
          f" median ({d['max']} max)")
    if "cassandra_paxos_per_group_msg" in r:
        print(f"Cassandra per group message: {r['cassandra_requests_per_group_msg']} requests,"
              f" {r['cassandra_paxos_per_group_msg']} Paxos rounds; by statement:"
              f" {r['cassandra_requests_per_group_msg_by_statement']}")
    print(f"saved {save('fanout', r)}")
