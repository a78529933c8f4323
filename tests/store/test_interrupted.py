"""Sends cut short between their steps, and devices attaching at the same moment: what the
chaos checker found on the Cassandra store (docs/RELIABILITY.md, findings 2, 4 and 5).

A send is (1) claim the seq, (2) write the message (and a group's fan-out job), (3) append the
inbox items, (4) mark the claim done; an interrupted send is completed by the client's retry
(same client id), which redoes 2-4 if the claim is not done, or is answered as a duplicate if it
is. Interruptions are simulated by failing (or cancelling) a store request after it applied."""

from __future__ import annotations

import trio

from chatd.protocol.frames import Deliver
from chatd.store import NewMessage, Store

USERS = ["u0", "u1", "u2", "u3"]


async def test_two_devices_attaching_at_once_both_get_the_copies(store: Store) -> None:
    """Finding 5: two devices of a user attaching at the same moment each read the devices
    before either had written its row; the count cached was 1, so for 2 s what the user sent
    from one device was not copied for the other."""
    for u in USERS:
        async with trio.open_nursery() as nursery:
            for d in ("a", "b"):
                nursery.start_soon(store.attach_device, u, d)
    for i, u in enumerate(USERS):
        await store.append_message(NewMessage(u, "a", f"c{i}", f"d:{u}:zed", ("zed",), b"hi",
                                              10 + i))
    for u in USERS:
        page = await store.inbox(u, "b", 0, 100)
        assert [it.id for it in page.items if isinstance(it, Deliver)] == \
            [f"c{USERS.index(u)}"], u
