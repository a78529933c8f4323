"""A real chatd node on loopback (ephemeral ports) inside the test's trio loop."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import chatd_client
import pytest
import trio

from chatd.auth import load_or_create_secret, make_token
from chatd.server import ChatServer, Config, serve


@dataclasses.dataclass
class Node:
    server: ChatServer
    config: Config

    @property
    def tcp(self) -> str:
        return f"tcp://127.0.0.1:{self.server.tcp_port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.server.ws_port}/ws"

    def token(self, user: str, device: str | None = None, ttl: float = 3600) -> str:
        return make_token(self.server.secret, user, device, ttl)

    async def add_users(self, *users: str) -> None:
        for u in users:
            await self.server.store.add_user(u)

    def connect(self, user: str, device: str = "default", url: str | None = None,
                **options: Any) -> Any:
        return chatd_client.connect(url or self.tcp, self.token(user), device, **options)


StartNode = Callable[..., Any]


@pytest.fixture(params=["sqlite", "cassandra"])
async def start_node(request: pytest.FixtureRequest, tmp_path: Path,
                     nursery: trio.Nursery) -> AsyncIterator[StartNode]:
    """Start a node on the embedded store, and again (the same test) on Cassandra."""
    url = None
    if request.param == "cassandra":
        cassandra = request.getfixturevalue("cassandra")
        cassandra.truncate()
        url = cassandra.url()

    async def start(**overrides: Any) -> Node:
        cfg = Config(host="127.0.0.1", tcp_port=0, ws_port=0, data_dir=str(tmp_path / "data"))
        if url is not None:
            cfg.store = url
        for k, v in overrides.items():
            setattr(cfg, k, v)
        load_or_create_secret(cfg.data_dir)
        server = await nursery.start(serve, cfg)
        return Node(server, cfg)

    yield start


@pytest.fixture
async def node(start_node: StartNode) -> Node:
    n: Node = await start_node()
    await n.add_users("alice", "bob", "carol")
    return n


async def messages(client: chatd_client.Client, n: int,
                   timeout: float = 10) -> list[chatd_client.Message]:
    """The client's next n messages (other events skipped), failing after timeout."""
    out: list[chatd_client.Message] = []
    with trio.fail_after(timeout):
        while len(out) < n:
            m = await client.next_event(chatd_client.Message)
            assert isinstance(m, chatd_client.Message)
            out.append(m)
    return out
