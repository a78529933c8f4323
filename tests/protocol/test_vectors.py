"""The codec against the language-neutral vectors in docs/vectors/protocol-v1.json."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import msgpack
import pytest

from chatd.protocol import (
    FRAME_TYPES,
    NEED_DATA,
    PEER_CLOSED,
    Connection,
    ErrorCode,
    ProtocolError,
    Role,
    decode_body,
    encode_body,
)
from chatd.protocol import frames as F

VECTORS = json.loads((pathlib.Path(__file__).resolve().parents[2] / "docs" / "vectors"
                      / "protocol-v1.json").read_text())


def from_json(v: Any) -> Any:
    if isinstance(v, dict) and set(v) == {"bin"}:
        return bytes.fromhex(v["bin"])
    if isinstance(v, list):
        return [from_json(x) for x in v]
    if isinstance(v, dict):
        return {k: from_json(x) for k, x in v.items()}
    return v


def test_every_frame_type_has_a_vector() -> None:
    assert {v["type"] for v in VECTORS["frames"]} == set(FRAME_TYPES)


@pytest.mark.parametrize("vec", VECTORS["frames"], ids=lambda v: v["name"])
def test_frame_vector_decodes_and_encodes_exactly(vec: dict[str, Any]) -> None:
    body = bytes.fromhex(vec["msgpack"])
    assert msgpack.unpackb(body) == from_json(vec["map"])
    frame = decode_body(body)
    assert type(frame).__name__ == vec["name"] and frame.TYPE == vec["type"]
    assert encode_body(frame) == body
    assert bytes.fromhex(vec["tcp"]) == len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize("vec", VECTORS["errors"], ids=lambda v: v["name"])
def test_error_vector_fails_with_its_code(vec: dict[str, Any]) -> None:
    server = Connection(Role.SERVER)
    server.receive_data(bytes.fromhex(vec["tcp"]))
    if vec.get("eof"):
        server.receive_data(b"")
    with pytest.raises(ProtocolError) as info:
        while True:
            ev = server.next_event()
            assert ev not in (NEED_DATA, PEER_CLOSED), "stream accepted without an error"
            if isinstance(ev, F.Hello):
                server.send(F.Welcome(version=1, user="u", device="d", session="s",
                                      server_time=0, heartbeat_ms=1, max_frame=1))
    assert info.value.code == ErrorCode(vec["code"])
    assert ErrorCode(vec["code"]).name == vec["code_name"]
