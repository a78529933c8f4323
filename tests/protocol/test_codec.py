"""Codec properties: round trips, any bytes give a frame or a ProtocolError, limits hold."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatd.protocol import FRAME_TYPES, ErrorCode, ProtocolError, decode_body, encode_body
from chatd.protocol import frames as F
from chatd.protocol.limits import MAX_LIST_LEN, MAX_MAP_LEN
from chatd.protocol.schema import Bin, Bool, Int, ListOf, Scalars, Str, Struct, to_map

from .strategies import any_frame, examples, for_class


@given(any_frame)
@settings(max_examples=examples(600))
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
@settings(max_examples=examples(2000))
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
@settings(max_examples=examples(1500))
def test_wrong_field_types_give_malformed(type_: int, fields: dict[str, object]) -> None:
    body = msgpack.packb({"t": type_, **fields}, use_bin_type=True)
    try:
        frame = decode_body(body)
    except ProtocolError as exc:
        assert exc.code == ErrorCode.MALFORMED  # (the body is far below the frame limit)
        return
    # accepted: then every field it has is of its kind's wire type (a bool is not an int)
    for spec in type(frame).SPEC:
        if spec.key in fields and fields[spec.key] is not None:
            assert type(fields[spec.key]) is WIRE_TYPES[type(spec.kind)], (spec, fields)


@given(st.sampled_from([t for t, cls in sorted(FRAME_TYPES.items()) if cls.SPEC]), st.data())
@settings(max_examples=examples(1000))
def test_a_field_of_the_wrong_type_in_a_valid_frame_is_malformed(type_: int,
                                                                 data: st.DataObject) -> None:
    cls = FRAME_TYPES[type_]
    body = {"t": type_, **to_map(data.draw(for_class(cls)))}
    spec = data.draw(st.sampled_from(cls.SPEC))
    value = body[spec.key] = data.draw(msgpack_values)
    try:
        frame = decode_body(pack(body))
    except ProtocolError as exc:
        assert exc.code == ErrorCode.MALFORMED
        assert spec.key in exc.message or value is None
        return
    if value is None:
        assert not spec.required and getattr(frame, spec.attr) == spec.default
    else:
        assert type(value) is WIRE_TYPES[type(spec.kind)]


WIRE_TYPES = {Int: int, Str: str, Bin: bytes, Bool: bool, ListOf: list, Struct: dict,
              Scalars: dict}
INT_FIELDS = [(t, spec.key) for t, cls in sorted(FRAME_TYPES.items()) for spec in cls.SPEC
              if isinstance(spec.kind, Int)
              or (isinstance(spec.kind, ListOf) and isinstance(spec.kind.item, Int))]


@pytest.mark.parametrize(("type_", "key"), INT_FIELDS)
@pytest.mark.parametrize("flag", [True, False])
@given(data=st.data())
@settings(max_examples=examples(5))
def test_a_bool_is_never_an_int(type_: int, key: str, flag: bool, data: st.DataObject) -> None:
    """msgpack true/false where any int is expected (or in an array of ints) is MALFORMED."""
    cls = FRAME_TYPES[type_]
    valid = {"t": type_, **to_map(data.draw(for_class(cls)))}
    is_list = isinstance(next(s for s in cls.SPEC if s.key == key).kind, ListOf)
    valid[key] = [flag] if is_list else flag
    with pytest.raises(ProtocolError) as info:
        decode_body(pack(valid))
    assert info.value.code == ErrorCode.MALFORMED
    assert key in info.value.message


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


def test_an_empty_ext_value_is_malformed_too() -> None:
    """max_ext_len=0 alone lets a zero-length ext (c7 00 01) through, under any key."""
    body = bytes([0x82, 0xA1, 0x74, 0x03, 0xA1, 0x78, 0xC7, 0x00, 0x01])  # {"t": 3, "x": ext}
    with pytest.raises(ProtocolError) as err:
        decode_body(body)
    assert err.value.code == ErrorCode.MALFORMED
