"""Group changes and who may make them, without a store."""

from chatd.core import GroupInfo, groups, modes
from chatd.protocol.errors import ErrorCode
from chatd.protocol.frames import Mode

INFO = GroupInfo("x", "friends", ("alice", "bob", "carol"), ("alice",))


def test_adding_twice_or_removing_a_stranger_changes_nothing() -> None:
    plan = groups.change({"alice": True, "bob": False}, "alice", add=("bob", "carol", "carol"),
                         remove=("zed",))
    assert plan.added == ["carol"] and plan.removed == [] and plan.successor is None
    assert plan.events == [({"kind": "added", "by": "alice", "users": ["carol"]}, ())]


def test_the_longest_standing_member_takes_over_when_the_last_admin_leaves() -> None:
    plan = groups.change({"alice": True, "bob": False, "carol": False}, "alice",
                         remove=("alice",))
    assert plan.successor == "bob" and plan.recount
    assert plan.events == [({"kind": "left", "by": "alice", "users": ["alice"]}, ("alice",))]
    plan = groups.change({"alice": True, "bob": False}, "alice", remove=("bob",))
    assert plan.successor is None  # an admin is left
    assert plan.events[0][0]["kind"] == "removed"
    assert groups.change({"alice": True}, "alice", remove=("alice",)).successor is None  # empty


def test_who_may_do_what() -> None:
    assert groups.may_add(INFO, "bob", ("dave",), 10) == groups.Refusal(
        ErrorCode.FORBIDDEN, "only admins add members")
    assert groups.may_add(INFO, "alice", ("dave",), 3).code == ErrorCode.INVALID  # too many
    assert groups.may_add(INFO, "alice", ("dave",), 4) is None
    assert groups.may_remove(INFO, "bob", ("bob",)) is None  # leaving
    assert groups.may_remove(INFO, "bob", ("carol",)).code == ErrorCode.FORBIDDEN
    assert groups.may_rename(INFO, "carol").code == ErrorCode.FORBIDDEN
    assert groups.may_set_mode(INFO, "alice") is None
    assert groups.member_problem("x", None, "bob").code == ErrorCode.UNKNOWN_TARGET
    assert groups.member_problem("x", INFO, "zed").code == ErrorCode.FORBIDDEN
    assert groups.may_create("alice", ["alice", "bob"], 2) is None  # the creator counts once


def test_chat_modes_keep_and_forget() -> None:
    assert modes.problem(Mode.DISAPPEARING, 0) is not None
    assert modes.problem(Mode.PERMANENT, 5) is not None
    assert modes.problem(Mode.DISAPPEARING, 5) is None
    assert modes.forgets_delivered(Mode.TEMPORARY) and not modes.forgets_delivered(Mode.PERMANENT)
    assert modes.expires_before(Mode.DISAPPEARING, 60, 100_000) == 40_000
    assert modes.expires_before(Mode.PERMANENT, 60, 100_000) is None
    ev = modes.chat_event("d:alice:bob", "alice", 1, modes.event(Mode.PERMANENT, 0, "alice"))
    assert ev.recipients == ("bob",) and ev.group is None and ev.device == "server"
    ev = modes.chat_event("g:x", "alice", 1, {"kind": "left"}, also=("bob",))
    assert ev.recipients == ("bob",) and ev.group == "x"
