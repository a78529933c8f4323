"""The delivery rules, without a store: targets, cursors, receipts, group floors."""

from hypothesis import example, given
from hypothesis import strategies as st

from chatd.core import ReceiptNote, delivery
from chatd.protocol.frames import Status

users = st.sampled_from(["alice", "bob", "carol", "dave", "erin"])


def test_a_one_to_one_message_goes_to_the_recipient_and_the_senders_other_devices() -> None:
    assert delivery.send_targets("alice", ("bob",), (), 1) == ("bob",)
    assert delivery.send_targets("alice", ("bob",), (), 2) == ("bob", "alice")
    assert delivery.send_targets("alice", (), (), 1) == ()  # a note to oneself, one device


def test_a_group_message_goes_to_each_member_once_and_never_back_to_a_lone_device() -> None:
    members = ("alice", "bob", "carol")
    assert delivery.send_targets("alice", ("bob",), members, 1) == ("bob", "carol")
    assert delivery.send_targets("alice", ("dave",), members, 3) == (
        "bob", "carol", "dave", "alice")


def test_the_sending_device_does_not_get_its_own_message() -> None:
    assert not delivery.shown_to("alice", "phone", "alice", "phone")
    assert delivery.shown_to("alice", "laptop", "alice", "phone")
    assert delivery.shown_to("bob", "phone", "alice", "phone")


@given(st.integers(0, 100), st.integers(0, 100), st.integers(0, 100))
def test_a_cursor_only_rises_and_stops_at_the_end_of_the_inbox(old: int, upto: int,
                                                               last: int) -> None:
    new = delivery.new_cursor(old, upto, last)
    if new is None:
        assert min(upto, last) <= old
    else:
        assert old < new == min(upto, last)


def test_an_ack_raises_watermarks_and_receipts_direct_chats_only() -> None:
    got = delivery.delivered("bob", [
        ("alice", "d:alice:bob", 1), ("alice", "d:alice:bob", 2),
        ("bob", "d:bob:carol", 7),  # bob's own: no receipt, no watermark
        ("carol", "g:x", 4), ("alice", "g:x", 5),
        ("alice", "d:alice:bob", 2),  # seen twice (redelivered): once
    ], {"d:alice:bob": 0, "g:x": 4}.__getitem__)
    assert got.direct == [("alice", "d:alice:bob", 1), ("alice", "d:alice:bob", 2)]
    assert got.raised == {"d:alice:bob": 2, "g:x": 5}
    assert got.groups == ["g:x"]


def test_receipts_are_one_per_sender_and_chat() -> None:
    notes = delivery.receipts("bob", Status.DELIVERED, 9, [
        ("alice", "d:alice:bob", 1), ("carol", "d:bob:carol", 3), ("alice", "d:alice:bob", 2)])
    assert notes == [
        ReceiptNote("alice", "d:alice:bob", (1, 2), "bob", Status.DELIVERED, 9),
        ReceiptNote("carol", "d:bob:carol", (3,), "bob", Status.DELIVERED, 9)]


def test_a_read_tells_the_sender_and_the_readers_other_devices_not_about_events() -> None:
    rows = [("alice", 3, False), ("bob", 4, False), ("alice", 5, True), ("alice", 6, False)]
    notes = delivery.read_receipts("bob", "d:alice:bob", 6, 1, 2, rows)
    assert [(n.to, n.seqs) for n in notes] == [("bob", (6,)), ("alice", (3, 6))]
    assert all(n.status == Status.READ and n.by == "bob" and n.ts == 1 for n in notes)
    assert delivery.read_receipts("bob", "d:alice:bob", 6, 1, 1, rows)[0].to == "alice"
    # a group's are coalesced (all_receipts): only the reader's own devices hear of it here
    assert [n.to for n in delivery.read_receipts("bob", "g:x", 6, 1, 2, rows)] == ["bob"]
    assert delivery.new_read(10, 6, 6) is None and delivery.new_read(10, 8, 6) == 8


