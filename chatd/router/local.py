"""In-process routing: user -> the live sessions of that user's devices on this node."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from chatd.protocol import encode_body
from chatd.store import Item


class Target(Protocol):
    """A connected device as the router sees it."""

    user: str

    def offer(self, item: Item, body: bytes) -> None:
        """Take an inbox item (and its encoded frame body) for delivery. Never blocks."""


class LocalRouter:
    def __init__(self) -> None:
        self._by_user: dict[str, list[Target]] = {}
        self.dispatched = 0

    def attach(self, target: Target) -> None:
        self._by_user.setdefault(target.user, []).append(target)

    def detach(self, target: Target) -> None:
        targets = self._by_user.get(target.user)
        if targets is not None and target in targets:
            targets.remove(target)
            if not targets:
                del self._by_user[target.user]

    def online(self, user: str) -> bool:
        return user in self._by_user

    def connections(self) -> int:
        return sum(map(len, self._by_user.values()))

    def dispatch(self, items: Iterable[tuple[str, Item]]) -> None:
        """Called by the store, in commit order, with every inbox item it appended."""
        for user, item in items:
            targets = self._by_user.get(user)
            if targets:
                body = encode_body(item)  # once per user, shared by all of its devices
                for t in list(targets):
                    t.offer(item, body)
                self.dispatched += 1
