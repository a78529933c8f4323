"""The admin actions, against any Store (the CLI opens the node's store and calls these)."""

from __future__ import annotations

import dataclasses
from typing import Final

import trio

from chatd.core import convs, now_ms
from chatd.store import FanoutJobs, Store, StoreError

FANOUT_WAIT: Final = 30.0  # seconds delete-user waits for the "left" events' fan-out


class AdminError(Exception):
    """The action cannot be done (e.g. an unknown user): the message says why."""


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    device: str
    cursor: int  # the last inbox position the device acknowledged
    revoked_at: int  # ms; its tokens issued up to then are void (0: never revoked)


@dataclasses.dataclass(frozen=True)
class UserInfo:
    user: str
    devices: list[DeviceInfo]
    last_seen: int | None  # ms, None if never (kept per user, not per device)
    hides_last_seen: bool
    groups: list[str]


async def _known(store: Store, user: str) -> None:
    if not await store.has_user(user):
        raise AdminError(f"no user {user!r}")


async def list_devices(store: Store, user: str) -> UserInfo:
    await _known(store, user)
    devices = [DeviceInfo(d, c, await store.revoked_at(user, d))
               for d, c in sorted((await store.devices(user)).items())]
    last_seen, hidden = await store.presence_of(user)
    return UserInfo(user, devices, last_seen, hidden, await store.user_groups(user))


async def revoke(store: Store, user: str, device: str | None = None,
                 at: int | None = None) -> int:
    """Void the user's tokens (of one device, or all) issued up to now; returns that time.
    Open connections end within the nodes' revocation_poll; the device's data stays (a new
    token for it carries on where it was)."""
    await _known(store, user)
    if device is not None and device not in await store.devices(user):
        raise AdminError(f"user {user!r} has no device {device!r}"
                         " (see `chatd admin devices USER`)")
    at = now_ms() if at is None else at
    await store.revoke(user, device, at)
    return at


async def delete_user(store: Store, user: str, settle: float = 2.0) -> list[str]:
    """Delete a user: revoke every token (their connections end), wait `settle` seconds for
    the nodes' poll to end them, leave each group as a normal group change (the members see
    "left"; admin duties pass on as when anyone leaves), then forget their devices, inbox,
    watermarks, last seen and privacy. Their sent messages stay in the chats. Returns the
    groups they left."""
    await _known(store, user)
    await store.revoke(user, None, now_ms())
    await trio.sleep(settle)
    groups = await store.user_groups(user)
    for group in groups:
        await store.change_group(group, user, now_ms(), remove=(user,))
    await _finish_fanouts(store, {convs.of_group(g) for g in groups}, settle)
    await store.delete_user(user)
    return groups


async def _finish_fanouts(store: Store, chats: set[str], settle: float) -> None:
    """Wait (`settle` s) for the group events' fan-out, which a running node does and pushes
    to connected members; then run what is left from here (a job another process holds is
    waited for). The "left" event goes to the leaver too: it must be in their inbox before the
    inbox is deleted, not after (it would make the user again)."""
    if not isinstance(store, FanoutJobs):
        return
    now = trio.current_time()
    ours, give_up = now + settle, now + settle + FANOUT_WAIT
    while True:
        left = [(c, s) for c, s in await store.pending_fanouts() if c in chats]
        if not left:
            return
        now = trio.current_time()
        if now >= give_up:
            raise AdminError(f"the group events' fan-out did not finish in {FANOUT_WAIT:g}s;"
                             " the user is out of their groups but not deleted yet: run"
                             " delete-user again")
        if now >= ours:
            for conv, seq in left:
                try:
                    await store.fanout(conv, seq)
                except StoreError:  # (another process is running it: wait for it)
                    pass
        await trio.sleep(0.05)
