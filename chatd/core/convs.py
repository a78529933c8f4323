"""Conversation ids, the one place that knows how they are written.

A one-to-one chat is `d:A:B` with the two user names sorted (the same id from both sides); a
group chat is `g:GROUP`. User names and group ids never contain ':' (chatd.auth, the server's
group ids).
"""

from __future__ import annotations

from typing import Final

GROUP: Final = "g:"
DIRECT: Final = "d:"


def direct(a: str, b: str) -> str:
    """The id of the one-to-one chat of a and b, the same from both sides."""
    lo, hi = sorted((a, b))
    return f"{DIRECT}{lo}:{hi}"


def of_group(group: str) -> str:
    """The id of a group's chat."""
    return GROUP + group


def group_of(conv: str) -> str | None:
    """The group of a group chat's id, None for any other id."""
    return conv[2:] if conv.startswith(GROUP) else None


def is_group(conv: str) -> bool:
    return conv.startswith(GROUP)


def pair(conv: str) -> tuple[str, str] | None:
    """The two users of a one-to-one chat's id as written (canonical or not), None for a
    group's or a malformed id."""
    if not conv.startswith(DIRECT):
        return None
    parts = conv.split(":")
    return (parts[1], parts[2]) if len(parts) == 3 else None


def canonical_pair(conv: str) -> tuple[str, str] | None:
    """The two users of a one-to-one chat's id if it is written as the server writes it
    (`direct(a, b) == conv`), else None."""
    users = pair(conv)
    return users if users is not None and direct(*users) == conv else None


def others(conv: str, user: str) -> tuple[str, ...]:
    """The other participant of a one-to-one chat (none when it is a chat with oneself, or
    a group's id)."""
    users = pair(conv)
    return tuple(u for u in users if u != user) if users is not None else ()


def describe() -> str:
    return "g:GROUP, or d:A:B with A <= B"
