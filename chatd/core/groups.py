"""Groups: who is in, who runs them, what each change posts in the chat, who may do what."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from chatd.protocol.errors import ErrorCode

from .values import GroupInfo, Refusal

Event = dict[str, Any]


def founders(creator: str, members: Iterable[str]) -> list[str]:
    """A new group's members, in order, each once: the creator (its admin) first."""
    return list(dict.fromkeys([creator, *members]))


def created(creator: str, name: str, everyone: list[str]) -> Event:
    return {"kind": "created", "by": creator, "name": name, "users": everyone}


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """What a membership or name change does (see `change`)."""

    added: list[str]  # new members, after everything sent before they joined
    removed: list[str]  # members who left or were removed
    successor: str | None  # the member who becomes admin because none is left
    name: str | None
    events: list[tuple[Event, tuple[str, ...]]]  # chat events to post, in order, and who
    # gets each beyond the members (the removed see their own removal)

    @property
    def recount(self) -> bool:
        """Members left: the rest may all have (or have read) what they had not."""
        return bool(self.removed)


def change(members: Mapping[str, bool], actor: str, add: Iterable[str] = (),
           remove: Iterable[str] = (), name: str | None = None) -> Change:
    """Plan a change of a group whose members (in the order they joined) map to whether they
    are admins. Adding a member twice or removing a non-member does nothing. When no admin
    is left, the longest-standing remaining member takes over."""
    added = [u for u in dict.fromkeys(add) if u not in members]
    removed = [u for u in dict.fromkeys(remove) if u in members]
    gone = set(removed)
    remaining = [u for u in members if u not in gone] + added
    successor = None
    if remaining and not any(members.get(u, False) for u in remaining):
        successor = remaining[0]
    events: list[tuple[Event, tuple[str, ...]]] = []
    if added:
        events.append(({"kind": "added", "by": actor, "users": added}, ()))
    if removed:
        kind = "left" if removed == [actor] else "removed"
        events.append(({"kind": kind, "by": actor, "users": removed}, tuple(removed)))
    if name is not None:
        events.append(({"kind": "renamed", "by": actor, "name": name}, ()))
    return Change(added, removed, successor, name, events)


def member_problem(group: str, info: GroupInfo | None, user: str) -> Refusal | None:
    """Why `user` may not act in a group (it does not exist, or they are not in it)."""
    if info is None:
        return Refusal(ErrorCode.UNKNOWN_TARGET, f"no group {group!r}")
    if user not in info.members:
        return Refusal(ErrorCode.FORBIDDEN, f"not a member of group {group!r}")
    return None


def size_problem(members: Iterable[str], limit: int) -> Refusal | None:
    if len(set(members)) > limit:
        return Refusal(ErrorCode.INVALID, f"a group has at most {limit} members")
    return None


def may_create(creator: str, members: Iterable[str], limit: int) -> Refusal | None:
    return size_problem([creator, *members], limit)


def may_add(info: GroupInfo, actor: str, users: Iterable[str], limit: int) -> Refusal | None:
    if actor not in info.admins:
        return Refusal(ErrorCode.FORBIDDEN, "only admins add members")
    return size_problem([*info.members, *users], limit)


def may_remove(info: GroupInfo, actor: str, users: Iterable[str]) -> Refusal | None:
    """Admins remove anyone; a member removes only themself (leaves)."""
    if actor not in info.admins and set(users) != {actor}:
        return Refusal(ErrorCode.FORBIDDEN, "only admins remove other members")
    return None


def may_rename(info: GroupInfo, actor: str) -> Refusal | None:
    if actor not in info.admins:
        return Refusal(ErrorCode.FORBIDDEN, "only admins rename the group")
    return None


def may_set_mode(info: GroupInfo, actor: str) -> Refusal | None:
    if actor not in info.admins:
        return Refusal(ErrorCode.FORBIDDEN, "only admins change the group's mode")
    return None
