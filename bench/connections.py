"""Connection scaling: ramp one node to a target of idle, authenticated, heart-beating
connections (100,000 by default) and hold them.

One process may hold at most 20,000 open files here, so the node runs several workers
(`chatd serve --workers W`) and the connections come from several load processes (this module
run with --loader), each opening its share from loopback source addresses 127.0.0.2,
127.0.0.3, ... (a source address has ~28,000 ephemeral ports). Every connection sends Hello
with its own user's token, waits for Synced, then pings every heartbeat.

`--transport ws`: the same over WebSocket (/ws; every Hello and ping a binary message).

Reported: connect rate, server memory per connection (RSS of every process of the node, after
minus before), server CPU while holding them idle, and 1:1 message latency (send -> DELIVERED
receipt) from a few extra pairs while all of them are held. Progress is printed each second.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import urllib.request
from typing import Any

import trio
from wsproto.frame_protocol import FrameProtocol

from chatd.auth import load_or_create_secret, make_token
from chatd.protocol import NEED_DATA, PEER_CLOSED, Connection, Role
from chatd.protocol import frames as F

from .common import ChatdProcess, free_port, percentile, save
from .memory import ws_connect
from .plots import plot_ramp
from .throughput import connect_pairs, run_pairs

PER_LOADER = 19_000  # connections per load process (the file limit is 20,000)
PER_SOURCE = 25_000  # connections per loopback source address


# ---- a load process ------------------------------------------------------------------------

async def loader(port: int, data_dir: str, first: int, count: int, sources: list[str],
                 heartbeat: float, max_seconds: float, concurrency: int,
                 transport: str = "tcp") -> None:
    secret = load_or_create_secret(data_dir)
    state = {"open": 0, "failed": 0, "closed": 0}
    errors: dict[str, int] = {}
    limiter = trio.CapacityLimiter(concurrency)

    held: list[tuple[trio.SocketStream, Connection]] = []

    async def connect(i: int) -> None:
        source = sources[i // PER_SOURCE % len(sources)]
        async with limiter:
            if transport == "ws":
                try:
                    held.append(await ws_connect(port, make_token(secret, f"c{i}", None, 86400),
                                                 source))
                except (OSError, EOFError, trio.BrokenResourceError) as exc:
                    state["failed"] += 1
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    return
                state["open"] += 1
                return
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
            except OSError as exc:
                state["failed"] += 1
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            conn = Connection(Role.CLIENT)
            try:
                await stream.send_all(conn.send(F.Hello(
                    version=1, token=make_token(secret, f"c{i}", None, 86400), device="d")))
                while True:
                    ev = conn.next_event()
                    if ev is NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                        continue
                    if ev is PEER_CLOSED or isinstance(ev, F.Error):
                        raise EOFError(str(ev))
                    if isinstance(ev, F.Synced):
                        break
            except (OSError, EOFError, trio.BrokenResourceError) as exc:
                state["failed"] += 1
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                await stream.aclose()
                return
        held.append((stream, conn))
        state["open"] += 1

    async def heartbeat_all() -> None:
        """One task pings every held connection once per heartbeat, spread evenly (a timer
        per connection would cost this process more than the server). Pongs are left
        unread in the socket buffers (a few bytes a minute); a connection the server closed
        fails its next ping and is counted as closed."""
        ping = b""  # (the bytes are the same for all)
        while True:
            started = trio.current_time()
            if not ping and held:
                ping = held[0][1].send(F.Ping())
                if transport == "ws":  # a client's binary message (masked: one mask for all)
                    ping = bytes(FrameProtocol(True, []).send_data(ping, True))
            for k, (stream, _) in enumerate(list(held)):
                if stream.socket.fileno() == -1:
                    continue
                try:
                    await stream.socket.send(ping)  # a few bytes: never waits in practice
                except OSError:
                    stream.socket.close()
                    state["open"] -= 1
                    state["closed"] += 1
                if k % 200 == 0:
                    await trio.sleep_until(started + heartbeat * k / max(len(held), 1))
            await trio.sleep_until(started + heartbeat)

    async def report() -> None:
        while True:
            print(json.dumps({**state, "errors": errors}), flush=True)
            await trio.sleep(0.5)

    with trio.move_on_after(max_seconds):  # stops by itself, whatever happens to the parent
        async with trio.open_nursery() as nursery:
            nursery.start_soon(report)
            nursery.start_soon(heartbeat_all)
            async with trio.open_nursery() as connecting:
                for i in range(first, first + count):
                    connecting.start_soon(connect, i)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()


# ---- the orchestrator ----------------------------------------------------------------------

def server_connections(metrics_port: int) -> int:
    """The node's own count of authenticated connections (`chatd_connections`)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("chatd_connections "):
                return int(float(line.split()[1]))
    raise RuntimeError("the node's metrics have no chatd_connections")


