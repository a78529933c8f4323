"""Server memory per idle authenticated connection, against a bare trio server holding the
same number of idle connections (one task each, reading), measured in the same run."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from typing import Any

import trio

from .common import ChatdProcess, RawClient, free_port, rss_kib, save, wait_listening

BARE_SERVER = """
import sys, trio
async def handle(stream):
    while await stream.receive_some(4096):
        pass
trio.run(trio.serve_tcp, handle, int(sys.argv[1]))
"""


async def open_idle(port: int, n: int, token: Any) -> list[Any]:
    """n connections, authenticated when token is given; kept open by the caller."""
    conns: list[Any] = []
    limiter = trio.CapacityLimiter(200)

    async def one(i: int) -> None:
        async with limiter:
            if token is None:
                conns.append(await trio.open_tcp_stream("127.0.0.1", port))
            else:
                conns.append(await RawClient.connect(port, token(f"u{i}"), wait_synced=True))

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return conns


async def measure(pid: int, port: int, n: int, token: Any) -> dict[str, Any]:
    warm = await open_idle(port, 50, token)  # let lazy allocations happen before the baseline
    await trio.sleep(0.5)
    before = rss_kib(pid)
    t0 = time.perf_counter()
    conns = await open_idle(port, n, token)
    connect_s = time.perf_counter() - t0
    await trio.sleep(1.0)
    after = rss_kib(pid)
    for c in conns + warm:
        await (c.stream if hasattr(c, "stream") else c).aclose()
    return {"connections": n, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_connection": round((after - before) / n, 2),
            "connects_per_s": round(n / connect_s)}


def run(n: int) -> dict[str, Any]:
    port = free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(port)])
    try:
        wait_listening(port, bare)
        bare_res = trio.run(measure, bare.pid, port, n, None)
    finally:
        bare.kill()
        bare.wait()
    with tempfile.TemporaryDirectory() as tmp:
        node = ChatdProcess(tmp, [f"u{i}" for i in range(n + 50)])
        try:
            chatd_res = trio.run(measure, node.proc.pid, node.port, n, node.token)
        finally:
            node.stop()
    return {"bare_trio": bare_res, "chatd": chatd_res,
            "ratio_vs_bare": round(chatd_res["kib_per_connection"]
                                   / max(bare_res["kib_per_connection"], 0.01), 2)}


def main(args: Any) -> None:
    result = run(args.connections)
    for name in ("bare_trio", "chatd"):
        r = result[name]
        print(f"{name:9} {r['connections']:6} idle connections: {r['kib_per_connection']:6.2f}"
              f" KiB each (RSS {r['rss_before_kib']} -> {r['rss_after_kib']} KiB),"
              f" {r['connects_per_s']:,} connects/s")
    print(f"chatd / bare = {result['ratio_vs_bare']:.2f}; bar: <= 8 KiB per authenticated"
          " connection")
    print(f"saved {save('memory', result)}")
