"""The floor's ceiling: a bare trio relay with no auth, storage or receipts.

It speaks just enough of protocol v1 for the same load client: Hello gets a Welcome and a
Synced at once (the token is taken as the user name); Send(to=X) becomes a Deliver on X's
connection. The load client's receivers answer each Deliver with a Send back to the sender,
which stands in for the DELIVERED receipt. Run: python -m bench.relay PORT
"""

from __future__ import annotations

import sys

import trio

from chatd.protocol import NEED_DATA, PEER_CLOSED, Connection, Role, encode_body
from chatd.protocol import frames as F

# user -> (connection, stream, lock): several handlers may write to one stream at once (its
# own Welcome, Delivers from different senders); trio allows one sender at a time
conns: dict[str, tuple[Connection, trio.SocketStream, trio.Lock]] = {}


async def handle(stream: trio.SocketStream) -> None:
    conn = Connection(Role.SERVER)
    user = None
    try:
        while True:
            data = await stream.receive_some(262144)
            conn.receive_data(data)
            out: dict[str, list[bytes]] = {}
            while (ev := conn.next_event()) is not NEED_DATA:
                if ev is PEER_CLOSED:
                    return
                if isinstance(ev, F.Hello):
                    user = ev.token
                    lock = trio.Lock()
                    conns[user] = (conn, stream, lock)
                    async with lock:
                        await stream.send_all(conn.send(F.Welcome(
                            version=1, user=user, device=ev.device, session="r",
                            server_time=0, heartbeat_ms=30000, max_frame=1 << 20))
                            + conn.send(F.Synced(upto=0)))
                elif isinstance(ev, F.Send) and ev.to in conns and user is not None:
                    body = encode_body(F.Deliver(q=1, conv="d:a:b", seq=1, ts=0, sender=user,
                                                 device="d", id=ev.id, body=ev.body))
                    out.setdefault(ev.to, []).append(len(body).to_bytes(4, "big") + body)
            for to, frames in out.items():
                if to in conns:
                    _, dest, lock = conns[to]
                    try:
                        async with lock:
                            await dest.send_all(b"".join(frames))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass  # the receiver went away, not this sender
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        if user is not None and user in conns and conns[user][1] is stream:
            del conns[user]


def main() -> None:
    trio.run(trio.serve_tcp, handle, int(sys.argv[1]))


if __name__ == "__main__":
    main()