def test_all_receipts_cover_what_the_floor_passed_and_skip_events() -> None:
    assert delivery.all_receipts([2, 1], [5, 1]) == [(Status.DELIVERED, 2, 5)]
    assert delivery.all_receipts([2, 1], [5, 3]) == [(Status.DELIVERED, 2, 5),
                                                    (Status.READ, 1, 3)]
    notes = delivery.all_receipts_for("carol", "g:x", Status.READ, 1,
                                      [("alice", 3, False), ("alice", 4, True), ("bob", 5, False)])
    assert [(n.to, n.seqs, n.all) for n in notes] == [("alice", (3,), True), ("bob", (5,), True)]
    assert {(n.by, n.conv, n.status, n.ts) for n in notes} == {("carol", "g:x", Status.READ, 1)}


@given(st.dictionaries(users, st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1),
       st.lists(st.tuples(users, st.integers(0, 1), st.integers(0, 20)), max_size=40))
# two members reach the same mark, then one moves on: the other still holds the floor there
@example({"alice": (0, 0), "bob": (0, 0)}, [("alice", 0, 3), ("bob", 0, 3), ("alice", 0, 5)])
# one member moving twice: nobody is left at the mark between
@example({"alice": (0, 0)}, [("alice", 0, 3), ("alice", 0, 5)])
def test_mark_counts_floor_equals_the_lowest_member_watermark(
        start: dict[str, tuple[int, int]], moves: list[tuple[str, int, int]]) -> None:
    """SQLite keeps counts per watermark instead of scanning the members on every ack: the
    floor it reads is the one computed from scratch, whatever the members do."""
    marks = {u: list(m) for u, m in start.items()}
    counts = delivery.MarkCounts(marks)
    for user, which, value in moves:
        if user not in marks or value <= marks[user][which]:
            continue  # watermarks only rise
        counts.move(user, which, marks[user][which], value)
        marks[user][which] = value
        assert counts.floor() == delivery.floor(marks, marks)
    counts.move("zed", 0, 0, 99)  # not a member: not counted
    assert counts.floor() == delivery.floor(marks, marks)


def test_a_member_without_a_watermark_holds_the_groups_floor_at_nothing() -> None:
    marks = {"alice": (4, 2), "bob": (3, 3)}
    assert delivery.floor(["alice", "bob"], marks) == (3, 2)
    assert delivery.floor(["alice", "bob", "carol"], marks) == (0, 0)  # carol has nothing yet
    assert delivery.floor([], marks) == (0, 0)
    assert delivery.MarkCounts({}).floor() == (0, 0)


def test_receipt_state_sorts_participants_but_the_sender() -> None:
    marks = {"bob": (5, 5), "carol": (5, 2), "dave": (1, 0)}
    st_ = delivery.receipt_state(["alice", "bob", "carol", "dave", "erin"], "alice", 5,
                                 lambda u: marks.get(u, (0, 0)))
    assert (st_.read, st_.delivered, st_.pending) == (("bob",), ("carol",), ("dave", "erin"))


def test_a_message_that_reached_the_inbox_after_a_later_one_was_delivered_gets_its_receipt(
) -> None:
    """bob's watermark in the chat is 2 (seq 2 delivered); seq 1 comes in late, at inbox
    position 5 (a send finished by its retry). `delivered` skips it; `missed` names it, and
    it is a first delivery if no other device of bob had reached position 5; bob's own
    message and a group message are never receipted this way."""
    from chatd.core.delivery import delivered, first_reached, missed

    covered = [("alice", "d:alice:bob", 1), ("bob", "d:alice:bob", 3), ("carol", "g:x", 1)]
    got = delivered("bob", covered, lambda conv: 2)
    assert got.direct == [] and got.raised == {}
    late = missed("bob", covered, got, lambda conv, seq: False)
    assert late == [("alice", "d:alice:bob", 1)]
    assert missed("bob", covered, got, lambda conv, seq: seq <= 1) == []  # receipted READ
    # what the read covered is asked by chat and seq
    assert missed("bob", covered, got, lambda conv, seq: (conv, seq) == ("d:alice:bob", 1)) == []
    assert missed("bob", covered, got, lambda conv, seq: conv == "d:bob:carol") == late
    position = {("alice", "d:alice:bob", 1): 5}
    assert first_reached(late, position, reached=4) == late  # bob's other devices were behind
    assert first_reached(late, position, reached=5) == []  # one of them had it: receipted then


