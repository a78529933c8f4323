"""Chat modes in the store: what collect() deletes, checked in the store itself."""

from __future__ import annotations

from chatd.core import Delivery
from chatd.protocol.frames import Mode
from chatd.store import NewMessage, Store, direct_conv

DAY = 86_400_000
CONV = direct_conv("alice", "bob")


def msg(cid: str, ts: int) -> NewMessage:
    return NewMessage("alice", "phone", cid, CONV, ("bob",), b"x", ts)


async def stored(store: Store) -> list[int]:
    return sorted(h.seq for h in await store.history(CONV, None, 100)
                  if h.event is None)


async def setup(store: Store) -> None:
    await store.attach_device("alice", "phone")
    await store.attach_device("bob", "phone")
    await store.attach_device("bob", "laptop")


async def test_temporary_messages_go_once_every_device_has_them(store: Store) -> None:
    await setup(store)
    for i in range(3):
        await store.append_message(msg(f"m{i}", ts=1000))
    await store.ack("bob", "phone", 3, ts=2000)
    await store.collect(now=3000, max_age_ms=30 * DAY)
    assert await stored(store) == [1, 2, 3]  # the laptop has not acknowledged yet
    await store.ack("bob", "laptop", 2, ts=2000)
    gone = await store.collect(now=3000, max_age_ms=30 * DAY)
    assert await stored(store) == [3] and gone["delivered"] == 2
    page = await store.inbox("bob", "laptop", 2, 10)  # what is pending is still delivered
    assert [i.seq for i in page.items if isinstance(i, Delivery)] == [3]


async def test_temporary_messages_never_delivered_go_after_max_age(store: Store) -> None:
    await setup(store)
    await store.append_message(msg("old", ts=1000))
    await store.append_message(msg("new", ts=20 * DAY))
    gone = await store.collect(now=31 * DAY, max_age_ms=30 * DAY)
    assert await stored(store) == [2] and gone["too_old"] == 1
    page = await store.inbox("bob", "phone", 0, 10)
    assert [i.id for i in page.items if isinstance(i, Delivery)] == ["new"]


async def test_permanent_history_stays(store: Store) -> None:
    await setup(store)
    await store.set_mode(CONV, Mode.PERMANENT, 0, "alice", ts=500)
    assert await store.conv_mode(CONV) == (Mode.PERMANENT, 0)
    for i in range(3):
        await store.append_message(msg(f"p{i}", ts=1000))
    for dev in ("phone", "laptop"):
        await store.ack("bob", dev, 100, ts=2000)
    await store.collect(now=400 * DAY, max_age_ms=30 * DAY)
    assert await stored(store) == [2, 3, 4]  # seq 1 is the mode-change event


async def test_disappearing_messages_expire_for_everyone(store: Store) -> None:
    await setup(store)
    now = 3 * 3600_000  # (times grow with seqs, as the server stamps them)
    await store.set_mode(CONV, Mode.DISAPPEARING, 3600, "alice", ts=now - 3600_000 - 10_000)
    await store.append_message(msg("soon", ts=now - 3600_000 - 1))  # older than the ttl
    await store.append_message(msg("later", ts=now - 3600_000 + 60_000))  # a minute to go
    await store.append_message(msg("new", ts=now - 5_000))  # (older than ttl *ms*: 3.6 s)
    gone = await store.collect(now=now, max_age_ms=30 * DAY)
    assert gone["expired"] == 2 and await stored(store) == [3, 4]  # the mode event and "soon"
    page = await store.inbox("bob", "phone", 0, 10)  # undelivered but expired: gone too
    assert [i.id for i in page.items if isinstance(i, Delivery) and not i.event] == \
        ["later", "new"]
    gone = await store.collect(now=now + 60_001, max_age_ms=30 * DAY)  # the ttl is seconds
    assert gone["expired"] == 1 and await stored(store) == [4]


async def test_mode_change_is_an_event_in_the_chat(store: Store) -> None:
    await setup(store)
    await store.set_mode(CONV, Mode.PERMANENT, 0, "alice", ts=1)
    page = await store.inbox("bob", "phone", 0, 10)
    events = [i.event for i in page.items if isinstance(i, Delivery)]
    assert events == [{"kind": "mode", "mode": 1, "ttl": 0, "by": "alice"}]
