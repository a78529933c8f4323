"""Other processes serving the same users: the workers of one node (`chatd serve --workers N`),
and (with Redis) other nodes.

The store is the source of truth; peers only tell each other *when to look*. A process that
commits inbox items for a user hands them to its own sessions (LocalRouter.dispatch) and to its
peers, which offer them to the sessions they hold for that user. An item that arrives out of
sequence makes the session read the store from its position, so a late, reordered or lost
peer message delays nothing that a reconnect would not repair, and never loses a message.

Peer messages are small msgpack arrays, gathered per scheduler tick and sent as datagrams that
each hold an array of them (one datagram, not one per message, for a burst of connects):
  ["d", origin, [[user, item_body] ...]]   committed inbox items (frame bodies as on the wire)
  ["i", origin, [user ...]]                 inbox grew (item too large to carry): read the store
  ["p", origin, user, online, active_ms]    presence of a user on the origin
  ["k", origin, user, device, at_ms]        a device connected at at_ms: end older connections
  ["h", origin]                             origin (re)started: forget its presence claims
  ["v", origin, user, hidden]               a user's privacy setting changed (hide last seen)
  ["c", origin, rid, what, args, until]     a call to this node: run `what` (chatd.router.calls),
                                            given up by the origin at `until` (wall clock, ms)
  ["r", origin, rid, ok, answer]            the answer to the origin's call rid (or an error text)
Calls and answers go to one node (Outbox.to), the others to every peer that needs them.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable
from typing import Any, Final, Protocol

import msgpack
import trio

log = logging.getLogger("chatd.peers")
MAX_DATAGRAM: Final = 60_000  # bytes of one peer message (Unix datagrams allow ~200 KB)
MAX_CARRIED: Final = 8_192  # larger items travel as a poke: the receiver reads the store


class PeerHandler(Protocol):
    """What a process does with its peers' news."""

    def peer_items(self, items: list[tuple[str, bytes]]) -> None: ...

    def peer_poke(self, users: list[str]) -> None: ...

    def peer_presence(self, origin: str, user: str, online: bool, active: int) -> None: ...

    def peer_kick(self, user: str, device: str, at: int) -> None: ...

    def peer_restarted(self, origin: str) -> None: ...

    def peer_privacy(self, user: str, hidden: bool) -> None: ...

    def peer_call(self, origin: str, rid: int, what: str, args: Any, until: int) -> None:
        ...

    def peer_answer(self, rid: int, ok: bool, answer: Any) -> None: ...

    def peers_rejoined(self) -> None:
        """This process is back in touch with its peers after an outage (Redis away), and
        has told them to forget what it said about presence: say it again."""


