"""Each process's poll of the store's recent revocations (started by ChatServer.run)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from chatd.core import now_ms
from chatd.protocol import ErrorCode

from .revocations import REVOKED_MESSAGE, RevocationWatch

if TYPE_CHECKING:
    from chatd.server.app import ChatServer


async def poll_revocations(server: ChatServer) -> None:
    """Every revocation_poll seconds: end the live connections a recent revocation voids.
    A failing store read is contained (counted, logged once) and tried again next time."""
    watch: RevocationWatch = server.revocations
    while True:
        await trio.sleep(server.config.revocation_poll)
        try:
            found = await server.store.revocations_since(RevocationWatch.since(now_ms()))
        except Exception as exc:
            server.failed("revocations", exc)
            continue
        server.recovered("revocations")
        if not found:
            continue
        users = {r.user for r in found}
        live = {u: list(server.router.targets(u)) for u in users if u in server.router}
        for session in watch.to_end(found, live):  # type: ignore[arg-type]
            session.close_with(ErrorCode.UNAUTHENTICATED, REVOKED_MESSAGE)  # type: ignore[attr-defined]
            server.stats["revoked_connections"] += 1
        for r in found:
            if r.device is None:  # (a deleted user must not stay "known" to sends)
                server._known_users.discard(r.user)
