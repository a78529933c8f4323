"""Calls between nodes (sans-IO): work handed to the node that owns it, and its answer.

With `numbering=owner` and several nodes, a conversation's seqs and a user's inbox positions
are given by the node that owns their shard (chatd.core.owners). A node that gets a send for
a chat it does not own hands it to the owner ("send"), and the owner of a chat hands the
inbox items it appends to the owner of each inbox ("inbox"). These functions turn the
arguments and answers of those calls into msgpack-able values and back; they travel in the
peer datagrams of chatd.router.peers ("c" and "r").

  send   args   [[conv, ts, sender, device, client_id, body, group, media, event,
                  recipients] ...]                                   the NewMessages
         answer [[conv, seq, ts, duplicate] ...]                     their Appended, in order
  inbox  args   [user, [entry ...], [fresh ...]]   entry: ["m", message fields] or
                                                   ["n", conv, seqs, by, status, ts, all]
         answer [q or None ...]                    where each entry went (None: there already)
"""

from __future__ import annotations

from typing import Any, Final

from chatd.core import Message, NewMessage, ReceiptNote
from chatd.protocol.frames import Media
from chatd.protocol.schema import from_map, to_map

SEND: Final = "send"
INBOX: Final = "inbox"


class BadCall(ValueError):
    """A call or an answer that does not decode (a peer's bug, or another version)."""


def _media(media: tuple[Media, ...]) -> list[dict[str, Any]]:
    return [to_map(m) for m in media]


def _media_of(maps: Any) -> tuple[Media, ...]:
    return tuple(from_map(Media, m, "media") for m in maps)


def send_args(msgs: list[NewMessage]) -> list[Any]:
    return [[m.conv, m.ts, m.sender, m.device, m.client_id, m.body, m.group, _media(m.media),
             m.event, list(m.recipients)] for m in msgs]


def send_of(args: Any) -> list[NewMessage]:
    try:
        return [NewMessage(sender=str(a[2]), device=str(a[3]), client_id=str(a[4]),
                           conv=str(a[0]), recipients=tuple(str(u) for u in a[9]),
                           body=bytes(a[5]), ts=int(a[1]), media=_media_of(a[7]),
                           group=None if a[6] is None else str(a[6]),
                           event=None if a[8] is None else dict(a[8])) for a in args]
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise BadCall(f"bad send call: {exc!r}") from exc


def sent_answer(results: list[tuple[str, int, int, bool]]) -> list[Any]:
    """(conv, seq, ts, duplicate) of each message, in order."""
    return [list(r) for r in results]


def sent_of(answer: Any) -> list[tuple[str, int, int, bool]]:
    try:
        return [(str(r[0]), int(r[1]), int(r[2]), bool(r[3])) for r in answer]
    except (TypeError, ValueError, IndexError) as exc:
        raise BadCall(f"bad send answer: {exc!r}") from exc


def _entry(e: Message | ReceiptNote) -> list[Any]:
    if type(e) is Message:
        return ["m", e.conv, e.seq, e.ts, e.sender, e.device, e.id, e.body, e.group,
                _media(e.media), e.event]
    assert type(e) is ReceiptNote
    return ["n", e.conv, list(e.seqs), e.by, e.status, e.ts, e.all]


def _entry_of(user: str, a: Any) -> Message | ReceiptNote:
    if a[0] == "m":
        return Message(conv=str(a[1]), seq=int(a[2]), ts=int(a[3]), sender=str(a[4]),
                       device=str(a[5]), id=str(a[6]), body=bytes(a[7]),
                       group=None if a[8] is None else str(a[8]), media=_media_of(a[9]),
                       event=None if a[10] is None else dict(a[10]))
    if a[0] == "n":
        return ReceiptNote(to=user, conv=str(a[1]), seqs=tuple(int(s) for s in a[2]),
                           by=str(a[3]), status=int(a[4]), ts=int(a[5]), all=bool(a[6]))
    raise ValueError(f"unknown entry kind {a[0]!r}")


def inbox_args(user: str, entries: list[Message | ReceiptNote], fresh: list[bool]
               ) -> list[Any]:
    return [user, [_entry(e) for e in entries], fresh]


def inbox_of(args: Any) -> tuple[str, list[Message | ReceiptNote], list[bool]]:
    try:
        user = str(args[0])
        entries = [_entry_of(user, a) for a in args[1]]
        fresh = [bool(f) for f in args[2]]
        if len(fresh) != len(entries):
            raise ValueError("one fresh flag per entry")
        return user, entries, fresh
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise BadCall(f"bad inbox call: {exc!r}") from exc


def placed_of(answer: Any, n: int) -> list[int | None]:
    """The inbox call's answer: a position (or None) for each of its n entries."""
    try:
        out = [None if q is None else int(q) for q in answer]
    except (TypeError, ValueError) as exc:
        raise BadCall(f"bad inbox answer: {exc!r}") from exc
    if len(out) != n:
        raise BadCall(f"inbox answer for {len(out)} entries, not {n}")
    return out
