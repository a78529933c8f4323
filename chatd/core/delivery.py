"""Who gets a message, what an inbox shows, and which receipts acks and reads make.

The model (chatd.store.base has the storage side): every user has an inbox, an append-only log
of items numbered q = 1, 2, ...; each device has a cursor, the highest q it acknowledged.
Receipts are tracked per (conversation, member) as two watermarks, delivered_upto and
read_upto, which only rise.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

from chatd.protocol.frames import Status

from . import convs
from .values import ReceiptNote, ReceiptState

FANOUT_CHUNK: Final = 256  # inbox appends per step of a group message's fan-out


# ---- sends ---------------------------------------------------------------------------------

def copies_to_sender(sender_devices: int) -> bool:
    """A user with more than one device gets their own messages in their inbox too, so their
    other devices show what they sent."""
    return sender_devices > 1


def send_targets(sender: str, recipients: Iterable[str], members: Iterable[str],
                 sender_devices: int) -> tuple[str, ...]:
    """The users whose inboxes get a message, in order, each once: the group's members (none
    for a one-to-one chat) and the extra recipients, without the sender; then the sender when
    they have other devices. A group's are appended by its fan-out job, the others at once."""
    targets = [u for u in (*members, *recipients) if u != sender]
    if copies_to_sender(sender_devices):
        targets.append(sender)
    return tuple(dict.fromkeys(targets))


def shown_to(user: str, device: str, sender: str, sender_device: str) -> bool:
    """Whether an inbox message goes to this device: not to the device that sent it (it has
    it); it still counts as taken when the device acknowledges past it."""
    return not (sender == user and sender_device == device)


class RefusedForNow:
    """One connection's sends the server refused for now (RATE_LIMITED, or INTERNAL with a
    retry delay): the device sends them again under their ids. A send that names one of
    them as the earlier send of its chat it must follow (`after`) is refused for now too,
    with the same answer, so that the device's retries number the chat's sends in the order
    they were made. Without this, a send written before the device learned that the one
    before it failed was stored first (PROTOCOL.md, "A chat's sends keep their order through
    retries").
    Remembers at most LIMIT sends (the oldest are forgotten)."""

    __slots__ = ("_refused",)
    LIMIT: Final = 256

    def __init__(self) -> None:
        self._refused: dict[str, tuple[int, int]] = {}  # client id -> (error code, retry ms)

    def add(self, client_id: str, code: int, retry_ms: int) -> None:
        self._refused.pop(client_id, None)
        self._refused[client_id] = (code, retry_ms)
        if len(self._refused) > self.LIMIT:
            del self._refused[next(iter(self._refused))]

    def taken_up(self, client_id: str, after: str | None) -> tuple[int, int] | None:
        """A send is being handled (the sends of a connection are, in the order it wrote
        them): it is no longer refused; returns the answer it gets for now, if the send it
        must follow was refused and not sent again since, else None."""
        self._refused.pop(client_id, None)
        if after is None:
            return None
        return self._refused.get(after)

    def __bool__(self) -> bool:
        return bool(self._refused)


# ---- acks: cursors and DELIVERED receipts ------------------------------------------------

def new_cursor(old: int, upto: int, last: int) -> int | None:
    """Where an Ack up to `upto` moves a device's cursor, given its old cursor and the last
    position of the inbox (an ack beyond the end stops there); None: it does not move
    (cursors never go back)."""
    new = min(upto, last)
    return new if new > old else None


@dataclasses.dataclass(slots=True)
class Delivered:
    """What an ack delivered for the first time to a user (see `delivered`)."""

    direct: list[tuple[str, str, int]]  # (sender, conv, seq): DELIVERED receipts to send
    raised: dict[str, int]  # conv -> the user's new delivered_upto
    groups: list[str]  # group chats whose "delivered to all" may have moved


def delivered(user: str, messages: Iterable[tuple[str, str, int]],
              delivered_upto: Callable[[str], int]) -> Delivered:
    """The messages (sender, conv, seq) an ack covers, oldest first, against the user's
    delivered watermark per chat: which raise it (the user's own messages never do), the
    one-to-one ones that need a DELIVERED receipt to their sender, and the group chats where
    one coalesced receipt may be due when every member has it (see `all_receipts`)."""
    out = Delivered([], {}, [])
    for sender, conv, seq in messages:
        if sender == user:
            continue
        mark = out.raised.get(conv)
        if seq <= (delivered_upto(conv) if mark is None else mark):
            continue
        if mark is None and convs.is_group(conv):
            out.groups.append(conv)
        out.raised[conv] = seq
        if not convs.is_group(conv):
            out.direct.append((sender, conv, seq))
    return out


def missed(user: str, messages: Iterable[tuple[str, str, int]], got: Delivered,
           read: Callable[[str, int], bool]) -> list[tuple[str, str, int]]:
    """The one-to-one messages of an ack that `delivered` gave no receipt: at or under their
    chat's delivered watermark, and not covered by a read of the user (`read(conv, seq)`:
    what the user read was receipted READ, which says delivered too). Most were delivered
    before, to another device of the user; but a message can reach an inbox after a later
    one of its chat was delivered (a send cut short and finished by its retry), and then it
    was never receipted. A store tells the two apart by inbox position: a position no device
    of the user had reached before this ack is a first delivery, whatever its seq (see
    `first_reached`). A read past such a message before it was stored did not cover it
    (see `holes`)."""
    receipted = set(got.direct)
    return [m for m in messages if m[0] != user and not convs.is_group(m[1])
            and m not in receipted and not read(m[1], m[2])]


