"""What request handlers see: the node (`Node`) and the device that asked (`Device`).

Small protocols instead of the concrete ChatServer and Session, so that handlers depend on
nothing else and can be tested with a store and a fake device, without sockets.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, Protocol

from chatd.protocol import ErrorCode, Frame
from chatd.protocol import frames as F

if TYPE_CHECKING:
    import trio

    from chatd.core.delivery import RefusedForNow
    from chatd.store import Store

    from .config import Config
    from .limits import UserLimits
    from .presence import PresenceService


class Device(Protocol):
    """One connected device, as its request handlers see it."""

    user: str
    device: str
    watching: set[str] | None  # users whose presence this device follows
    refused: RefusedForNow | None  # its sends refused for now, on this connection

    @property
    def backed_up(self) -> bool:
        """Its outbound queue holds over a quarter of its budget: large answers wait."""
        ...

    def send_frame(self, frame: Frame) -> None: ...

    def send_presence(self, frame: F.Presence) -> None: ...

    def error(self, code: ErrorCode, message: str, ref: str | None = None,
              rid: int | None = None, retry_ms: int | None = None) -> None: ...

    def pause(self) -> None:
        """Read nothing more from the device for a while (it went over a rate limit)."""
        ...

    def resync(self, cursor: int) -> None:
        """Send the inbox again from `cursor` (the device asked for a Sync)."""
        ...


class Node(Protocol):
    """The node, as request handlers see it."""

    config: Config
    store: Store
    presence: PresenceService
    limits: UserLimits
    stats: collections.Counter[str]
    media: Any  # chatd.media.service.MediaService, or None without an HTTP listener
    media_url: str
    finishing: set[trio.CancelScope]  # sends carried on past their connection's end

    async def user_exists(self, user: str) -> bool: ...
