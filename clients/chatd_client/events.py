"""What a chatd client sees: plain frozen dataclasses."""

from __future__ import annotations

import dataclasses
import datetime
import time
from typing import Any

from chatd.protocol.frames import Media


@dataclasses.dataclass(frozen=True, slots=True)
class SentAck:
    id: str
    conv: str
    seq: int
    ts: int


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    conv: str
    seq: int
    ts: int
    sender: str
    device: str
    id: str
    body: bytes
    group: str | None = None
    media: tuple[Media, ...] = ()
    event: dict[str, Any] | None = None  # a server-made chat event (membership, mode): no body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclasses.dataclass(frozen=True, slots=True)
class _Receipt:
    conv: str
    seqs: tuple[int, ...]  # the sequences, in conv, of messages you sent
    by: str
    ts: int


@dataclasses.dataclass(frozen=True, slots=True)
class Delivered(_Receipt):
    """`by` has received these messages on a device."""


@dataclasses.dataclass(frozen=True, slots=True)
class Read(_Receipt):
    """`by` has read these messages."""


@dataclasses.dataclass(frozen=True, slots=True)
class Presence:
    """A watched user came online or went offline. last_seen (ms) is None while online, or
    when the user hides it (or you hide yours)."""

    user: str
    online: bool
    last_seen: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Synced:
    """Everything that was waiting on the server has been received; delivery is now live."""

    upto: int


@dataclasses.dataclass(frozen=True, slots=True)
class Connected:
    user: str
    device: str
    session: str


@dataclasses.dataclass(frozen=True, slots=True)
class Disconnected:
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class ServerError:
    code: int
    name: str
    message: str
    ref: str | None = None


Event = (Message | Delivered | Read | Presence | Synced | Connected | Disconnected
         | ServerError)


def presence_text(p: Presence, now: float | None = None) -> str:
    """For people: "online", "offline" (no last seen known or shown), "last seen just now",
    "last seen 5 minutes ago", "last seen today at 09:12", "last seen yesterday at 14:02",
    "last seen 3 Mar at 18:40"."""
    if p.online:
        return "online"
    if p.last_seen is None:
        return "offline"  # never seen, or hidden: the protocol does not say which
    now = time.time() if now is None else now
    seen = p.last_seen / 1000
    ago = max(0.0, now - seen)
    if ago < 60:
        return "last seen just now"
    if ago < 3600:
        minutes = int(ago // 60)
        return f"last seen {minutes} minute{'s' if minutes > 1 else ''} ago"
    day, today = time.localtime(seen), time.localtime(now)
    clock = time.strftime("%H:%M", day)
    days = (datetime.date(*today[:3]) - datetime.date(*day[:3])).days
    if days == 0:
        return f"last seen today at {clock}"
    if days == 1:
        return f"last seen yesterday at {clock}"
    return f"last seen {day.tm_mday} {time.strftime('%b', day)} at {clock}"
