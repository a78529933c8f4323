"""Inbox items (core values) as the frames a device gets (Deliver, Receipt), and back.

The stores keep and return core values; the server and the router encode them with these
functions when they send them (once per item, for every device and peer that gets it).
"""

from __future__ import annotations

from chatd.protocol import encode_body
from chatd.protocol import frames as F

from .values import Delivery, Item, Message, Notice, ReceiptNote


def frame(item: Item) -> F.Deliver | F.Receipt:
    if type(item) is Delivery:
        m = item.message
        return F.Deliver(q=item.q, conv=m.conv, seq=m.seq, ts=m.ts, sender=m.sender,
                         device=m.device, id=m.id, body=m.body, group=m.group, media=m.media,
                         event=m.event)
    assert type(item) is Notice
    r = item.receipt
    return F.Receipt(q=item.q, conv=r.conv, seqs=r.seqs, by=r.by, status=r.status, ts=r.ts,
                     all=r.all)


def body(item: Item) -> bytes:
    """The item's frame, encoded (without the length prefix)."""
    return encode_body(frame(item))


def item(user: str, f: F.Deliver | F.Receipt) -> Item:
    """The inbox item of `user` a frame carries (what a peer process sent)."""
    if type(f) is F.Deliver:
        return Delivery(f.q, Message(conv=f.conv, seq=f.seq, ts=f.ts, sender=f.sender,
                                     device=f.device, id=f.id, body=f.body, group=f.group,
                                     media=f.media, event=f.event))
    assert type(f) is F.Receipt
    return Notice(f.q, ReceiptNote(to=user, conv=f.conv, seqs=f.seqs, by=f.by,
                                   status=f.status, ts=f.ts, all=f.all))
