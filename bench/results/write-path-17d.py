"""Issue 17, fourth batch: the event loop's CPU per frame written to a device, alone.
M sessions over socketpairs; each "tick" queues one small frame per session (as a commit
of M messages to M devices does), then waits until every frame is written. A thread reads
the other ends. Prints the trio thread's CPU (time.thread_time) per frame. Run with
PYTHONPATH=<tree>:<tree>/clients python bench/results/write-path-17d.py [M] [TICKS]"""
import collections
import socket
import sys
import threading
import time

import trio

from chatd.protocol import Connection, Role
from chatd.protocol import frames as F
from chatd.server import session as S
from chatd.server.config import Config
from chatd.server.transport import StreamTransport

M = int(sys.argv[1]) if len(sys.argv) > 1 else 50
TICKS = int(sys.argv[2]) if len(sys.argv) > 2 else 2000


class Server:  # what Session uses of ChatServer here
    def __init__(self) -> None:
        self.config = Config()
        self.stats: collections.Counter[str] = collections.Counter()
        self.flusher = S.Flusher() if hasattr(S, "Flusher") else None


def reader(socks: list[socket.socket], want: int, got: list[int]) -> None:
    import selectors
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    while got[0] < want:
        for key, _ in sel.select(1):
            got[0] += len(key.fileobj.recv(1 << 16))  # type: ignore[union-attr]


async def main() -> None:
    server = Server()
    pairs = [socket.socketpair() for _ in range(M)]
    frame = Connection(Role.SERVER).frame_bytes(b"\x81\xa1t\x05" + b"x" * 60)
    got = [0]
    t = threading.Thread(target=reader, args=([b for _, b in pairs], M * TICKS * len(frame),
                                              got), daemon=True)
    t.start()
    async with trio.open_nursery() as nursery:
        if server.flusher is not None:
            await nursery.start(server.flusher.run)
        sessions = []
        for a, _ in pairs:
            conn = Connection(Role.SERVER)
            s = S.Session(server, StreamTransport(trio.SocketStream(trio.socket.from_stdlib_socket(a))),  # type: ignore[arg-type]
                          conn, "u", "d", 0)
            s._nursery = nursery
            s._need_sync = False
            sessions.append(s)
        c0, w0 = time.thread_time(), time.perf_counter()
        for _ in range(TICKS):
            for s in sessions:
                s._queue(frame)
            for _ in range(4):  # let the writers or the flusher write
                await trio.sleep(0)
            while any(s._writing or s._out for s in sessions):
                await trio.sleep(0)
        cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
        while got[0] < M * TICKS * len(frame):
            await trio.sleep(0.01)
        print(f"M={M} ticks={TICKS}: trio thread CPU {cpu / (M * TICKS) * 1e6:.2f} us per frame"
              f" written, wall {wall / (M * TICKS) * 1e6:.2f} us")
        nursery.cancel_scope.cancel()


trio.run(main)
