"""Random group histories: whoever was a member when a message was sent gets it exactly once
(after de-duplication by inbox position, as clients do), in order; nobody else gets it."""

from __future__ import annotations

from typing import Any

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from chatd.core import Delivery
from chatd.store import NewMessage, open_store

USERS = ["u0", "u1", "u2", "u3", "u4"]
user = st.sampled_from(USERS)
steps = st.lists(st.one_of(
    st.tuples(st.just("add"), user),
    st.tuples(st.just("remove"), user),
    st.tuples(st.just("send"), user),
    st.tuples(st.just("receive"), user, st.floats(0, 1)),  # read the inbox, ack part of it
), max_size=40)


class Device:
    """What a client keeps: the highest inbox position seen, and the chat it shows."""

    def __init__(self) -> None:
        self.max_q = 0
        self.shown: list[tuple[int, bytes]] = []


async def run(initial: list[str], program: list[tuple[Any, ...]]) -> None:
    async with open_store("memory://") as store:
        for u in USERS:
            await store.attach_device(u, "d")
        info = await store.create_group("g", "G", "u0", initial, ts=0)
        assert info is not None
        members = set(info.members)
        expected: dict[str, list[bytes]] = {u: [] for u in USERS}
        devices = {u: Device() for u in USERS}
        n = 0

        async def receive(u: str, fraction: float) -> None:
            dev = devices[u]
            cursor = await store.cursor(u, "d")
            page = await store.inbox(u, "d", cursor, 1000)
            for item in page.items:
                if item.q <= dev.max_q:
                    continue  # a repeat after reconnecting: dropped
                dev.max_q = item.q
                if isinstance(item, Delivery) and item.conv == "g:g" and item.event is None:
                    dev.shown.append((item.seq, item.body))
            await store.ack(u, "d", cursor + int((page.upto - cursor) * fraction), ts=1)

        for step in program:
            kind, u = step[0], step[1]
            if kind == "add" and u not in members:
                await store.change_group("g", "u0", 1, add=(u,))
                members.add(u)
            elif kind == "remove" and u in members and u != "u0":
                await store.change_group("g", "u0", 1, remove=(u,))
                members.discard(u)
            elif kind == "send" and u in members:
                n += 1
                body = f"m{n}".encode()
                await store.append_message(NewMessage(u, "d", f"c{n}", "g:g", (), body, 1,
                                                      group="g"))
                for m in members - {u}:
                    expected[m].append(body)
            elif kind == "receive":
                await receive(u, step[2])
        for _ in range(10):  # let the fan-out finish
            await trio.sleep(0)
            await store.has_user("u0")
        for u in USERS:
            await receive(u, 1.0)
            shown = devices[u].shown
            assert [b for _, b in shown] == expected[u], u
            assert [s for s, _ in shown] == sorted(s for s, _ in shown)


@given(st.lists(user, max_size=4, unique=True), steps)
@settings(max_examples=60, deadline=None)
def test_group_delivery_follows_membership_at_send_time(initial: list[str],
                                                        program: list[tuple[Any, ...]]) -> None:
    trio.run(run, initial, program)
