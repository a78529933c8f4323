"""In-memory store: the reference model of the Store contract, for tests and `memory://`."""

from __future__ import annotations

import dataclasses

from chatd.protocol.frames import Deliver, HistoryItem, Status

from .base import Appended, AppendListener, Item, NewMessage, Page, receipts_for


@dataclasses.dataclass
class _User:
    last_q: int = 0
    inbox: dict[int, Item] = dataclasses.field(default_factory=dict)
    devices: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _Conv:
    last_seq: int = 0
    messages: dict[int, Deliver] = dataclasses.field(default_factory=dict)
    delivered: dict[str, int] = dataclasses.field(default_factory=dict)  # user -> seq
    read: dict[str, int] = dataclasses.field(default_factory=dict)


class MemoryStore:
    def __init__(self) -> None:
        self._users: dict[str, _User] = {}
        self._convs: dict[str, _Conv] = {}
        self._ids: dict[tuple[str, str], tuple[str, int, int]] = {}
        self.on_append: AppendListener | None = None

    def _emit(self, result: Appended) -> Appended:
        if self.on_append is not None and result.items:
            self.on_append(result.items)
        return result

    def _user(self, user: str) -> _User:
        return self._users.setdefault(user, _User())

    async def add_user(self, user: str) -> None:
        self._user(user)

    async def has_user(self, user: str) -> bool:
        return user in self._users

    async def attach_device(self, user: str, device: str) -> int:
        u = self._user(user)
        if device not in u.devices:
            u.devices[device] = min(u.devices.values(), default=0)
        return u.devices[device]

    async def cursor(self, user: str, device: str) -> int:
        return self._user(user).devices.get(device, 0)

    async def append_messages(self, msgs: list[NewMessage]) -> list[Appended]:
        return [self._append(m) for m in msgs]

    async def append_message(self, msg: NewMessage) -> Appended:
        return self._append(msg)

    def _append(self, msg: NewMessage) -> Appended:
        known = self._ids.get((msg.sender, msg.client_id))
        if known is not None:
            conv, seq, ts = known
            return Appended(conv, seq, ts, duplicate=True)
        c = self._convs.setdefault(msg.conv, _Conv())
        c.last_seq += 1
        seq = c.last_seq
        self._ids[(msg.sender, msg.client_id)] = (msg.conv, seq, msg.ts)
        template = Deliver(q=1, conv=msg.conv, seq=seq, ts=msg.ts, sender=msg.sender,
                           device=msg.device, id=msg.client_id, body=msg.body, group=msg.group,
                           media=msg.media)
        c.messages[seq] = template
        items: list[tuple[str, Item]] = []
        targets = msg.recipients
        if len(self._user(msg.sender).devices) > 1:  # a copy for the sender's other devices
            targets = (*targets, msg.sender)
        for user in targets:
            u = self._user(user)
            u.last_q += 1
            item = dataclasses.replace(template, q=u.last_q)
            u.inbox[u.last_q] = item
            items.append((user, item))
        return self._emit(Appended(msg.conv, seq, msg.ts, items=tuple(items)))

    async def inbox(self, user: str, device: str, after: int, limit: int) -> Page:
        u = self._user(user)
        items: list[Item] = []
        q = after
        while q < u.last_q and q - after < limit:
            q += 1
            item = u.inbox.get(q)
            if item is None or (isinstance(item, Deliver) and item.sender == user
                                and item.device == device):
                continue
            items.append(item)
        return Page(items, q, q < u.last_q)

    async def ack(self, user: str, device: str, upto: int, ts: int) -> Appended:
        u = self._user(user)
        old = u.devices.get(device, 0)
        upto = min(upto, u.last_q)
        if upto <= old:
            return Appended()
        u.devices[device] = upto
        newly: list[tuple[str, str, int]] = []
        for q in range(old + 1, upto + 1):
            item = u.inbox.get(q)
            if isinstance(item, Deliver) and item.sender != user:
                c = self._convs[item.conv]
                if item.seq > c.delivered.get(user, 0):
                    c.delivered[user] = item.seq
                    newly.append((item.sender, item.conv, item.seq))
        return self._receipts(user, Status.DELIVERED, ts, newly)

    async def mark_read(self, user: str, conv: str, upto: int, ts: int) -> Appended:
        c = self._convs.get(conv)
        if c is None:
            return Appended()
        upto = min(upto, c.last_seq)
        old = c.read.get(user, 0)
        if upto <= old:
            return Appended()
        c.read[user] = upto
        c.delivered[user] = max(c.delivered.get(user, 0), upto)
        newly = [(m.sender, conv, s) for s in range(old + 1, upto + 1)
                 if (m := c.messages.get(s)) is not None and m.sender != user]
        return self._receipts(user, Status.READ, ts, newly)

    def _receipts(self, by: str, status: int, ts: int,
                  newly: list[tuple[str, str, int]]) -> Appended:
        if not newly:
            return Appended()
        next_q = {sender: self._user(sender).last_q + 1 for sender, _, _ in newly}
        out = receipts_for(by, status, ts, newly, next_q)
        for sender, receipt in out:
            u = self._user(sender)
            u.inbox[receipt.q] = receipt
            u.last_q = receipt.q
        return self._emit(Appended(items=tuple(out)))

    async def history(self, conv: str, before: int | None, limit: int) -> list[HistoryItem]:
        c = self._convs.get(conv)
        if c is None:
            return []
        seq = c.last_seq if before is None else min(before - 1, c.last_seq)
        out: list[HistoryItem] = []
        while seq > 0 and len(out) < limit:
            m = c.messages.get(seq)
            if m is not None:
                out.append(HistoryItem(seq=m.seq, ts=m.ts, sender=m.sender, device=m.device,
                                       id=m.id, body=m.body, media=m.media, event=m.event))
            seq -= 1
        return out

    async def aclose(self) -> None:
        pass

