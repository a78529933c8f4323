"""When a token is void, and which live connections a node ends when a revocation appears.

A revocation (chatd.store.base.Revocation) voids the tokens of a device, or of every device
of a user, issued at or before its time (ms). Hello reads the store (Store.revoked_at), so a
void token is refused at once; connections already open are ended by each node's poll of the
store's recent revocations (Store.revocations_since), every `revocation_poll` seconds.

The poll re-reads a window (WINDOW_MS) of recent revocations each time instead of keeping a
position: applying a revocation twice does nothing more (a connection whose token was issued
after it survives), and the window absorbs clocks that disagree by up to WINDOW_MS between the
machine that revoked and the nodes. Cost per process: one indexed range read a second, which
returns the revocations of the last minute (usually none), and one dict entry (a token's
issue time) per open connection.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Protocol

from chatd.store.base import Revocation

WINDOW_MS: Final = 60_000  # how far back each poll looks (clock disagreement it tolerates)
REVOKED_MESSAGE: Final = "token revoked by the operator: sign in again"


def is_void(issued: int, revoked_at: int) -> bool:
    """A token issued at `issued` (ms; 0 for tokens older than issue times) is void when a
    revocation at or after it applies (revoked_at 0: none)."""
    return revoked_at > 0 and issued <= revoked_at


class Connected(Protocol):
    """What the watch needs of a live connection (chatd.server.session.Session)."""

    user: str
    device: str


class RevocationWatch:
    """The issue times of this process's live connections' tokens, and the poll's decisions."""

    def __init__(self) -> None:
        self._issued: dict[Connected, int] = {}

    def __len__(self) -> int:
        return len(self._issued)

    def connected(self, conn: Connected, issued: int) -> None:
        self._issued[conn] = issued

    def gone(self, conn: Connected) -> None:
        self._issued.pop(conn, None)

    @staticmethod
    def since(now_ms: int) -> int:
        """Where the next poll starts reading."""
        return now_ms - WINDOW_MS

    def to_end(self, revocations: Iterable[Revocation],
               live: dict[str, list[Connected]]) -> list[Connected]:
        """The live connections (by user) whose token one of the revocations voids."""
        out: list[Connected] = []
        for r in revocations:
            for conn in live.get(r.user, ()):
                if (r.device is None or r.device == conn.device) and conn not in out \
                        and is_void(self._issued.get(conn, 0), r.at):
                    out.append(conn)
        return out
