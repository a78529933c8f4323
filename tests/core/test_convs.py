"""Conversation ids: one spelling per chat, whoever writes it."""

from hypothesis import given
from hypothesis import strategies as st

from chatd.core import convs

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=12)


@given(names, names)
def test_a_direct_chat_has_one_id_from_both_sides(a: str, b: str) -> None:
    conv = convs.direct(a, b)
    assert conv == convs.direct(b, a)
    assert convs.canonical_pair(conv) == tuple(sorted((a, b)))
    assert not convs.is_group(conv) and convs.group_of(conv) is None
    assert set(convs.others(conv, a)) == ({b} - {a})


@given(names)
def test_a_group_id_round_trips(g: str) -> None:
    conv = convs.of_group(g)
    assert convs.is_group(conv) and convs.group_of(conv) == g
    assert convs.pair(conv) is None and convs.others(conv, "x") == ()


def test_ids_the_server_never_writes_are_not_canonical() -> None:
    assert convs.canonical_pair("d:bob:alice") is None  # not sorted
    assert convs.pair("d:bob:alice") == ("bob", "alice")
    for bad in ("d:alice", "d:a:b:c", "x:a:b", "", "d:"):
        assert convs.canonical_pair(bad) is None
