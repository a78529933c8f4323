"""Inbox items as the frames a device gets, and back (what a peer process sends): nothing is
lost or mixed up on the way, whichever field."""

import time

from chatd.core import Delivery, Message, Notice, ReceiptNote, convs, groups, modes, wire
from chatd.core.values import NewMessage, message_bytes, now_ms
from chatd.protocol import decode_body
from chatd.protocol import frames as F
from chatd.protocol.frames import Mode, Status

MEDIA = F.Media(id="img-1", mime="image/jpeg", size=2048, width=640, height=480,
                sha256=b"\x01" * 32, preview=b"\xff\xd8jpeg")
MESSAGE = Message(conv="g:climbers", seq=42, ts=1_700_000_000_123, sender="alice",
                  device="laptop", id="c-9", body=b"on the wall", group="climbers",
                  media=(MEDIA,), event={"kind": "renamed", "by": "alice", "name": "x"})
RECEIPT = ReceiptNote(to="bob", conv="d:alice:bob", seqs=(3, 5, 8), by="alice",
                      status=Status.READ, ts=1_700_000_000_456, all=True)


def test_a_delivery_becomes_a_deliver_frame_with_every_field_and_comes_back_the_same() -> None:
    item = Delivery(17, MESSAGE)
    frame = wire.frame(item)
    assert frame == F.Deliver(q=17, conv="g:climbers", seq=42, ts=1_700_000_000_123,
                              sender="alice", device="laptop", id="c-9", body=b"on the wall",
                              group="climbers", media=(MEDIA,), event=MESSAGE.event)
    assert decode_body(wire.body(item)) == frame
    assert wire.item("bob", frame) == item


def test_a_receipt_becomes_a_receipt_frame_with_every_field_and_comes_back_the_same() -> None:
    item = Notice(9, RECEIPT)
    frame = wire.frame(item)
    assert frame == F.Receipt(q=9, conv="d:alice:bob", seqs=(3, 5, 8), by="alice",
                              status=Status.READ, ts=1_700_000_000_456, all=True)
    assert decode_body(wire.body(item)) == frame
    assert wire.item("bob", frame) == item  # (the frame does not say whose: the peer does)


def test_the_small_rules_beside_them() -> None:
    assert groups.founders("alice", ["bob", "alice", "carol", "bob"]) == ["alice", "bob", "carol"]
    assert groups.created("alice", "climbers", ["alice", "bob"]) == {
        "kind": "created", "by": "alice", "name": "climbers", "users": ["alice", "bob"]}
    assert modes.ttl_of(Mode.DISAPPEARING, 30) == 30 and modes.ttl_of(Mode.PERMANENT, 30) == 0
    assert modes.forgets_undelivered(Mode.TEMPORARY)
    assert not modes.forgets_undelivered(Mode.PERMANENT)
    assert not modes.forgets_undelivered(Mode.DISAPPEARING)
    assert "d:A:B" in convs.describe() and "g:GROUP" in convs.describe()
    new = NewMessage(sender="alice", device="phone", client_id="c1", conv="d:alice:bob",
                     recipients=("bob",), body=b"x" * 50, ts=1)
    assert message_bytes(new) == 250
    assert message_bytes(MESSAGE) == 200 + 11 + 300 + 6
    before = int(time.time() * 1000)
    assert before <= now_ms() <= int(time.time() * 1000)
