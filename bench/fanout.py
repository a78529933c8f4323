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

from .common import ChatdProcess, RawClient, save


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


def run(size: int, messages: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        node = ChatdProcess(tmp, ["alice", *(f"m{i}" for i in range(size - 1))])
        try:
            return trio.run(measure, node, size, messages)
        finally:
            node.stop()


def main(args: Any) -> None:
    r = run(args.members, args.messages)
    f, g, d = (r["fanout_to_last_member_ms"], r["group_sent_ms"],
               r["direct_sent_during_fanout_ms"])
    print(f"fan-out to {r['members']} members: send -> last member {f['median']} ms median"
          f" ({f['max']} max); SENT for the group message {g['median']} ms median"
          f" ({g['max']} max); SENT for a 1:1 message during the fan-out {d['median']} ms"
          f" median ({d['max']} max)")
    print(f"saved {save('fanout', r)}")
