"""What a malformed frame is told: the exact message for each kind of bad field (it goes back
to the peer in Error.msg, so a client developer can find the problem)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from chatd.protocol import ErrorCode, ProtocolError, decode_body
from chatd.protocol import frames as F
from chatd.protocol.schema import Scalars, Struct

SEND = {"t": 10, "id": "m1", "to": "bob"}
MEDIA = {"id": "x", "mime": "image/png", "size": 1}


def message_of(obj: Any) -> str:
    with pytest.raises(ProtocolError) as info:
        decode_body(msgpack.packb(obj, use_bin_type=True))
    assert info.value.code == ErrorCode.MALFORMED
    return info.value.message


@pytest.mark.parametrize(("frame", "message"), [
    ({**SEND, "id": 5}, "id: expected str, got int"),
    ({**SEND, "id": ""}, "id: length 0 outside 1..64"),
    ({**SEND, "to": "bad user!"}, "to: 'bad user!' does not match [A-Za-z0-9_.\\-]{1,64}"),
    ({**SEND, "to": "x" * 65}, "to: length 65 outside 0..64"),
    ({"t": 13, "q": True}, "q: expected int, got bool"),
    ({"t": 13, "q": -1}, "q: -1 outside 0..9223372036854775807"),
    ({"t": 20, "r": 1, "c": "d:a:b", "n": 201}, "n: 201 outside 1..200"),
    ({"t": 1, "v": 1, "tok": "x", "bg": 1}, "bg: expected bool, got int"),
    ({**SEND, "b": "text"}, "b: expected bin, got str"),
    ({**SEND, "m": [{**MEDIA, "sha": b"x" * 33}]}, "sha: 33 bytes, at most 32"),
    ({**SEND, "m": "x"}, "m: expected array, got str"),
    ({**SEND, "m": [MEDIA] * 17}, "m: 17 items, at most 16"),
    ({**SEND, "m": [5]}, "m: expected map, got int"),
    ({**SEND, "m": [{"mime": "image/png", "size": 1}]}, "m: missing field 'id'"),
    ({"t": 12, "q": 1, "c": "d:a:b", "s": 1, "ts": 1, "f": "a", "fd": "d", "id": "m",
      "ev": "x"}, "ev: expected a map of at most 32 entries"),
    ({"t": 12, "q": 1, "c": "d:a:b", "s": 1, "ts": 1, "f": "a", "fd": "d", "id": "m",
      "ev": {"k": 1.5}}, "ev.k: expected str, int, bool or array of str"),
    ({"t": 12, "q": 1, "c": "d:a:b", "s": 1, "ts": 1, "f": "a", "fd": "d", "id": "m",
      "ev": {"us": ["a", 1]}}, "ev.us: expected str, got int"),
    ({"t": 10, "to": "bob"}, "Send: missing field 'id'"),
    ([1, 2], "frame must be a map, got list"),
    ({"t": "1"}, "frame needs an int type in key 't'"),
    ({"t": 99}, "unknown frame type 99"),
])
def test_each_malformed_field_is_named(frame: Any, message: str) -> None:
    assert message_of(frame) == message


def test_not_msgpack_names_what_the_decoder_said() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_body(b"\xc1")
    assert info.value.message == "not a msgpack value: FormatError"
    with pytest.raises(ProtocolError) as info:
        decode_body(b"\x80\x80")
    assert info.value.message == "not a msgpack value: ExtraData"


def test_checks_that_msgpack_limits_make_unreachable_still_hold() -> None:
    """(Maps over 32 entries and non-str keys are refused by the decoder's own limits first;
    the kinds refuse them too, for values that come from elsewhere.)"""
    with pytest.raises(ProtocolError) as info:
        Scalars().check({1: "x"}, "ev")
    assert info.value.message == "ev: keys must be str"
    with pytest.raises(ProtocolError) as info:
        Scalars().check({str(i): i for i in range(33)}, "ev")
    assert info.value.message == "ev: expected a map of at most 32 entries"
    assert Scalars().check({str(i): i for i in range(32)}, "ev") == {str(i): i
                                                                     for i in range(32)}
    with pytest.raises(ProtocolError) as info:
        Struct(F.Media).check({**MEDIA, **{str(i): i for i in range(30)}}, "m")
    assert info.value.message == "m: 33 entries, at most 32"
    media = {**MEDIA, **{str(i): i for i in range(29)}}  # 32 entries: unknown keys ignored
    assert Struct(F.Media).check(media, "m") == F.Media(id="x", mime="image/png", size=1)


def test_limits_are_inclusive() -> None:
    """A value exactly at a limit is taken; one more is not."""
    longest = "u" * 64
    assert decode_body(msgpack.packb({**SEND, "to": longest})) == F.Send(id="m1", to=longest)
    media = (F.Media(id="x", mime="image/png", size=1),) * 16
    assert decode_body(msgpack.packb({**SEND, "m": [MEDIA] * 16})) == F.Send(
        id="m1", to="bob", media=media)


def test_a_long_bad_value_is_quoted_up_to_40_characters() -> None:
    bad = "!" * 50
    assert message_of({**SEND, "to": bad}) == \
        f"to: {bad[:40]!r} does not match [A-Za-z0-9_.\\-]{{1,64}}"


def test_map_keys_must_be_strings() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_body(b"\x82\xa1t\x03\x01\x02")  # {"t": 3, 1: 2}
    assert info.value.code == ErrorCode.MALFORMED


def test_nil_for_an_optional_field_skips_only_that_field() -> None:
    assert decode_body(msgpack.packb({"t": 10, "id": "m", "to": None, "g": "grp",
                                      "b": b"x"}, use_bin_type=True)) == \
        F.Send(id="m", group="grp", body=b"x")


def test_a_body_over_the_decoders_limit_is_too_large() -> None:
    body = msgpack.packb({"t": 3})
    with pytest.raises(ProtocolError) as info:
        decode_body(body, max_size=len(body) - 1)
    assert (info.value.code, info.value.message) == (
        ErrorCode.TOO_LARGE, f"frame of {len(body)} bytes, limit {len(body) - 1}")
    assert decode_body(body, max_size=len(body)) == F.Ping()


@pytest.mark.parametrize("value", [[None] * 4097, {str(i): 0 for i in range(33)},
                                   msgpack.ExtType(1, b"x"), [msgpack.ExtType(1, b"xy")]])
def test_unknown_keys_are_ignored_but_their_values_obey_the_limits(value: Any) -> None:
    """At most 4096 items per array and 32 entries per map, and no ext types, anywhere in
    a frame (PROTOCOL.md section 1): the decoder's own limits, not only the fields'."""
    assert decode_body(msgpack.packb({"t": 3, "x": [None] * 4096})) == F.Ping()
    with pytest.raises(ProtocolError) as info:
        decode_body(msgpack.packb({"t": 3, "x": value}))
    assert info.value.code == ErrorCode.MALFORMED
