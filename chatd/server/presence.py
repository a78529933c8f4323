"""Online / last seen on this node.

A user is *online* while one of their devices is connected in the foreground and the user did
something within the threshold (30 s by default): opened the app (a foreground connect), sent,
read, paged history, managed groups. Pings, acks and background connections (Hello.bg, e.g. a
sync the app started on its own) are not activity. Otherwise the user's *last seen* is the time
of their last activity, kept in the store. Devices watch users with PresenceSubscribe and get a
Presence frame when that user comes online or goes offline.

Privacy: a user who sets last seen to "nobody" is shown to others without a last seen (online
still shows while online), and, as in WhatsApp, sees nobody else's last seen either. The
setting is kept in the store and told to every peer (the other workers and nodes) as it
changes, so it holds at once wherever a watcher is connected.

Presence matters less than messages: a device whose outbound queue is backed up gets only the
latest state per watched user once it catches up (Session.send_presence), and presence never
gets a device disconnected as a slow consumer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from chatd.core import now_ms
from chatd.protocol import frames as F

if TYPE_CHECKING:
    from .app import ChatServer
    from .node import Device
    from .session import Session

PRIVACY_CACHE: Final = 100_000  # users whose setting is kept in memory before starting over


class PresenceService:
    def __init__(self, server: ChatServer) -> None:
        self.server = server
        self._active: dict[str, int] = {}  # user -> last activity, wall ms (one int a user)
        self._online: set[str] = set()
        self._watchers: dict[str, set[Device]] = {}
        self._hidden: dict[str, bool] = {}
        self._remote: dict[str, set[str]] = {}  # user -> peers that say the user is online
        self._unsaved: dict[str, int] = {}  # last seen times not yet written (store down)

    def is_online(self, user: str) -> bool:
        return user in self._online or user in self._remote

    def remote(self, origin: str, user: str, online: bool, active: int) -> None:
        """A peer process says a user came online or went offline there."""
        before = self.is_online(user)
        if active > self._active.get(user, 0):
            self._active[user] = active
        if online:
            self._remote.setdefault(user, set()).add(origin)
        elif user in self._remote:
            self._remote[user].discard(origin)
            if not self._remote[user]:
                del self._remote[user]
        if self.is_online(user) != before:
            self._announce(user)

    def forget(self, origin: str) -> None:
        """A peer restarted: what it said about who is online there no longer holds."""
        for user in [u for u, origins in self._remote.items() if origin in origins]:
            self.remote(origin, user, False, 0)

    def _tell_peers(self, user: str, online: bool) -> None:
        peers = self.server.peers
        if peers is not None:
            peers.outbox.presence(user, online, self._active.get(user, 0))
            peers.flush_soon()

    def retell(self) -> None:
        """Tell the peers again who is online here (they forgot it: this node rejoined)."""
        for user in self._online:
            self._tell_peers(user, True)

    def _foreground(self, user: str) -> bool:
        return any(not s.background for s in self.server.router.targets(user))  # type: ignore[attr-defined]

    def activity(self, session: Session) -> None:
        """The user did something on this device."""
        if session.background:
            return
        user = session.user
        self._active[user] = now_ms()
        if user not in self._online:
            was = self.is_online(user)
            self._online.add(user)
            self._tell_peers(user, True)
            if not was:
                self._announce(user)

    async def check(self) -> None:
        """Users whose activity is older than the threshold, or with no foreground device
        left, go offline (called by the server's sweeper)."""
        oldest = now_ms() - int(self.server.config.presence_threshold * 1000)
        await self._offline([u for u in self._online
                             if self._active[u] < oldest or not self._foreground(u)])

    async def disconnected(self, session: Session) -> None:
        for user in list(session.watching or ()):
            self.unwatch(session, user)
        if session.user in self._online and not self._foreground(session.user):
            await self._offline([session.user])  # this user only: no scan of everyone

    async def _offline(self, users: list[str]) -> None:
        for user in users:
            self._online.discard(user)
            self._tell_peers(user, False)
            if not self.is_online(user):  # still online through another process: no change
                self._announce(user)
            self._unsaved[user] = self._active[user]
        if self._unsaved:  # (and what a store outage left unwritten before)
            seen, self._unsaved = self._unsaved, {}
            try:
                await self.server.store.set_last_seen(seen)
            except BaseException:
                self._unsaved = {**seen, **self._unsaved}  # again at the next check
                raise

    async def _is_hidden(self, user: str) -> bool:
        hidden = self._hidden.get(user)
        if hidden is None:
            hidden = (await self.server.store.presence_of(user))[1]
            if len(self._hidden) >= PRIVACY_CACHE:
                self._hidden.clear()
            self._hidden.setdefault(user, hidden)  # (a peer's news may have come meanwhile)
        return self._hidden[user]

    async def set_hidden(self, user: str, hidden: bool) -> None:
        """The user's own setting: stored, then told to every peer and applied here."""
        await self.server.store.set_privacy(user, hidden)
        peers = self.server.peers
        if peers is not None:
            peers.outbox.privacy(user, hidden)
            peers.flush_soon()
        self.privacy_changed(user, hidden)

    def privacy_changed(self, user: str, hidden: bool) -> None:
        """A user's privacy setting changed (here or on a peer): watchers get the state they
        may see now."""
        if self._hidden.get(user) != hidden:
            self._hidden[user] = hidden
            self._announce(user)

    async def state(self, user: str, viewer: str, rid: int | None = None) -> F.Presence:
        """What viewer may see of user now. Whether the user is online is read last, after
        any store read, so the caller (who sends it without waiting) never sends an older
        state after a newer announcement."""
        last: int | None = None
        if not self.is_online(user):
            last = self._active.get(user)
            if last is None:
                last = (await self.server.store.presence_of(user))[0]
            if await self._is_hidden(user) or await self._is_hidden(viewer):
                last = None
        online = self.is_online(user)
        return F.Presence(user=user, online=online, last_seen=None if online else last, rid=rid)

    def watch(self, session: Device, user: str) -> None:
        self._watchers.setdefault(user, set()).add(session)
        if session.watching is None:
            session.watching = set()
        session.watching.add(user)

    def unwatch(self, session: Device, user: str) -> None:
        watchers = self._watchers.get(user)
        if watchers is not None:
            watchers.discard(session)
            if not watchers:
                del self._watchers[user]
        if session.watching is not None:
            session.watching.discard(user)

    def _announce(self, user: str) -> None:
        if user in self._watchers:
            self.server.spawn("presence announcement", self._send_states, user)

    async def _send_states(self, user: str) -> None:
        for session in list(self._watchers.get(user, ())):
            session.send_presence(await self.state(user, session.user))
