"""Each process's poll of the store's recent revocations (started by ChatServer.run)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from chatd.core import now_ms
from chatd.protocol import ErrorCode
from chatd.store import FanoutJobs, StoreError

from .revocations import REVOKED_MESSAGE, RevocationWatch

MAX_FOREIGN_JOBS = 100  # jobs run per poll (they are run by their own process anyway)
_busy: set[int] = set()  # stores whose foreign jobs are being run now

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
        if any(r.device is None for r in found):
            for r in found:  # (a deleted user must not stay "known" to sends)
                server._known_users.discard(r.user)
            if isinstance(server.store, FanoutJobs) and id(server.store) not in _busy:
                server.spawn("revocations", run_foreign_fanouts, server.store)


async def run_foreign_fanouts(store: FanoutJobs) -> None:
    """Run the fan-out jobs committed by another process (`chatd admin delete-user` leaving
    groups), so that this node's connected members get the events at once: its own runner
    only hears of the jobs its store committed. Done in the minute after a revocation of
    every device of a user; a job another process is running is left to it."""
    _busy.add(id(store))  # (one run at a time: a poll may come while one runs)
    try:
        for conv, seq in (await store.pending_fanouts())[:MAX_FOREIGN_JOBS]:
            try:
                await store.fanout(conv, seq)
            except StoreError:
                pass
    finally:
        _busy.discard(id(store))