def test_holes_are_seqs_a_read_passed_with_no_message_stored_yet() -> None:
    """A read from 2 up to 9 found seqs 3, 6 and 7 stored (at times 100, 100, 990): 4 and 5
    had no message yet (a send cut short after taking its seq), nor 8 and 9 (still being
    stored); a gap under a message older than the wait (deleted messages) is none."""
    from chatd.core.delivery import holes

    stored = [(3, 100), (6, 100), (7, 990)]
    assert holes(2, 9, stored, now=1000, wait_ms=1000) == [4, 5, 8, 9]
    assert holes(2, 9, stored, now=1200, wait_ms=1000) == [8, 9]  # 6 is old: 4-5 deleted
    assert holes(2, 7, stored, now=1000, wait_ms=1000) == [4, 5]
    assert holes(0, 3, [(1, 0), (2, 0), (3, 0)], now=10, wait_ms=1) == []
    assert holes(0, 1000, [(1000, 5)], now=10, wait_ms=100, most=3) == [997, 998, 999]
    assert holes(2, 5, [(4, 990)], now=1000, wait_ms=1000) == [3, 5]  # the first one after
    assert holes(0, 10, [], now=0, wait_ms=1, most=3) == [8, 9, 10]  # the end's gap, too
    assert holes(0, 100, [], now=0, wait_ms=1) == list(range(37, 101))  # 64 at most
    assert holes(2, 6, [(6, 0)], now=1000, wait_ms=1000) == []  # as old as the wait: none


def test_a_send_after_one_refused_for_now_gets_its_answer_until_that_one_is_taken_up() -> None:
    refused = delivery.RefusedForNow()
    assert not refused and refused.taken_up("b", "a") is None
    refused.add("a", 10, 500)
    assert refused  # (a connection with none skips the look-up)
    assert refused.taken_up("b", "a") == (10, 500)  # (the server then refuses b as well)
    refused.add("b", 10, 500)
    assert refused.taken_up("c", "b") == (10, 500)
    assert refused.taken_up("x", None) is None and refused.taken_up("y", "other") is None
    assert refused.taken_up("a", None) is None  # a is sent again: b may follow it now
    assert refused.taken_up("b", "a") is None
    refused.add("a", 7, 200)  # refused again (now rate-limited): that answer counts
    assert refused.taken_up("b", "a") == (7, 200)


def test_only_the_latest_sends_refused_for_now_are_remembered() -> None:
    refused = delivery.RefusedForNow()
    limit = delivery.RefusedForNow.LIMIT
    for i in range(limit + 10):
        refused.add(f"m{i}", 10, 500)
    assert refused.taken_up("n", "m9") is None  # forgotten: the oldest ten
    assert refused.taken_up("n", "m10") == (10, 500)
    assert refused.taken_up("n", f"m{limit + 9}") == (10, 500)



def test_a_send_refused_again_is_remembered_as_the_latest() -> None:
    refused = delivery.RefusedForNow()
    for i in range(delivery.RefusedForNow.LIMIT):
        refused.add(f"m{i}", 10, 500)
    refused.add("m0", 10, 500)  # the oldest, refused again
    refused.add("new", 10, 500)  # one over the limit: the oldest now is m1
    assert refused.taken_up("n", "m0") == (10, 500)
    assert refused.taken_up("n", "m1") is None
