"""Server memory per idle authenticated connection, against a bare trio server holding the
same number of idle connections (one task each, reading), measured in the same run; over TCP,
and over WebSocket (`--transport ws`, or `both`: the same node, one after the other)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from typing import Any

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request

from chatd.protocol import NEED_DATA, PEER_CLOSED, Connection, Framing, Role
from chatd.protocol import frames as F

from .common import ChatdProcess, RawClient, free_port, rss_kib, save, wait_listening

TRANSPORTS = ("tcp", "ws")

BARE_SERVER = """
import sys, trio
async def handle(stream):
    while await stream.receive_some(4096):
        pass
trio.run(trio.serve_tcp, handle, int(sys.argv[1]))
"""


async def ws_connect(port: int, token: str, source: str | None = None
                     ) -> tuple[trio.SocketStream, Connection]:
    """A WebSocket connection to /ws that sent Hello and got Synced (a raw wsproto client:
    no task, no buffers of a client library in the way): the open stream, and the protocol
    connection (its frames go in binary messages)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
    ws = WSConnection(ConnectionType.CLIENT)
    conn = Connection(Role.CLIENT, Framing.MESSAGE)
    try:
        await stream.send_all(ws.send(Request(host=f"127.0.0.1:{port}", target="/ws")))
        accepted = False
        while True:
            data = await stream.receive_some(65536)
            if not data:
                raise EOFError("closed during the handshake" if not accepted else "closed")
            ws.receive_data(data)
            for ev in ws.events():
                if isinstance(ev, AcceptConnection):
                    accepted = True
                    await stream.send_all(ws.send(BytesMessage(conn.send(F.Hello(
                        version=1, token=token, device="d")))))
                elif isinstance(ev, BytesMessage):
                    conn.receive_data(ev.data)
                elif not accepted:
                    raise EOFError(f"refused: {ev}")
            while (frame := conn.next_event()) is not NEED_DATA:
                if frame is PEER_CLOSED or isinstance(frame, F.Error):
                    raise EOFError(str(frame))
                if isinstance(frame, F.Synced):
                    return stream, conn
    except BaseException:
        await stream.aclose()
        raise


async def open_idle(port: int, n: int, token: Any, transport: str = "tcp") -> list[Any]:
    """n connections, authenticated when token is given; kept open by the caller."""
    conns: list[Any] = []
    limiter = trio.CapacityLimiter(200)

    async def one(i: int) -> None:
        async with limiter:
            if token is None:
                conns.append(await trio.open_tcp_stream("127.0.0.1", port))
            elif transport == "ws":
                conns.append((await ws_connect(port, token(f"u{i}")))[0])
            else:
                conns.append(await RawClient.connect(port, token(f"u{i}"), wait_synced=True))

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return conns


async def measure(pid: int, port: int, n: int, token: Any, transport: str = "tcp"
                  ) -> dict[str, Any]:
    # let lazy allocations happen before the baseline
    warm = await open_idle(port, 50, token, transport)
    await trio.sleep(0.5)
    before = rss_kib(pid)
    t0 = time.perf_counter()
    conns = await open_idle(port, n, token, transport)
    connect_s = time.perf_counter() - t0
    await trio.sleep(1.0)
    after = rss_kib(pid)
    for c in conns + warm:
        await (c.stream if hasattr(c, "stream") else c).aclose()
    return {"connections": n, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_connection": round((after - before) / n, 2),
            "connects_per_s": round(n / connect_s)}


def run(n: int, transports: tuple[str, ...] = ("tcp",)) -> dict[str, Any]:
    port = free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(port)])
    try:
        wait_listening(port, bare)
        bare_res = trio.run(measure, bare.pid, port, n, None)
    finally:
        bare.kill()
        bare.wait()
    out: dict[str, Any] = {"bare_trio": bare_res}
    ws_port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        # a fresh node per transport: the second measurement would start from the first's heap
        for transport in transports:
            node = ChatdProcess(f"{tmp}/{transport}", [f"u{i}" for i in range(n + 50)],
                                extra=("--ws-port", str(ws_port)) if transport == "ws" else (),
                                env={"CHATD_MAX_UNAUTHENTICATED_PER_ADDRESS": "1024"})
            try:
                port = ws_port if transport == "ws" else node.port
                res = trio.run(measure, node.proc.pid, port, n, node.token, transport)
            finally:
                node.stop()
            name = "chatd" if transport == "tcp" else f"chatd_{transport}"
            out[name] = res
            out[f"ratio_vs_bare{name[5:]}"] = round(
                res["kib_per_connection"] / max(bare_res["kib_per_connection"], 0.01), 2)
    return out


def main(args: Any) -> None:
    transports = TRANSPORTS if getattr(args, "transport", "tcp") == "both" else (
        getattr(args, "transport", "tcp"),)
    result = run(args.connections, transports)
    for name in ("bare_trio", "chatd", "chatd_ws"):
        if name not in result:
            continue
        r = result[name]
        print(f"{name:9} {r['connections']:6} idle connections: {r['kib_per_connection']:6.2f}"
              f" KiB each (RSS {r['rss_before_kib']} -> {r['rss_after_kib']} KiB),"
              f" {r['connects_per_s']:,} connects/s")
    ratios = ", ".join(f"chatd{k[13:] or ''} / bare = {v:.2f}" for k, v in result.items()
                       if k.startswith("ratio_vs_bare"))
    print(f"{ratios}; bar: <= 8 KiB per authenticated connection")
    print(f"saved {save('memory', result)}")
