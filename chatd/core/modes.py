"""Chat modes: what a conversation keeps, what it forgets and when.

  TEMPORARY (the default)  a message is forgotten once every recipient device has it, or
                           when it is older than the server's temporary_max_age (never
                           delivered)
  PERMANENT                kept; history can be paged
  DISAPPEARING             every message expires `ttl` seconds after it was sent, for all
"""

from __future__ import annotations

import secrets
from typing import Any

from chatd.protocol.errors import ErrorCode
from chatd.protocol.frames import Mode

from . import convs
from .values import NewMessage, Refusal

DEFAULT: tuple[int, int] = (Mode.TEMPORARY, 0)  # (mode, ttl) of a chat until it is set


def problem(mode: int, ttl: int) -> Refusal | None:
    if (mode == Mode.DISAPPEARING) != (ttl > 0):
        return Refusal(ErrorCode.INVALID, "a ttl goes with DISAPPEARING mode, and only with it")
    return None


def event(mode: int, ttl: int, actor: str) -> dict[str, Any]:
    return {"kind": "mode", "mode": mode, "ttl": ttl, "by": actor}


def forgets_delivered(mode: int) -> bool:
    """A message is deleted once no inbox holds it any more (every recipient device has it)."""
    return mode == Mode.TEMPORARY


def forgets_undelivered(mode: int) -> bool:
    """A message never delivered is deleted when older than the server's maximum age."""
    return mode == Mode.TEMPORARY


def expires_before(mode: int, ttl: int, now_ms: int) -> int | None:
    """Messages sent before this time (ms) are gone for everyone; None: none expire."""
    return now_ms - ttl * 1000 if mode == Mode.DISAPPEARING else None


def ttl_of(mode: int, ttl: int) -> int:
    """Seconds a stored message row lives (0: for ever, until collected)."""
    return ttl if mode == Mode.DISAPPEARING else 0


def chat_event(conv: str, actor: str, ts: int, event: dict[str, Any],
               also: tuple[str, ...] = ()) -> NewMessage:
    """A server-made message in a chat, sent like any message: to a group's members (and
    `also`), or to the other participant of a one-to-one chat."""
    group = convs.group_of(conv)
    to = also if group is not None else convs.others(conv, actor)
    return NewMessage(sender=actor, device="server", client_id=f"ev-{secrets.token_hex(8)}",
                      conv=conv, recipients=to, body=b"", ts=ts, group=group, event=event)
