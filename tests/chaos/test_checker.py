"""The chaos checker's judge on its own: a history of a correct system passes, and each way of
corrupting it (lost, duplicated, reordered, unexpected, gaps, receipts, history, send_order)
is caught."""

from __future__ import annotations

import random
from typing import Any

import pytest

from bench import chaos_check as cc
from bench.chaos import parse_faults


@pytest.mark.parametrize("seed", range(5))
def test_a_correct_history_passes(seed: int) -> None:
    result = cc.check(cc.example_history(seed))
    assert result["ok"], result["examples"]
    assert result["stats"]["acknowledged"] == 60
    assert result["stats"]["redelivered_to_a_new_client"] == 3  # the app restart's repeats
    assert cc.verdict(result).startswith("chaos: PASS: 60 acknowledged of 60 sent")


@pytest.mark.parametrize("kind", list(cc.CORRUPTIONS))
@pytest.mark.parametrize("seed", range(3))
def test_each_corruption_is_caught_as_its_kind(kind: str, seed: int) -> None:
    history = cc.example_history(seed)
    bad = cc.check(cc.CORRUPTIONS[kind](history, random.Random(seed)))
    assert not bad["ok"] and bad["violations"][kind] > 0, bad["violations"]
    assert cc.verdict(bad).startswith("chaos: FAIL")


@pytest.mark.parametrize("kind", list(cc.CORRUPTIONS))
def test_violations_lists_every_violation_that_check_counts(kind: str) -> None:
    bad = cc.CORRUPTIONS[kind](cc.example_history(1), random.Random(1))
    listed = cc.violations(bad)
    assert {k: len(v) for k, v in listed.items()} == cc.check(bad)["violations"]
    assert listed[kind]


def test_self_test_reports_every_corruption() -> None:
    report = cc.self_test(cc.example_history(7))
    assert report["ok"] and report["clean_history_passes"]
    assert set(report["corruptions"]) == set(cc.KINDS)
    assert all(c["caught"] for c in report["corruptions"].values())