async def ramp(node: ChatdProcess, target: int, sources: list[str], heartbeat: float,
               hold: float, max_seconds: float, concurrency: int, probe_pairs: int,
               probe_rate: float, transport: str = "tcp", ws_port: int = -1,
               metrics_port: int = -1) -> dict[str, Any]:
    loaders: list[trio.Process] = []
    status: list[dict[str, Any]] = []
    timeline: list[dict[str, float]] = []

    async def follow(proc: trio.Process, k: int) -> None:
        assert proc.stdout is not None
        buf = b""
        async for chunk in proc.stdout:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                status[k] = json.loads(line)

    def total(key: str) -> int:
        return sum(s.get(key, 0) for s in status)

    rss0 = node.rss_kib()
    cpu0 = node.cpu_seconds()
    t0 = time.monotonic()
    n_loaders = -(-target // PER_LOADER)
    async with trio.open_nursery() as nursery:
        for k in range(n_loaders):
            first = k * PER_LOADER
            count = min(PER_LOADER, target - first)
            status.append({})
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "bench.connections", "--loader",
                 str(ws_port if transport == "ws" else node.port),
                 node.data_dir, str(first), str(count), ",".join(sources), str(heartbeat),
                 str(max_seconds), str(concurrency), transport], stdout=-1)
            loaders.append(proc)
            nursery.start_soon(follow, proc, k)
        # ramp: until every connection is open or failed, or the time is up
        ramp_end = t0 + max_seconds - hold - 30
        last_print = 0.0
        while time.monotonic() < ramp_end:
            await trio.sleep(0.5)
            now = time.monotonic() - t0
            opened, failed = total("open"), total("failed")
            rss = node.rss_kib()
            timeline.append({"t": round(now, 2), "open": opened, "failed": failed,
                             "rss_kib": rss})
            if now - last_print >= 1:
                last_print = now
                rate = opened / now if now else 0
                errs = {k: v for s in status for k, v in s.get("errors", {}).items()}
                print(f"  ramp {now:6.1f}s: {opened:,}/{target:,} open, {failed:,} failed"
                      f" ({rate:,.0f}/s), server RSS {rss / 1024:,.0f} MiB"
                      + (f" errors {errs}" if errs else ""), flush=True)
            if opened + failed >= target:
                break
        ramp_s = time.monotonic() - t0
        opened = total("open")
        await trio.sleep(2)  # let the server settle (allocations, sweeps)
        rss1 = node.rss_kib()
        cpu1, t1 = node.cpu_seconds(), time.monotonic()
        print(f"  holding {opened:,} connections for {hold:g}s", flush=True)
        await trio.sleep(hold)
        idle_cpu = (node.cpu_seconds() - cpu1) / (time.monotonic() - t1)
        # what the node itself still holds (the loaders only learn of a closed connection
        # when a ping to it fails)
        server_held = await trio.to_thread.run_sync(server_connections, metrics_port)
        # latency while holding them: a few extra pairs at a modest rate
        pairs = await connect_pairs(node.port, probe_pairs, node.token, relay=False)
        lat: list[float] = []
        done = await run_pairs(pairs, 4, 5.0, probe_rate / probe_pairs, lat)
        lat.sort()
        for p in pairs:
            await p.sender.stream.aclose()
            await p.receiver.stream.aclose()
        still_open = total("open")
        for proc in loaders:
            proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(30):
            for proc in loaders:
                await proc.wait()
        nursery.cancel_scope.cancel()
    ms = 1000
    return {
        "transport": transport, "target": target, "opened": opened, "failed": total("failed"),
        "errors": {k: v for s in status for k, v in s.get("errors", {}).items()},
        "held_after_hold": still_open, "server_held_after_hold": server_held,
        "loaders": n_loaders, "source_addresses": sources,
        "ramp_seconds": round(ramp_s, 1), "connects_per_s": round(opened / ramp_s),
        "server_rss_before_kib": rss0, "server_rss_after_kib": rss1,
        "kib_per_connection": round((rss1 - rss0) / max(opened, 1), 2),
        "server_cpu_total_s": round(node.cpu_seconds() - cpu0, 1),
        "idle_cpu_cores": round(idle_cpu, 3), "heartbeat_s": heartbeat,
        "probe": {"pairs": probe_pairs, "messages": done, "p50_ms": round(
            percentile(lat, 50) * ms, 2), "p99_ms": round(percentile(lat, 99) * ms, 2),
            "max_ms": round(lat[-1] * ms, 2) if lat else None},
        "timeline": timeline,
    }


