"""The Store interface: the source of truth for messages, inboxes, cursors and receipts.

Model. Every user has an *inbox*: an append-only log of items (a message to deliver, or a
receipt for a message the user sent), numbered q = 1, 2, 3... per user. Each device of the user
has a *cursor*: the highest q it acknowledged (cumulatively). Everything in the inbox above a
device's cursor is pending for that device, so delivery is at-least-once and in order, and a
device that was away drains exactly what it missed. Messages live once per conversation,
numbered by a per-conversation `seq`; inbox items point at them. Receipts are tracked per
(conversation, user) as watermarks: delivered_upto and read_upto.

Guarantees every backend gives:
- append_message is idempotent per (sender, client_id): a retry returns the original result.
- When an awaited write returns, it is durable (committed).
- seq is dense and increasing per conversation; q is dense and increasing per user.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal, Protocol, runtime_checkable

import trio

from chatd.core import GroupInfo, Item, Message, NewMessage, ReceiptNote, ReceiptState
from chatd.protocol.frames import HistoryItem

__all__ = ["AppendListener", "Appended", "FanoutJobs", "GroupInfo", "Item", "NewMessage",
           "Page", "ReceiptState", "Store", "StoreError", "StoreStats"]


@dataclasses.dataclass(frozen=True, slots=True)
class Appended:
    """Result of a write: the stored message (if any) and the inbox items it created."""

    conv: str = ""
    seq: int = 0
    ts: int = 0
    duplicate: bool = False
    items: tuple[tuple[str, Item], ...] = ()  # (user, item) to push to that user's devices


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    items: list[Item]
    upto: int  # the last inbox position looked at
    more: bool  # there may be more after upto


@dataclasses.dataclass(frozen=True, slots=True)
class Revocation:
    """Tokens of user (device, or every device when None) issued at or before `at` ms are void."""

    user: str
    device: str | None
    at: int


class StoreError(Exception):
    """The store could not do the operation now (the backend is down, a timeout): retry."""


AppendListener = Callable[[tuple[tuple[str, Item], ...]], None]


class Store(Protocol):
    # Called with the inbox items of each committed write, in commit order, before the write's
    # caller resumes. The router sets it to push items to connected devices in order.
    on_append: AppendListener | None

    async def add_user(self, user: str) -> None: ...

    async def has_user(self, user: str) -> bool: ...

    async def attach_device(self, user: str, device: str) -> int:
        """Register the device if new and return its cursor. A new device starts at the lowest
        cursor of the user's other devices (0 for the first): it gets what is still pending."""
        ...

    async def append_messages(self, msgs: list[NewMessage]) -> list[Appended]:
        """Store messages, in order, and append each to its recipients' inboxes, and to the
        sender's own inbox when the sender has more than one device (so the others see what
        it sent). One call is one durable write for all of them."""
        ...

    async def append_message(self, msg: NewMessage) -> Appended: ...

    async def inbox(self, user: str, device: str, after: int, limit: int) -> Page:
        """Up to `limit` inbox positions after `after`, oldest first; messages this device
        sent itself are left out of items but counted in upto."""
        ...

    async def ack(self, user: str, device: str, upto: int, ts: int, *,
                  lazy: bool = True) -> Appended:
        """Move the device's cursor to upto (never back) and append DELIVERED receipts to the
        senders' inboxes for messages delivered to this user for the first time. `lazy`: the
        caller knows nobody waits for what it makes (the device acknowledged only receipts or
        its own messages), so the store may hold it a little to share a later commit; False:
        a sender waits for its DELIVERED receipt, commit it at once."""
        ...

    async def mark_read(self, user: str, conv: str, upto: int, ts: int) -> Appended:
        """Mark conv read by user up to seq upto; append READ receipts to the senders, and
        (when the user has several devices) one with by=user to the user's own inbox, so the
        other devices mark the chat read as well."""
        ...

    async def history(self, conv: str, before: int | None, limit: int,
                      after: int = 0) -> list[HistoryItem]:
        """Messages of conv with after < seq < before (or the newest), newest first."""
        ...

    async def cursor(self, user: str, device: str) -> int: ...

    # ---- groups --------------------------------------------------------------------------
    # A group message (NewMessage.group set) goes to the members at send time: the store
    # commits the message and a fan-out job together (that is SENT), then appends it to the
    # members' inboxes from that job in later batches, so a large group does not slow the
    # sender and a crash mid-fan-out resumes where it stopped. Group receipts are coalesced:
    # the sender gets one Receipt(all=True) when every member has reached delivered / read.

    async def create_group(self, group: str, name: str, creator: str, members: list[str],
                           ts: int) -> GroupInfo | None:
        """A new group with the creator as admin; None if the id is taken."""
        ...

    async def group(self, group: str) -> GroupInfo | None: ...

    async def change_group(self, group: str, actor: str, ts: int, *,
                           add: tuple[str, ...] = (), remove: tuple[str, ...] = (),
                           name: str | None = None) -> GroupInfo:
        """Apply a membership or name change and post its event in the chat."""
        ...

    async def user_groups(self, user: str) -> list[str]: ...

    async def joined_at(self, group: str, user: str) -> int | None:
        """The group's last seq when the user joined (what they may page back to)."""
        ...

    async def receipt_state(self, conv: str, seq: int) -> ReceiptState: ...

    # ---- presence --------------------------------------------------------------------------

    async def presence_of(self, user: str) -> tuple[int | None, bool]:
        """(last seen in ms or None, whether the user hides it)."""
        ...

    async def set_last_seen(self, seen: dict[str, int]) -> None:
        """Record users' last activity (ms); an older time than the stored one is ignored."""
        ...

    async def set_privacy(self, user: str, hide_last_seen: bool) -> None: ...

    # ---- chat modes ------------------------------------------------------------------------

    async def conv_mode(self, conv: str) -> tuple[int, int]:
        """(mode, ttl seconds) of a conversation; (TEMPORARY, 0) until set."""
        ...

    async def set_mode(self, conv: str, mode: int, ttl: int, actor: str, ts: int) -> None:
        """Change the mode and post the change as an event every participant sees."""
        ...

    async def collect(self, now: int, max_age_ms: int) -> dict[str, int]:
        """Delete what the chat modes say to delete; counts of what went, by reason."""
        ...

    # ---- admin (chatd admin: devices, revocation, deleting a user) ---------------------------

    async def devices(self, user: str) -> dict[str, int]:
        """The user's devices and their cursors (empty for an unknown user)."""
        ...

    async def revoke(self, user: str, device: str | None, at: int) -> None:
        """Void the tokens of one device (None: of every device of the user) issued at or
        before `at` (ms). Kept for ever (a few bytes); a later time replaces an earlier one."""
        ...

    async def revoked_at(self, user: str, device: str) -> int:
        """The latest revocation time (ms) that applies to this device (its own or the
        user's), 0 if none: a token issued at or before it is void."""
        ...

    async def revocations_since(self, since: int) -> list[Revocation]:
        """Revocations with at >= since (ms), in any order (the nodes' poll)."""
        ...

    async def delete_user(self, user: str) -> None:
        """Forget the user: devices and cursors, inbox, receipt watermarks, last seen and
        privacy. The caller takes them out of their groups first (a normal group change).
        Their messages stay in the conversations; their revocations stay too."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """The store's own work (batches, background jobs) until cancelled; open_store runs
        it in a nursery and starts using the store once it reports started."""
        ...

    async def aclose(self) -> None: ...


# ---- capabilities: what a backend may offer beyond Store ----------------------------------

@runtime_checkable
class FanoutJobs(Protocol):
    """A store that keeps group messages' fan-out jobs (see Store), and runs their steps when
    asked (chatd.store.fanout: the one place that decides who asks). "auto": the store's
    FanoutRunner runs them (fanout_some); "external": whoever set it (the Redis router) is
    told of each committed job through on_fanout and runs it with fanout()."""

    fanout_mode: Literal["auto", "external"]
    on_fanout: Callable[[str, int], None] | None

    async def fanout_some(self) -> bool:
        """One step (up to FANOUT_CHUNK inbox appends) of the oldest jobs this store knows;
        whether jobs are left."""
        ...

    async def fanout(self, conv: str, seq: int) -> bool:
        """Run the job of (conv, seq) to its end; False if there is none (done already)."""
        ...

    async def pending_fanouts(self) -> list[tuple[str, int]]:
        """Committed jobs not finished yet (after a restart, or lost by the router)."""
        ...

    @property
    def fanout_pending(self) -> int:
        """Inbox appends this store still owes to its jobs (a gauge)."""
        ...


@runtime_checkable
class StoreStats(Protocol):
    """A store that reports its write path (gauges and a commit-time histogram)."""

    on_batch: Callable[[float], None] | None  # called with the seconds each batch took

    @property
    def queue_depth(self) -> int:
        """Operations waiting for the next batch."""
        ...


Entry = Message | ReceiptNote  # what goes into an inbox (it gets its position there)


class OwnerCalls(Protocol):
    """How a store with numbering by owners (Cassandra `numbering=owner`) reaches the other
    nodes (chatd.router.forward, with Redis): which node owns a shard, and the calls that
    hand it a send or an inbox append. Each call raises StoreError when the owner refuses
    or does not answer within `timeout` (the work may still be done there: retry)."""

    def owner_of(self, shard: int) -> str | None:
        """The node that numbers shard's chats and inboxes; None when it is this node."""
        ...

    async def send(self, node: str, msgs: list[NewMessage], timeout: float
                   ) -> list[Appended]: ...

    async def inbox(self, node: str, user: str, entries: list[Entry], fresh: list[bool],
                    timeout: float) -> list[int | None]: ...


@runtime_checkable
class OwnedNumbering(Protocol):
    """A store that numbers by owners: the node sets `remote` when it has peers, and runs
    what peers hand it with the `_here` methods (never handed on again)."""

    owners: bool  # numbering by owners is on (else nothing here is used)
    remote: OwnerCalls | None

    async def append_here(self, msgs: list[NewMessage]) -> list[Appended]:
        """append_messages, all of them on this node."""
        ...

    async def inbox_here(self, user: str, entries: list[Entry], fresh: list[bool]
                         ) -> list[int | None]:
        """Append to user's inbox on this node: each entry's position, None where it was
        there already. `fresh`: a message numbered by the send that appends it (it can be
        in no inbox yet: not looked up)."""
        ...
