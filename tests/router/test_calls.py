"""Calls between nodes (sans-IO): a forwarded send and an inbox append, their answers, and
the peer datagrams that carry them to one node."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from chatd.core import Message, NewMessage, ReceiptNote
from chatd.protocol.frames import Media
from chatd.router import calls, peers

MEDIA = (Media(id="m1", mime="image/jpeg", size=10, width=2, height=3, sha256=b"s" * 32,
               preview=b"jpg"),)


def over_the_wire(value: Any) -> Any:
    return msgpack.unpackb(msgpack.packb(value))


def test_a_send_and_its_answer_decode_as_they_were() -> None:
    msgs = [NewMessage("alice", "phone", "c1", "d:alice:bob", ("bob",), b"\x00hi", 5,
                       media=MEDIA),
            NewMessage("alice", "phone", "c2", "g:g1", (), b"", 6, group="g1",
                       event={"k": "add", "users": ["carol"]})]
    assert calls.send_of(over_the_wire(calls.send_args(msgs))) == msgs
    answer = [("d:alice:bob", 7, 5, False), ("g:g1", 1, 6, True)]
    assert calls.sent_of(over_the_wire(calls.sent_answer(answer))) == answer


def test_an_inbox_append_decodes_as_it_was() -> None:
    entries: list[Message | ReceiptNote] = [
        Message("d:alice:bob", 3, 9, "alice", "phone", "c3", b"x", media=MEDIA),
        ReceiptNote("bob", "d:alice:bob", (1, 2), "alice", 1, 10, all=True)]
    args = over_the_wire(calls.inbox_args("bob", entries, [True, False]))
    assert calls.inbox_of(args) == ("bob", entries, [True, False])
    assert calls.placed_of(over_the_wire([4, None]), 2) == [4, None]


@pytest.mark.parametrize("bad", [None, [[1]], [["d:a:b", "x"]], "text"])
def test_bad_calls_and_answers_raise_bad_call(bad: Any) -> None:
    for decode in (calls.send_of, calls.sent_of, calls.inbox_of,
                   lambda a: calls.placed_of(a, 1)):
        with pytest.raises(calls.BadCall):
            decode(bad)


class Recorder:
    def __init__(self) -> None:
        self.got: list[tuple[Any, ...]] = []

    def peer_call(self, origin: str, rid: int, what: str, args: Any, until: int) -> None:
        self.got.append(("call", origin, rid, what, args, until))

    def peer_answer(self, rid: int, ok: bool, answer: Any) -> None:
        self.got.append(("answer", rid, ok, answer))


def test_calls_and_answers_go_to_one_node_each() -> None:
    box = peers.Outbox("n1")
    box.call("n2", 7, calls.SEND, [["d:a:b"]], 1_700_000_000_000)
    box.answer("n3", 8, False, "refused")
    box.presence("alice", True, 1)  # (for every peer: not among the direct ones)
    assert box
    direct = box.direct()
    assert sorted(direct) == ["n2", "n3"] and not box.direct()
    r = Recorder()
    for node in ("n2", "n3"):
        one = peers.Outbox("n1")
        for m in direct[node]:
            one.raw(m)
        for data in one.take():
            peers.handle(data, r)  # type: ignore[arg-type]
    assert r.got == [("call", "n1", 7, "send", [["d:a:b"]], 1_700_000_000_000),
                     ("answer", 8, False, "refused")]


def test_a_large_batch_is_handed_over_in_calls_of_bounded_size() -> None:
    """A datagram between workers holds a few hundred KiB: a batch of sends to an owner goes
    in consecutive calls of at most about CALL_BYTES (one message each at least), in order."""
    from chatd.router.forward import CALL_BYTES, chunks

    big = 60 * 1024
    parts = chunks([big] * 7 + [10] * 3 + [CALL_BYTES * 2])
    assert [list(p) for p in parts] == [[0], [1], [2], [3], [4], [5], [6, 7, 8, 9], [10]]
    assert chunks([10] * 5) == [range(0, 5)] and chunks([]) == []
