"""A device that was away drains N queued messages: time from its Hello to the last message
(and to Synced). Bar: 10,000 messages in under a second."""

from __future__ import annotations

import tempfile
import time
from typing import Any

import trio

from chatd.protocol import frames as F

from .common import ChatdProcess, RawClient, save

BODY = b"q" * 100


async def measure(node: ChatdProcess, n: int) -> dict[str, Any]:
    bob = await RawClient.connect(node.port, node.token("bob"), "phone")  # register the device
    await bob.stream.aclose()
    alice = await RawClient.connect(node.port, node.token("alice"))
    for start in range(0, n, 500):
        await alice.send(*(F.Send(id=f"d{i}", to="bob", body=BODY)
                           for i in range(start, min(n, start + 500))))
        got = 0
        while got < min(500, n - start):
            got += sum(isinstance(f, F.Sent) for f in await alice.batch())
    t0 = time.perf_counter()
    bob = await RawClient.connect(node.port, node.token("bob"), "phone", wait_synced=False)
    received, last_msg = 0, 0.0
    while True:
        frames = await bob.batch()
        upto = 0
        for f in frames:
            if isinstance(f, F.Deliver):
                received += 1
                upto = f.q
                if received == n:
                    last_msg = time.perf_counter() - t0
            elif isinstance(f, F.Synced):
                synced = time.perf_counter() - t0
                await bob.stream.aclose()
                await alice.stream.aclose()
                return {"messages": n, "received": received, "seconds_to_last": round(last_msg, 3),
                        "seconds_to_synced": round(synced, 3),
                        "msgs_per_s": round(n / last_msg) if last_msg else None}
        if upto:
            await bob.send(F.Ack(upto=upto))


def run(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        node = ChatdProcess(tmp, ["alice", "bob"])
        try:
            return trio.run(measure, node, n)
        finally:
            node.stop()


def main(args: Any) -> None:
    r = run(args.messages)
    print(f"drain: {r['received']:,} of {r['messages']:,} queued messages in"
          f" {r['seconds_to_last']:.3f} s ({r['msgs_per_s']:,} msg/s), Synced after"
          f" {r['seconds_to_synced']:.3f} s; bar: 10,000 in under 1 s")
    print(f"saved {save('drain', r)}")
