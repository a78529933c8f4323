"""The values the rules take and give (frozen dataclasses), and the clock."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from chatd.protocol.errors import ErrorCode
from chatd.protocol.frames import Media


def now_ms() -> int:
    """Wall-clock time in milliseconds: message, receipt and last-seen times."""
    return int(time.time() * 1000)


@dataclasses.dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to store: from a device, or a chat event the server makes."""

    sender: str
    device: str
    client_id: str
    conv: str
    recipients: tuple[str, ...]  # users whose inboxes get the message (sender excluded)
    body: bytes
    ts: int
    media: tuple[Media, ...] = ()
    group: str | None = None  # a group message: it is fanned out to the members
    event: dict[str, Any] | None = None  # a server-made chat event (membership, mode)


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """A stored message (or chat event): what every recipient's inbox item points at."""

    conv: str
    seq: int
    ts: int
    sender: str
    device: str
    id: str  # the sender's client id
    body: bytes
    group: str | None = None
    media: tuple[Media, ...] = ()
    event: dict[str, Any] | None = None


def message_bytes(m: NewMessage | Message) -> int:
    """About how many bytes a message takes, held in memory or carried between nodes: its
    body, its media's previews, and the rest."""
    return 200 + len(m.body) + sum(300 + len(x.preview) for x in m.media)


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    """An inbox item: `message`, at position q of the user's inbox."""

    q: int
    message: Message

    # the message's fields, read through the item
    conv = property(lambda self: self.message.conv)
    seq = property(lambda self: self.message.seq)
    ts = property(lambda self: self.message.ts)
    sender = property(lambda self: self.message.sender)
    device = property(lambda self: self.message.device)
    id = property(lambda self: self.message.id)
    body = property(lambda self: self.message.body)
    group = property(lambda self: self.message.group)
    media = property(lambda self: self.message.media)
    event = property(lambda self: self.message.event)


@dataclasses.dataclass(frozen=True, slots=True)
class GroupInfo:
    group: str
    name: str
    members: tuple[str, ...]  # in the order they joined
    admins: tuple[str, ...]
    mode: int = 0
    ttl: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class ReceiptState:
    delivered: tuple[str, ...]  # members whose devices have it, not read yet
    read: tuple[str, ...]
    pending: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class ReceiptNote:
    """A receipt to put in `to`'s inbox: `by` has the messages `seqs` of `conv` (or read
    them); `all`: every member of the group has."""

    to: str
    conv: str
    seqs: tuple[int, ...]
    by: str
    status: int
    ts: int
    all: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Notice:
    """An inbox item: a receipt, at position q of its user's inbox."""

    q: int
    receipt: ReceiptNote

    # the receipt's fields, read through the item
    conv = property(lambda self: self.receipt.conv)
    seqs = property(lambda self: self.receipt.seqs)
    by = property(lambda self: self.receipt.by)
    status = property(lambda self: self.receipt.status)
    ts = property(lambda self: self.receipt.ts)
    all = property(lambda self: self.receipt.all)


Item = Delivery | Notice  # what an inbox holds


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused: the error the device gets."""

    code: ErrorCode
    message: str