def run(target: int, workers: int, hold: float = 20, heartbeat: float = 30,
        sources: int = 0, max_seconds: float = 600, concurrency: int = 100,
        probe_pairs: int = 10, probe_rate: float = 200, transport: str = "tcp"
        ) -> dict[str, Any]:
    addrs = [f"127.0.0.{2 + i}" for i in range(max(sources, -(-target // PER_SOURCE)))]
    with tempfile.TemporaryDirectory() as tmp:
        # the loaders sign in up to `concurrency` connections each at once: more than the
        # default cap on connections signing in (per worker) when the kernel's spread is uneven
        ws_port = free_port() if transport == "ws" else -1
        metrics_port = free_port()
        node = ChatdProcess(tmp, [], workers=workers, extra=(
            "--heartbeat", str(heartbeat), "--idle-timeout", str(heartbeat * 3),
            "--ws-port", str(ws_port), "--metrics-port", str(metrics_port)),
            env={"CHATD_MAX_UNAUTHENTICATED": str(max(1024, target)),
                 "CHATD_MAX_UNAUTHENTICATED_PER_ADDRESS": str(max(1024, target))})
        try:
            result = trio.run(ramp, node, target, addrs, heartbeat, hold, max_seconds,
                              concurrency, probe_pairs, probe_rate, transport, ws_port,
                              metrics_port)
        finally:
            node.stop()
    return {"workers": workers, **result}


def main(args: Any) -> None:
    transport = getattr(args, "transport", "tcp")
    print(f"connections: ramping to {args.target:,} over {transport} with {args.workers}"
          " workers")
    result = run(args.target, args.workers, hold=args.hold, heartbeat=args.heartbeat,
                 max_seconds=args.max_seconds, transport=transport)
    p = result["probe"]
    print(f"opened {result['opened']:,}/{result['target']:,} ({result['failed']:,} failed) in"
          f" {result['ramp_seconds']}s = {result['connects_per_s']:,}/s; still open after the"
          f" hold: {result['held_after_hold']:,} (the node's own count:"
          f" {result['server_held_after_hold']:,})")
    print(f"server memory {result['kib_per_connection']} KiB per connection (bar <= 8);"
          f" idle CPU {result['idle_cpu_cores']:.1%} of a core;"
          f" probe latency p50 {p['p50_ms']} ms p99 {p['p99_ms']} ms ({p['messages']} msgs)")
    path = save("connections" if transport == "tcp" else f"connections_{transport}", result)
    png = plot_ramp(result, path.with_suffix(".png"))
    print(f"saved {path} and {png}")


def loader_main(argv: list[str]) -> None:
    port, data_dir, first, count, sources, heartbeat, max_s, conc, transport = argv
    trio.run(loader, int(port), data_dir, int(first), int(count), sources.split(","),
             float(heartbeat), float(max_s), int(conc), transport)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--loader"]:
        loader_main(sys.argv[2:])
    else:
        p = argparse.ArgumentParser()
        p.add_argument("--target", type=int, default=100_000)
        p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
        p.add_argument("--hold", type=float, default=20)
        p.add_argument("--heartbeat", type=float, default=30)
        p.add_argument("--max-seconds", type=float, default=600)
        p.add_argument("--transport", choices=("tcp", "ws"), default="tcp")
        main(p.parse_args())
