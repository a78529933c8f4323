"""Codec properties: round trips, any bytes give a frame or a ProtocolError, limits hold."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatd.protocol import FRAME_TYPES, ErrorCode, ProtocolError, decode_body, encode_body
from chatd.protocol import frames as F
from chatd.protocol.limits import MAX_LIST_LEN, MAX_MAP_LEN

from .strategies import any_frame, for_class


@given(any_frame)
@settings(max_examples=600)
def test_every_frame_round_trips(frame: F.Frame) -> None:
    body = encode_body(frame)
    assert decode_body(body) == frame
    assert encode_body(decode_body(body)) == body  # canonical: one encoding per frame


@pytest.mark.parametrize("type_", sorted(FRAME_TYPES))
@given(data=st.data())
def test_each_frame_type_round_trips(type_: int, data: st.DataObject) -> None:
    frame = data.draw(for_class(FRAME_TYPES[type_]))
    assert decode_body(encode_body(frame)) == frame


@given(st.binary(max_size=200))
@settings(max_examples=2000)
def test_any_bytes_give_a_frame_or_a_protocol_error(data: bytes) -> None:
    try:
        frame = decode_body(data)
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
    else:
        assert type(frame) in FRAME_TYPES.values()


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=4),
    max_leaves=20,
)


@given(st.sampled_from(sorted(FRAME_TYPES)), st.dictionaries(
    st.sampled_from(["id", "to", "g", "b", "m", "v", "tok", "dev", "c", "s", "q", "r", "us"]),
    msgpack_values, max_size=6))
@settings(max_examples=1500)
def test_wrong_field_types_give_malformed(type_: int, fields: dict[str, object]) -> None:
    body = msgpack.packb({"t": type_, **fields}, use_bin_type=True)
    try:
        decode_body(body)
    except ProtocolError as exc:
        assert exc.code in (ErrorCode.MALFORMED, ErrorCode.TOO_LARGE)


def code_of(body: bytes) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        decode_body(body)
    return info.value.code


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def test_bad_bodies_name_the_problem() -> None:
    assert code_of(b"") == ErrorCode.MALFORMED
    assert code_of(pack([1, 2])) == ErrorCode.MALFORMED  # not a map
    assert code_of(pack({"t": 99})) == ErrorCode.MALFORMED  # unknown type
    assert code_of(pack({"t": "1"})) == ErrorCode.MALFORMED  # type not an int
    assert code_of(pack({"t": 10, "to": "bob"})) == ErrorCode.MALFORMED  # missing id
    assert code_of(pack({"t": 10, "id": 5})) == ErrorCode.MALFORMED  # wrong type
    assert code_of(pack({"t": 10, "id": "x", "to": "bad user!"})) == ErrorCode.MALFORMED
    assert code_of(pack({"t": 13, "q": True})) == ErrorCode.MALFORMED  # bool is not an int
    assert code_of(pack({"t": 13, "q": -1})) == ErrorCode.MALFORMED
    assert code_of(pack({"t": 1, "v": 1, "tok": "x"}) + b"\x00") == ErrorCode.MALFORMED  # extra
    assert code_of(b"\xd6\xff\x00\x00\x00\x01") == ErrorCode.MALFORMED  # ext type (timestamp)


def test_deep_nesting_and_huge_containers_are_refused() -> None:
    deep = b"\x81\xa1t" + b"\x91" * 100_000 + b"\xc0"
    assert code_of(deep) == ErrorCode.MALFORMED
    huge_map = pack({str(i): i for i in range(MAX_MAP_LEN + 1)} | {"t": 3})
    assert code_of(huge_map) == ErrorCode.MALFORMED
    huge_list = pack({"t": 30, "us": ["a"] * (MAX_LIST_LEN + 1)})
    assert code_of(huge_list) == ErrorCode.MALFORMED
    # a declared array length far beyond the data must not allocate it
    assert code_of(b"\x82\xa1t\x1e\xa2us\xdd\xff\xff\xff\xff") == ErrorCode.MALFORMED


def test_unknown_keys_are_ignored_for_forward_compatibility() -> None:
    body = pack({"t": 10, "id": "m1", "to": "bob", "from": "mallory", "x-new": [1, 2]})
    assert decode_body(body) == F.Send(id="m1", to="bob")


def test_defaults_are_omitted_on_the_wire() -> None:
    assert msgpack.unpackb(encode_body(F.Ping())) == {"t": 3}
    assert msgpack.unpackb(encode_body(F.Send(id="a", to="b"))) == {"t": 10, "id": "a", "to": "b"}


def test_optional_field_may_be_nil() -> None:
    assert decode_body(pack({"t": 10, "id": "m", "to": "bob", "g": None})) == F.Send(id="m",
                                                                                     to="bob")