def test_a_corruption_found_only_as_another_kind_is_not_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A check that stopped seeing lost messages must show in the self-test even when the
    corrupted history fails for another reason."""
    monkeypatch.setitem(cc.CORRUPTIONS, "lost", cc.corrupt_duplicated)
    report = cc.self_test(cc.example_history(7))
    assert not report["ok"] and report["clean_history_passes"]
    assert report["corruptions"]["lost"]["caught"] is False
    assert report["corruptions"]["lost"]["violations"] == {"duplicated": 1}
    assert report["corruptions"]["duplicated"]["caught"]


def test_self_test_fails_when_the_history_is_not_clean() -> None:
    history = cc.corrupt_duplicated(cc.example_history(1), random.Random(1))
    assert not cc.self_test(history)["ok"]


def test_repeats_after_an_app_restart_are_not_duplicates_but_within_one_client_are() -> None:
    h = cc.example_history(2)
    again = next(r for r in h if r["t"] == "msg" and r["inc"] == 0 and r["dev"] == "u0/a")
    ok = cc.check([*h, dict(again, inc=1)])  # a new client got it again: allowed
    assert ok["ok"] and ok["stats"]["redelivered_to_a_new_client"] == 4
    bad = cc.check([*h, dict(again)])  # the same client shows it twice
    assert bad["violations"]["duplicated"] == 1


def test_a_message_stored_twice_is_a_duplicate_even_on_different_devices() -> None:
    h = cc.example_history(3)
    m = next(r for r in h if r["t"] == "msg" and not r["ev"] and r["dev"] == "u0/a")
    top = max(r["seq"] for r in h if r["t"] == "sent" and r["conv"] == m["conv"])
    moved = dict(m, dev="u0/b", inc=5, seq=top + 1)  # the same id again at a new seq
    result = cc.check([*h, moved])
    assert result["violations"]["duplicated"] >= 1
    assert any(e["why"] == "one message at several seqs"
               for e in result["examples"]["duplicated"])


def test_a_send_never_acknowledged_may_arrive_once_or_not_at_all() -> None:
    h = cc.example_history(4)
    h.append({"t": "send", "dev": "u2/a", "id": "u2.a.late", "conv": "d:u2:u3",
              "body": "late"})
    assert cc.check(h)["ok"]  # never arrived: fine
    top = max(r["seq"] for r in h if r["t"] == "sent" and r["conv"] == "d:u2:u3")
    seen = {"t": "msg", "dev": "u3/a", "inc": 0, "conv": "d:u2:u3", "seq": top + 1,
            "from": "u2", "fdev": "a", "id": "u2.a.late", "body": "late", "ev": False}
    for r in h:
        if r["t"] == "history" and r["conv"] == "d:u2:u3":
            r["items"].insert(0, {k: seen[k] for k in ("seq", "from", "fdev", "id", "body",
                                                       "ev")})
    once = cc.check([*h, seen])
    assert once["ok"], once["examples"]
    assert once["stats"]["never_acknowledged_but_stored"] == 1
    assert cc.check([*h, seen, dict(seen)])["violations"]["duplicated"] == 1


def test_fault_lists_parse() -> None:
    assert parse_faults("kill-node=2, drop=5,silent") == {"kill-node": 2, "drop": 5,
                                                          "silent": 1}
    assert parse_faults("") == {}
    with pytest.raises(ValueError, match="unknown fault"):
        parse_faults("meteor=1")


def test_sends_numbered_out_of_the_order_they_were_made_are_a_violation() -> None:
    records = cc.example_history(0)
    assert cc.check(records)["violations"]["send_order"] == 0
    sends = [r for r in records if r["t"] == "send"]
    a = next(r for r in sends if sum(1 for o in sends if (o["dev"], o["conv"])
                                     == (r["dev"], r["conv"])) >= 2)
    b = next(r for r in sends if r is not a and (r["dev"], r["conv"]) == (a["dev"], a["conv"])
             and sends.index(r) > sends.index(a))
    seqs = {r["id"]: r["seq"] for r in records if r["t"] == "sent" and r["dev"] == a["dev"]}
    ia, ib = records.index(a), records.index(b)
    records[ia], records[ib] = b, a  # b was made first, and got the higher seq
    result = cc.check(records)
    assert not result["ok"] and result["violations"]["send_order"] == 1
    assert result["examples"]["send_order"] == [
        {"dev": a["dev"], "conv": a["conv"], "id": a["id"], "seq": seqs[a["id"]],
         "made_after": b["id"], "whose_seq": seqs[b["id"]]}]


def _with(history: list[dict], *records: dict) -> dict[str, list[dict]]:
    return cc.violations([*history, *records])


def test_two_sends_given_one_seq_are_caught() -> None:
    """The server numbering a second message at a seq already taken in the chat (what two
    owners of one conversation would do): caught when its SENT comes, delivered or not."""
    h = cc.example_history(1)
    first = next(r for r in h if r["t"] == "sent" and r["conv"] == "d:u0:u1")
    found = _with(h, {"t": "send", "dev": "u0/b", "id": "x1", "conv": "d:u0:u1", "body": "x"},
                  {"t": "sent", "dev": "u0/b", "id": "x1", "conv": "d:u0:u1",
                   "seq": first["seq"]})
    same = [v for v in found["unexpected"] if v["why"] == "two messages at one seq"]
    assert same == [{"why": "two messages at one seq", "conv": "d:u0:u1", "seq": first["seq"],
                     "ids": [[cc._user(first["dev"]), first["id"]], ["u0", "x1"]],
                     "where": "sent"}]


def test_a_send_acknowledged_twice_with_different_seqs_is_a_duplicate() -> None:
    h = cc.example_history(1)
    first = next(r for r in h if r["t"] == "sent")
    found = _with(h, dict(first, seq=first["seq"] + 100))
    assert {"why": "SENT twice with different seqs", "id": [cc._user(first["dev"]), first["id"]],
            "conv": first["conv"], "seqs": [first["seq"], first["seq"] + 100]} in found[
        "duplicated"]
    assert not _with(h, dict(first))["duplicated"]  # the same SENT again (a retry): fine


def test_a_send_order_is_checked_past_a_send_that_got_no_sent() -> None:
    h = cc.example_history(1)
    found = _with(h, *[{"t": "send", "dev": "u0/b", "id": i, "conv": "d:u0:u1", "body": i}
                       for i in ("y1", "y2", "y3")],
                  {"t": "sent", "dev": "u0/b", "id": "y1", "conv": "d:u0:u1", "seq": 500},
                  {"t": "sent", "dev": "u0/b", "id": "y3", "conv": "d:u0:u1", "seq": 400})
    assert found["send_order"] == [{"dev": "u0/b", "conv": "d:u0:u1", "id": "y3", "seq": 400,
                                    "made_after": "y1", "whose_seq": 500}]


def test_a_send_the_server_refused_is_not_left_unacknowledged() -> None:
    h = cc.example_history(1)
    send = {"t": "send", "dev": "u0/b", "id": "z1", "conv": "d:u0:u1", "body": "z"}
    stats = cc.check([*h, send])["stats"]
    assert (stats["never_acknowledged"], stats["refused"]) == (1, 0)
    stats = cc.check([*h, send, {"t": "fail", "dev": "u0/b", "id": "z1"}])["stats"]
    assert (stats["never_acknowledged"], stats["refused"]) == (0, 1)
    assert stats["messages_seen"] == sum(1 for r in h if r["t"] == "msg")


@pytest.mark.parametrize("seed", range(2))
def test_every_device_that_should_have_a_message_is_checked(seed: int) -> None:
    """Remove each device's sightings of each acknowledged message in turn: each time the
    checker names exactly that device and message as lost. (The recipients' devices, the
    sender's other devices, a group's members; not the device that sent it.)"""
    h = cc.example_history(seed)
    acks = {(cc._user(r["dev"]), r["id"]): r for r in h if r["t"] == "sent"}
    sightings = {(r["dev"], r["from"], r["id"]) for r in h
                 if r["t"] == "msg" and (r["from"], r["id"]) in acks}
    assert len({dev for dev, _, _ in sightings}) == 6  # every device in a chat, u0 has two
    for dev, sender, cid in sorted(sightings):
        ack = acks[(sender, cid)]
        cut = [r for r in h if not (r["t"] == "msg" and r["dev"] == dev
                                    and (r["from"], r["id"]) == (sender, cid))]
        assert cc.violations(cut)["lost"] == [
            {"dev": dev, "conv": ack["conv"], "seq": ack["seq"], "id": [sender, cid]}]


def test_who_must_get_a_message_written_out() -> None:
    """The example history is made with the checker's own rule for who gets a message, so
    the tests above cannot tell a wrong rule: it is written out here. Everyone in the chat
    but the sending device; a user's lone device never gets its own message, nor its own
    chat event (the server's), but with several devices each gets the events."""
    st = cc._State(cc.example_history(0))  # u0 has devices a and b, the others one each
    assert st.expected_devices("d:u0:u1", "u1", "a") == ["u0/a", "u0/b"]
    assert st.expected_devices("d:u0:u1", "u0", "a") == ["u0/b", "u1/a"]
    assert st.expected_devices("g:g1", "u2", "a") == ["u0/a", "u0/b", "u1/a", "u3/a", "u4/a"]
    assert st.expected_devices("g:g1", "u0", "server") == [
        "u0/a", "u0/b", "u1/a", "u2/a", "u3/a", "u4/a"]
    assert st.expected_devices("g:g1", "u1", "server") == ["u0/a", "u0/b", "u2/a", "u3/a",
                                                           "u4/a"]
    assert st.expected_devices("d:u9:u9", "u9", "a") == []  # not a chat of the run


def _history_changed(h: list[dict], conv: str, change: Any) -> list[dict]:
    return [dict(r, items=change(list(r["items"]))) if r["t"] == "history" and r["conv"] == conv
            else r for r in h]


def _whys(found: dict[str, list[dict]], kind: str) -> list[tuple[str, Any]]:
    return [(v["why"], v.get("seq", v.get("seqs"))) for v in found[kind]]


def test_the_stored_history_is_judged_item_by_item() -> None:
    h = cc.example_history(1)
    items = next(r["items"] for r in h if r["t"] == "history" and r["conv"] == "d:u0:u1")
    last, other = items[-1], items[-2]
    # the last message stored a second time, at the next seq
    twice = cc.violations(_history_changed(h, "d:u0:u1", lambda it: [
        *it, dict(last, seq=last["seq"] + 1)]))
    assert ("stored twice", last["seq"] + 1) in _whys(twice, "history")
    # a message that is not in the store, below the last one
    gone = cc.violations(_history_changed(h, "d:u0:u1", lambda it: [
        x for x in it if x["seq"] != other["seq"]]))
    assert _whys(gone, "history") == [("gap in the stored seqs", [other["seq"]]),
                                      ("missing", other["seq"])]
    # a stored body that is not what was sent (the chat is right)
    changed = cc.violations(_history_changed(h, "d:u0:u1", lambda it: [
        *it[:-1], dict(last, body="something else")]))
    assert ("not what was sent", last["seq"]) in _whys(changed, "history")
    # no history read back for two chats: both named
    unread = cc.violations([r for r in h if r["t"] != "history" or r["conv"] == "g:g1"])
    assert [v["conv"] for v in unread["history"] if v["why"] == "not read back"] == [
        "d:u0:u1", "d:u2:u3"]


def test_a_run_not_over_yet_is_judged_only_on_what_can_never_become_right() -> None:
    h = cc.example_history(1)
    # the last five receipts and the last message seen not there yet, no history read back
    cut = [r for r in h if r["t"] != "history"][:-5]
    last_msg = max(i for i, r in enumerate(cut) if r["t"] == "msg")
    cut = cut[:last_msg] + cut[last_msg + 1:]
    now = cc.check(cut, final=False)
    assert now["ok"] and now["violations"]["gaps"] == now["violations"]["history"] == 0
    assert now["violations"]["receipts"] == 5 and now["violations"]["lost"] == 1
    assert not cc.check(cut)["ok"]
    dup = cc.check(cc.corrupt_duplicated(cut, random.Random(1)), final=False)
    assert not dup["ok"]


def test_what_one_client_is_shown_is_judged_message_by_message() -> None:
    h = cc.example_history(1)
    i = next(k for k, r in enumerate(h) if r["t"] == "msg" and not r["ev"] and r["inc"] == 0)
    shown = h[i]
    where = (shown["dev"], shown["conv"], shown["seq"])

    def found(*changed: dict, at: int = i + 1) -> dict[str, list[dict]]:
        return cc.violations([*h[:at], *changed, *h[at:]])

    def at(kind: str, got: dict[str, list[dict]]) -> list[str]:
        return [v.get("why", "") for v in got[kind] if (v.get("dev"), v.get("conv"),
                                                        v.get("seq")) == where]

    # the same message again at another seq, or another message at the same seq: both
    # duplicates for that client (the first kept, the second judged no further)
    again = dict(shown, seq=shown["seq"] + 500)
    assert "seen twice by one client" in [v["why"] for v in found(again)["duplicated"]]
    other = dict(shown, id="someone-else")
    assert "seen twice by one client" in at("duplicated", found(other))
    # a later violation in the same history is still found after a duplicate
    later = next(r for r in h[i + 1:] if r["t"] == "msg" and r["dev"] == shown["dev"]
                 and r["conv"] == shown["conv"] and r["inc"] == 0 and r["seq"] > shown["seq"])
    both = cc.violations([*h[:i + 1], dict(shown), *h[i + 1:], dict(later, seq=0,
                                                                      id="never-sent")])
    assert both["duplicated"] and both["reordered"]
    # shown at a seq other than the one its SENT gave; shown with another body
    moved = [dict(r, seq=r["seq"] + 1000) if r is shown else r for r in h]
    assert any(v["why"] == f"SENT said seq {shown['seq']}" for v in
               cc.violations(moved)["unexpected"])
    edited = [dict(r, body="edited") if r is shown else r for r in h]
    assert [v["why"] for v in cc.violations(edited)["unexpected"]] == ["not what was sent"]


def test_the_run_is_counted() -> None:
    h = cc.example_history(1)
    stats = cc.check([*h, {"t": "fault", "kind": "kill-node"},
                      {"t": "fault", "kind": "kill-node"}, {"t": "fault", "kind": "drop"}])["stats"]
    assert stats["faults"] == {"kill-node": 2, "drop": 1}
    assert stats["messages_seen"] == sum(r["t"] == "msg" for r in h)
    assert stats["receipts_seen"] == sum(r["t"] == "rcpt" for r in h)
    assert stats["connections"] == sum(r["t"] == "conn" and r["what"] == "connected" for r in h)
    # the most items a device was given between connecting and being in sync
    assert stats["max_backlog_items"] == max(
        _backlog(h, dev) for dev in {r["dev"] for r in h if r["t"] == "conn"})


def _backlog(h: list[dict], dev: str) -> int:
    best, n = 0, None
    for r in h:
        if r.get("dev") != dev:
            continue
        if r["t"] == "conn":
            if r["what"] == "connected":
                n = 0
            elif r["what"] == "synced":
                best, n = max(best, n or 0), None
        elif r["t"] in ("msg", "rcpt") and n is not None:
            n += 1
    return best
