"""In-process routing: user -> the live sessions of that user's devices on this node."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from chatd.core import Item, wire


class Target(Protocol):
    """A connected device as the router sees it."""

    user: str
    device: str

    def offer(self, item: Item, body: bytes) -> None:
        """Take an inbox item (and its encoded frame body) for delivery. Never blocks."""

    def poke(self) -> None:
        """The user's inbox grew where the router did not see it: read the store."""


class LocalRouter:
    """Most users have one device online: that case is stored as the target itself, not a
    one-item list (this map holds an entry for every connection)."""

    def __init__(self) -> None:
        self._by_user: dict[str, Target | list[Target]] = {}
        self._count = 0
        self.dispatched = 0

    def attach(self, target: Target) -> None:
        have = self._by_user.get(target.user)
        if have is None:
            self._by_user[target.user] = target
        elif isinstance(have, list):
            have.append(target)
        else:
            self._by_user[target.user] = [have, target]
        self._count += 1

    def detach(self, target: Target) -> None:
        have = self._by_user.get(target.user)
        if have is target:
            del self._by_user[target.user]
        elif isinstance(have, list) and target in have:
            have.remove(target)
            if len(have) == 1:
                self._by_user[target.user] = have[0]
        else:
            return
        self._count -= 1

    def targets(self, user: str) -> list[Target]:
        have = self._by_user.get(user)
        if have is None:
            return []
        return list(have) if isinstance(have, list) else [have]

    def __iter__(self) -> Iterator[Target]:
        """Every connected target (a snapshot: safe to detach while iterating)."""
        out: list[Target] = []
        for have in self._by_user.values():
            if isinstance(have, list):
                out.extend(have)
            else:
                out.append(have)
        return iter(out)

    def __len__(self) -> int:
        return self._count

    def __contains__(self, user: str) -> bool:
        return user in self._by_user

    def offer(self, user: str, item: Item, body: bytes) -> None:
        """Offer an inbox item (and its encoded frame body) to the user's devices here."""
        have = self._by_user.get(user)
        if have is None:
            return
        if isinstance(have, list):
            for t in list(have):
                t.offer(item, body)
        else:
            have.offer(item, body)
        self.dispatched += 1

    def dispatch(self, items: Iterable[tuple[str, Item]]) -> None:
        """Called by the store, in commit order, with every inbox item it appended."""
        by_user = self._by_user
        for user, item in items:
            if user in by_user:
                self.offer(user, item, wire.body(item))  # once per user, for all devices
