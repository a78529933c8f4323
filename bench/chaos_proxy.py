"""A TCP proxy on loopback for the chaos checker: one listening port per (device, node), so a
fault can pick a device's connection.

- drop(key): close the device's connections now (the client and the node both see the close);
- drop(key, silent=True): stop forwarding without closing. Bytes that arrive are read and
  thrown away, nothing is closed: the node notices through its idle timeout, the client
  through its missed heartbeats, and each closes its own end. The proxy closes what is left
  once both ends closed, or after `silent_hold` seconds;
- block(key) / unblock(key): the device is offline: its connections are closed and new ones
  are closed as soon as they come.

A connection whose node is gone (refused, reset, closed) is closed towards the client too.
"""

from __future__ import annotations

import trio

UPSTREAM_TIMEOUT = 3.0


class _Link:
    __slots__ = ("client", "scope", "silent", "upstream")

    def __init__(self, client: trio.SocketStream, upstream: trio.SocketStream) -> None:
        self.client = client
        self.upstream = upstream
        self.scope = trio.CancelScope()
        self.silent = False


class _Route:
    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.blocked = False
        self.links: set[_Link] = set()


class Proxy:
    def __init__(self, nursery: trio.Nursery, silent_hold: float = 30.0) -> None:
        self.nursery = nursery
        self.silent_hold = silent_hold
        self.routes: dict[str, _Route] = {}
        self.stats = {"connections": 0, "refused_upstream": 0, "dropped": 0,
                      "silenced": 0, "blocked": 0}

    async def add(self, key: str, target_port: int) -> int:
        """Listen for `key` on a free loopback port (returned), forwarding to target_port."""
        route = _Route(target_port)
        listeners = await self.nursery.start(
            trio.serve_tcp, lambda s: self._serve(route, s), 0)
        route.port = listeners[0].socket.getsockname()[1]
        self.routes[key] = route
        return route.port

    def url(self, key: str) -> str:
        return f"tcp://127.0.0.1:{self.routes[key].port}"

    def links(self, key: str) -> int:
        return sum(1 for link in self.routes[key].links if not link.silent)

    def drop(self, key: str, silent: bool = False) -> int:
        """Drop the forwarding connections of key; how many there were."""
        n = 0
        for link in list(self.routes[key].links):
            if link.silent:
                continue
            n += 1
            if silent:
                link.silent = True
                self.stats["silenced"] += 1
            else:
                link.scope.cancel()
                self.stats["dropped"] += 1
        return n

    def block(self, key: str) -> None:
        self.routes[key].blocked = True
        for link in list(self.routes[key].links):
            link.scope.cancel()

    def unblock(self, key: str) -> None:
        self.routes[key].blocked = False

    async def _serve(self, route: _Route, client: trio.SocketStream) -> None:
        try:
            if route.blocked:
                self.stats["blocked"] += 1
                return
            try:
                with trio.fail_after(UPSTREAM_TIMEOUT):
                    upstream = await trio.open_tcp_stream("127.0.0.1", route.target)
            except (OSError, trio.TooSlowError):
                self.stats["refused_upstream"] += 1
                return
            self.stats["connections"] += 1
            link = _Link(client, upstream)
            route.links.add(link)
            try:
                with link.scope:
                    async with trio.open_nursery() as nursery:
                        ends = [trio.Event(), trio.Event()]
                        nursery.start_soon(self._pump, link, client, upstream, ends[0])
                        nursery.start_soon(self._pump, link, upstream, client, ends[1])
                        await _first(ends)
                        if link.silent:  # wait for both ends to close theirs (or give up)
                            with trio.move_on_after(self.silent_hold):
                                for e in ends:
                                    await e.wait()
                        nursery.cancel_scope.cancel()
            finally:
                route.links.discard(link)
                await trio.aclose_forcefully(upstream)
        finally:
            await trio.aclose_forcefully(client)

    @staticmethod
    async def _pump(link: _Link, src: trio.SocketStream, dst: trio.SocketStream,
                    ended: trio.Event) -> None:
        try:
            while True:
                data = await src.receive_some(65536)
                if not data:
                    break
                if not link.silent:
                    await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            ended.set()
        await trio.sleep_forever()  # the link decides when to close


async def _first(events: list[trio.Event]) -> None:
    async with trio.open_nursery() as nursery:
        for e in events:
            async def wait(e: trio.Event = e) -> None:
                await e.wait()
                nursery.cancel_scope.cancel()
            nursery.start_soon(wait)