def holes(old: int, new: int, stored: Iterable[tuple[int, int]], now: int, wait_ms: int,
          most: int = 64) -> list[int]:
    """The seqs a read of a chat from `old` up to `new` passed with no message stored,
    given the stored ones as (seq, ts), oldest first: sends that took their seq and were
    not stored yet (a store that writes the message after taking its seq, and a send cut
    short there and finished by its retry). The READ receipt did not cover them, so their
    first delivery, though under the read watermark, gets DELIVERED (`missed`). A gap below
    a message older than `wait_ms` is not one (messages deleted since, a send given up),
    and at most the last `most` seqs of a gap count."""
    out: list[int] = []
    expect = old + 1
    for seq, ts in stored:
        if seq > expect and now - ts < wait_ms:
            out += range(max(expect, seq - most), seq)
        expect = seq + 1
    out += range(max(expect, new + 1 - most), new + 1)
    return out


def first_reached(missed: Iterable[tuple[str, str, int]],
                  position: Mapping[tuple[str, str, int], int],
                  reached: int) -> list[tuple[str, str, int]]:
    """Those of `missed` whose inbox position is past `reached`, the furthest any other
    device of the user had acknowledged: they get their DELIVERED receipt now."""
    return [m for m in missed if position[m] > reached]


def receipts(by: str, status: int, ts: int, messages: Iterable[tuple[str, str, int]],
             all_: bool = False) -> list[ReceiptNote]:
    """Receipts for messages (sender, conv, seq): one per sender and chat, however many
    messages it covers."""
    grouped: dict[tuple[str, str], list[int]] = {}
    for sender, conv, seq in messages:
        grouped.setdefault((sender, conv), []).append(seq)
    return [ReceiptNote(to=sender, conv=conv, seqs=tuple(seqs), by=by, status=status, ts=ts,
                        all=all_) for (sender, conv), seqs in grouped.items()]


# ---- reads ---------------------------------------------------------------------------------

def new_read(upto: int, last_seq: int, read_upto: int) -> int | None:
    """Where a Read up to `upto` moves the user's read watermark of a chat whose last message
    is `last_seq`; None: it does not move."""
    new = min(upto, last_seq)
    return new if new > read_upto else None


def read_receipts(user: str, conv: str, upto: int, ts: int, user_devices: int,
                  messages: Iterable[tuple[str, int, bool]]) -> list[ReceiptNote]:
    """The receipts a read up to `upto` makes: READ to the senders of the one-to-one chat's
    messages it covers (sender, seq, is_event; not for the user's own messages nor chat
    events; none for a group, whose read receipts are coalesced), and, when the user has other
    devices, one to the user (by=user) so those mark the chat read as well."""
    mine = (receipts(user, Status.READ, ts, [(user, conv, upto)])
            if copies_to_sender(user_devices) else [])
    if convs.is_group(conv):
        return mine
    return mine + receipts(user, Status.READ, ts, [
        (sender, conv, seq) for sender, seq, event in messages if sender != user and not event])


# ---- groups: "delivered to all", "read by all" ---------------------------------------------

def floor(members: Iterable[str], marks: Mapping[str, Sequence[int]]) -> tuple[int, int]:
    """(delivered, read) of the whole group: the lowest watermarks of its members (0 for a
    member without any)."""
    lows = [marks.get(u, (0, 0)) for u in members]
    return (min((m[0] for m in lows), default=0), min((m[1] for m in lows), default=0))


def all_receipts(before: Sequence[int], now: Sequence[int]) -> list[tuple[int, int, int]]:
    """(status, after, upto): the ranges of a group's messages that became delivered to all
    (or read by all) when its floor moved from `before` to `now`; each gets one receipt with
    all=True per sender, for its messages that are not chat events."""
    return [(status, before[i], now[i])
            for i, status in ((0, Status.DELIVERED), (1, Status.READ)) if now[i] > before[i]]


def all_receipts_for(by: str, conv: str, status: int, ts: int,
                     messages: Iterable[tuple[str, int, bool]]) -> list[ReceiptNote]:
    """The all=True receipts for a range of a group's messages (sender, seq, is_event) that
    became delivered to (or read by) every member: chat events get none."""
    return receipts(by, status, ts, [(sender, conv, seq) for sender, seq, event in messages
                                     if not event], all_=True)


class MarkCounts:
    """How many members of a group stand at each watermark, so the group's floor is the
    smallest key: moving one member costs O(1) and the floor O(distinct watermarks), not
    O(members). Kept in memory by a store that sees every change (SQLite's writer)."""

    __slots__ = ("counts", "members")

    def __init__(self, marks: Mapping[str, Sequence[int]]) -> None:
        self.members = set(marks)
        self.counts = (collections.Counter(m[0] for m in marks.values()),
                       collections.Counter(m[1] for m in marks.values()))

    def move(self, user: str, which: int, old: int, new: int) -> None:
        """Member `user`'s watermark `which` (0 delivered, 1 read) rose from old to new."""
        if user not in self.members or new == old:
            return
        counts = self.counts[which]
        counts[old] -= 1
        if not counts[old]:
            del counts[old]
        counts[new] += 1

    def floor(self) -> tuple[int, int]:
        d, r = self.counts
        return (min(d, default=0), min(r, default=0))


def receipt_state(users: Iterable[str], sender: str | None, seq: int,
                  marks: Callable[[str], Sequence[int]]) -> ReceiptState:
    """Who has message `seq` of a chat: read, delivered (not read yet) or pending, of its
    participants other than the sender."""
    delivered_: list[str] = []
    read: list[str] = []
    pending: list[str] = []
    for u in users:
        if u == sender:
            continue
        d, r = marks(u)
        (read if r >= seq else delivered_ if d >= seq else pending).append(u)
    return ReceiptState(tuple(delivered_), tuple(read), tuple(pending))
