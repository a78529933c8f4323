"""What a chatd client sees: plain frozen dataclasses."""

from __future__ import annotations

import dataclasses
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


Event = Message | Delivered | Read | Synced | Connected | Disconnected | ServerError
