"""Request handlers without sockets: a real (in-memory SQLite) store, a device that keeps
what it is sent, and the node seen through chatd.server.node's protocols."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from chatd.protocol import ErrorCode, Frame
from chatd.protocol import frames as F
from chatd.server import handlers
from chatd.server.config import Config
from chatd.server.limits import UserLimits
from chatd.store import Store, open_store


@dataclasses.dataclass
class FakeDevice:
    user: str
    device: str = "d1"
    watching: set[str] | None = None
    refused: Any = None
    backed_up: bool = False
    frames: list[Frame] = dataclasses.field(default_factory=list)
    paused: int = 0
    resynced: list[int] = dataclasses.field(default_factory=list)

    def send_frame(self, frame: Frame) -> None:
        self.frames.append(frame)

    def send_presence(self, frame: F.Presence) -> None:
        self.frames.append(frame)

    def error(self, code: ErrorCode, message: str, ref: str | None = None,
              rid: int | None = None, retry_ms: int | None = None) -> None:
        self.frames.append(F.Error(code=code, message=message, ref=ref, rid=rid,
                                   retry_ms=retry_ms))

    def pause(self) -> None:
        self.paused += 1

    def resync(self, cursor: int) -> None:
        self.resynced.append(cursor)

    def last(self) -> Any:
        return self.frames[-1]


class FakeNode:
    def __init__(self, store: Store, **settings: Any) -> None:
        self.config = Config(**settings)
        self.store = store
        self.limits = UserLimits(self.config)
        self.stats: collections.Counter[str] = collections.Counter()
        self.media = None
        self.media_url = ""
        self.presence: Any = None
        self.finishing: set[Any] = set()

    async def user_exists(self, user: str) -> bool:
        return await self.store.has_user(user)


@pytest.fixture
async def node() -> AsyncIterator[FakeNode]:
    async with open_store("memory://") as store:
        for u in ("alice", "bob", "carol", "dave"):
            await store.add_user(u)
        yield FakeNode(store, group_max_members=3)


async def test_a_group_is_made_and_only_its_admin_changes_it(node: FakeNode) -> None:
    alice, bob = FakeDevice("alice"), FakeDevice("bob")
    await handlers.handle(node, alice, F.GroupCreate(rid=1, name="trip", members=("bob",)))
    group = alice.last()
    assert isinstance(group, F.Group) and group.admins == ("alice",)
    await handlers.handle(node, bob, F.GroupAdd(rid=2, group=group.group, users=("carol",)))
    assert bob.last().code == ErrorCode.FORBIDDEN and bob.last().rid == 2
    await handlers.handle(node, alice, F.GroupAdd(rid=3, group=group.group,
                                                  users=("carol", "dave")))
    assert alice.last().code == ErrorCode.INVALID  # over group_max_members
    await handlers.handle(node, bob, F.GroupLeave(rid=4, group=group.group))
    assert bob.last() == F.Ok(rid=4)
    await handlers.handle(node, bob, F.GroupInfo(rid=5, group=group.group))
    assert bob.last().code == ErrorCode.FORBIDDEN  # not a member any more


async def test_sends_are_answered_in_order_with_their_seqs_or_errors(node: FakeNode) -> None:
    alice = FakeDevice("alice")
    await handlers.sends(node, alice, [F.Send(id="1", to="bob", body=b"hi"),
                                       F.Send(id="2", to="zed", body=b"?"),
                                       F.Send(id="3", to="bob", body=b"again")])
    sent = [f for f in alice.frames if isinstance(f, F.Sent)]
    assert [(f.id, f.seq, f.conv) for f in sent] == [("1", 1, "d:alice:bob"),
                                                     ("3", 2, "d:alice:bob")]
    errors = [f for f in alice.frames if isinstance(f, F.Error)]
    assert [(e.ref, e.code) for e in errors] == [("2", ErrorCode.UNKNOWN_TARGET)]


async def test_a_conversation_id_must_be_one_the_user_is_in(node: FakeNode) -> None:
    carol = FakeDevice("carol")
    for conv, code in (("d:bob:alice", ErrorCode.INVALID), ("d:alice:bob", ErrorCode.FORBIDDEN),
                       ("g:nope", ErrorCode.UNKNOWN_TARGET)):
        await handlers.handle(node, carol, F.History(rid=7, conv=conv))
        assert (carol.last().code, carol.last().rid) == (code, 7)


async def test_a_disappearing_chat_needs_a_ttl(node: FakeNode) -> None:
    alice = FakeDevice("alice")
    await handlers.handle(node, alice, F.SetMode(rid=1, conv="d:alice:bob",
                                                 mode=F.Mode.DISAPPEARING, ttl=0))
    assert alice.last().code == ErrorCode.INVALID
    await handlers.handle(node, alice, F.SetMode(rid=2, conv="d:alice:bob",
                                                 mode=F.Mode.PERMANENT, ttl=0))
    assert alice.last() == F.Ok(rid=2)
    assert await node.store.conv_mode("d:alice:bob") == (F.Mode.PERMANENT, 0)


async def test_over_the_request_rate_the_device_is_paused_and_told_when(node: FakeNode) -> None:
    node.limits = UserLimits(Config(request_rate=1, request_burst=1))
    alice = FakeDevice("alice")
    await handlers.handle(node, alice, F.Ping(nonce=1))
    await handlers.handle(node, alice, F.Ping(nonce=2))
    assert alice.frames[0] == F.Pong(nonce=1)
    assert alice.last().code == ErrorCode.RATE_LIMITED and alice.last().retry_ms > 0
    assert alice.paused == 1


async def test_sync_starts_the_inbox_again_from_the_devices_cursor(node: FakeNode) -> None:
    await node.store.attach_device("alice", "d1")
    alice = FakeDevice("alice")
    await handlers.handle(node, alice, F.Sync())
    assert alice.resynced == [0]
