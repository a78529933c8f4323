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

def test_a_member_added_as_the_last_admin_leaves_is_not_an_admin() -> None:
    """alice, the only admin, adds carol and leaves in one change: bob, there before carol,
    takes over (a new member joins as a plain member)."""
    plan = groups.change({"alice": True, "bob": False}, "alice", add=("carol",),
                         remove=("alice",))
    assert plan.successor == "bob"
    plan = groups.change({"alice": True}, "alice", add=("carol",), remove=("alice",))
    assert plan.successor == "carol"  # the only one left


def test_a_rename_posts_its_new_name() -> None:
    plan = groups.change({"alice": True, "bob": False}, "bob", name="climbers")
    assert plan.name == "climbers" and not plan.recount
    assert plan.events == [({"kind": "renamed", "by": "bob", "name": "climbers"}, ())]
    assert groups.change({"alice": True}, "alice").name is None


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
    assert groups.may_remove(INFO, "alice", ("carol",)) is None
    assert groups.may_rename(INFO, "alice") is None
    assert groups.may_set_mode(INFO, "bob").code == ErrorCode.FORBIDDEN
    # every refusal says why, naming what the user would look for
    for refusal, says in ((groups.may_remove(INFO, "bob", ("carol",)), "admins remove"),
                          (groups.may_rename(INFO, "carol"), "admins rename"),
                          (groups.may_set_mode(INFO, "bob"), "admins change the group's mode"),
                          (groups.member_problem("x", None, "bob"), "no group 'x'"),
                          (groups.member_problem("x", INFO, "zed"), "not a member of group 'x'"),
                          (groups.may_create("alice", ["bob", "carol"], 2), "at most 2 members"),
                          (modes.problem(Mode.PERMANENT, 5), "ttl goes with DISAPPEARING")):
        assert refusal is not None and says in refusal.message, (refusal, says)


def test_chat_modes_keep_and_forget() -> None:
    assert modes.problem(Mode.DISAPPEARING, 0) is not None
    assert modes.problem(Mode.PERMANENT, 5) is not None
    assert modes.problem(Mode.DISAPPEARING, 5) is None
    assert modes.problem(Mode.DISAPPEARING, 1) is None  # one second is a ttl
    assert modes.problem(Mode.TEMPORARY, 0) is None
    assert modes.problem(Mode.DISAPPEARING, 0).code == ErrorCode.INVALID
    assert modes.forgets_delivered(Mode.TEMPORARY) and not modes.forgets_delivered(Mode.PERMANENT)
    assert modes.expires_before(Mode.DISAPPEARING, 60, 100_000) == 40_000
    assert modes.expires_before(Mode.PERMANENT, 60, 100_000) is None
    event = modes.event(Mode.DISAPPEARING, 30, "alice")
    assert event == {"kind": "mode", "mode": Mode.DISAPPEARING, "ttl": 30, "by": "alice"}
    ev = modes.chat_event("d:alice:bob", "alice", 7, event)
    assert ev.recipients == ("bob",) and ev.group is None and ev.device == "server"
    assert (ev.sender, ev.conv, ev.body, ev.ts, ev.event) == ("alice", "d:alice:bob", b"", 7,
                                                               event)
    other = modes.chat_event("d:alice:bob", "alice", 7, event)
    # (each is a message of its own: a retry of the request must not make it a duplicate)
    assert ev.client_id.startswith("ev-") and other.client_id != ev.client_id
    ev = modes.chat_event("g:x", "alice", 1, {"kind": "left"}, also=("bob",))
    assert ev.recipients == ("bob",) and ev.group == "x"