class Outbox:
    """Peer news gathered until the next flush, then packed into messages of bounded size.
    Sans-IO: `take()` returns the bytes to send; transports send them."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self._items: list[list[Any]] = []
        self._pokes: list[str] = []
        self._other: list[list[Any]] = []
        self._direct: dict[str, list[list[Any]]] = {}  # node -> messages for it alone

    def __bool__(self) -> bool:
        return bool(self._items or self._pokes or self._other or self._direct)

    def items(self, items: Iterable[tuple[str, bytes]]) -> None:
        for user, body in items:
            if len(body) > MAX_CARRIED:
                self._pokes.append(user)
            else:
                self._items.append([user, body])

    def poke(self, user: str) -> None:
        self._pokes.append(user)

    def raw(self, message: list[Any]) -> None:
        self._other.append(message)

    def to(self, node: str, message: list[Any]) -> None:
        """A message for one node (a call, an answer)."""
        self._direct.setdefault(node, []).append(message)

    def call(self, node: str, rid: int, what: str, args: Any, until: int) -> None:
        self.to(node, ["c", self.origin, rid, what, args, until])

    def answer(self, node: str, rid: int, ok: bool, answer: Any) -> None:
        self.to(node, ["r", self.origin, rid, ok, answer])

    def direct(self) -> dict[str, list[list[Any]]]:
        """Take the messages gathered for single nodes."""
        out, self._direct = self._direct, {}
        return out

    def split(self) -> tuple[list[tuple[str, bytes]], list[str], list[list[Any]]]:
        """Take what was gathered, unpacked: (items, pokes, other messages)."""
        out = ([(u, b) for u, b in self._items], self._pokes, self._other)
        self._items, self._pokes, self._other = [], [], []
        return out

    def presence(self, user: str, online: bool, active: int) -> None:
        self._other.append(["p", self.origin, user, online, active])

    def kick(self, user: str, device: str, at: int) -> None:
        self._other.append(["k", self.origin, user, device, at])

    def hello(self) -> None:
        self._other.append(["h", self.origin])

    def privacy(self, user: str, hidden: bool) -> None:
        self._other.append(["v", self.origin, user, hidden])

    def take(self) -> list[bytes]:
        """Everything gathered, as datagrams of at most about MAX_DATAGRAM bytes, each an
        array of messages, in the order they were gathered within each kind."""
        messages: list[tuple[int, list[Any]]] = [(32, m) for m in self._other]
        for kind, entries in (("d", self._items), ("i", self._pokes)):
            chunk: list[Any] = []
            size = 0
            for e in entries:
                n = len(e[1]) + len(e[0]) + 8 if kind == "d" else len(e) + 4
                if chunk and size + n > MAX_DATAGRAM:
                    messages.append((size, [kind, self.origin, chunk]))
                    chunk, size = [], 0
                chunk.append(e)
                size += n
            if chunk:
                messages.append((size, [kind, self.origin, chunk]))
        self._items, self._pokes, self._other = [], [], []
        out: list[bytes] = []
        batch: list[Any] = []
        total = 0
        for size, m in messages:
            if batch and total + size > MAX_DATAGRAM:
                out.append(msgpack.packb(batch))
                batch, total = [], 0
            batch.append(m)
            total += size
        if batch:
            out.append(msgpack.packb(batch))
        return out


def handle(data: bytes, handler: PeerHandler) -> None:
    """Apply one datagram (an array of peer messages); malformed ones are logged and
    dropped."""
    try:
        batch = msgpack.unpackb(data)
        if type(batch) is not list:
            raise ValueError("not an array")
    except Exception as exc:
        log.warning("dropped a bad peer datagram (%d bytes): %r", len(data), exc)
        return
    for m in batch:
        _handle_one(m, handler)


def _handle_one(m: Any, handler: PeerHandler) -> None:
    try:
        kind = m[0]
        if kind == "d":
            handler.peer_items([(str(u), bytes(b)) for u, b in m[2]])
        elif kind == "i":
            handler.peer_poke([str(u) for u in m[2]])
        elif kind == "p":
            handler.peer_presence(str(m[1]), str(m[2]), bool(m[3]), int(m[4]))
        elif kind == "k":
            handler.peer_kick(str(m[2]), str(m[3]), int(m[4]))
        elif kind == "h":
            handler.peer_restarted(str(m[1]))
        elif kind == "v":
            handler.peer_privacy(str(m[2]), bool(m[3]))
        elif kind == "c":
            handler.peer_call(str(m[1]), int(m[2]), str(m[3]), m[4], int(m[5]))
        elif kind == "r":
            handler.peer_answer(int(m[2]), bool(m[3]), m[4])
        else:
            raise ValueError(f"unknown kind {kind!r}")
    except Exception as exc:  # a peer's bug must not take this process down
        log.warning("dropped a bad peer message: %r", exc)


class Peers(Protocol):
    """A way to reach the other processes (UnixPeers for workers, RedisPeers for nodes)."""

    node_id: str
    outbox: Outbox

    def flush_soon(self) -> None: ...

    def live_nodes(self) -> list[str]:
        """The processes alive (this one included), by node id."""
        ...

    def attach(self, user: str, device: str) -> None:
        """A device of user connected to this process."""

    def detach(self, user: str, device: str) -> None:
        """The device's last connection to this process ended."""

    async def run(self, handler: PeerHandler, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None: ...


class UnixPeers:
    """The workers of one node: one Unix datagram socket each, `<run_dir>/w<i>.sock`.
    Datagrams between live processes on one host are neither lost nor reordered; a worker
    that is gone is skipped (its devices reconnect to another worker and read the store)."""

    def __init__(self, run_dir: str, index: int, count: int) -> None:
        self.run_dir = run_dir
        self.index = index
        self.paths = [os.path.join(run_dir, f"w{i}.sock") for i in range(count)]
        self.node_id = f"w{index}"
        self.outbox = Outbox(self.node_id)
        self._wake = trio.Event()

    def flush_soon(self) -> None:
        self._wake.set()

    def live_nodes(self) -> list[str]:
        """Every worker of the node (the supervisor starts one again that died): each is
        a node to conversation owners (chatd.router.forward)."""
        return [f"w{i}" for i in range(len(self.paths))]

    def attach(self, user: str, device: str) -> None:
        pass  # workers tell every other worker everything: no registry

    def detach(self, user: str, device: str) -> None:
        pass

    async def run(self, handler: PeerHandler, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        path = self.paths[self.index]
        os.makedirs(self.run_dir, exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
        await sock.bind(path)
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4 << 20)
        out = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
        out.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, 4 << 20)  # (calls)
        self.outbox.hello()
        self._wake.set()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive, sock, handler)
                task_status.started()
                while True:
                    await self._wake.wait()
                    self._wake = trio.Event()
                    await trio.lowlevel.checkpoint()  # gather what this tick adds
                    direct = self.outbox.direct()  # (calls and answers: one worker each)
                    for data in self.outbox.take():
                        for i, peer in enumerate(self.paths):
                            if i != self.index:
                                await self._send(out, data, peer)
                    for node, messages in direct.items():
                        to = self._path_of(node)
                        for m in messages:  # (a call may be large: a datagram of its own)
                            if (to is None or not await self._send(
                                    out, msgpack.packb([m]), to)) and m[0] == "c":
                                # (a worker not running: its caller need not wait it out)
                                handler.peer_answer(m[2], False, f"worker {node} is not"
                                                    " running: send it again")
        finally:
            sock.close()
            out.close()
            if os.path.exists(path):
                os.unlink(path)

    def _path_of(self, node: str) -> str | None:
        i = int(node[1:]) if node[:1] == "w" and node[1:].isdigit() else -1
        return self.paths[i] if 0 <= i < len(self.paths) and i != self.index else None

    async def _send(self, out: trio.socket.SocketType, data: bytes, peer: str) -> bool:
        """Send a datagram to a worker; False if it did not go (that worker is not running,
        or it is stuck: the store keeps what it misses)."""
        try:
            with trio.move_on_after(1):
                await out.sendto(data, peer)
                return True
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                log.warning("peer %s: %s", peer, exc)
        return False

    async def _receive(self, sock: trio.socket.SocketType, handler: PeerHandler) -> None:
        while True:
            data = await sock.recv(1 << 17)
            handle(data, handler)
