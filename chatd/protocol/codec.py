"""Frame <-> msgpack body. No framing here: see connection.py for the length prefix."""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import ErrorCode, ProtocolError
from .frames import FRAME_TYPES, Frame
from .limits import MAX_CONTAINERS_FROM_SERVER, MAX_FRAME_SIZE, MAX_LIST_LEN, MAX_MAP_LEN
from .schema import from_map, malformed, to_map

_packer_options: dict[str, Any] = {"use_bin_type": True}


def encode_body(frame: Frame) -> bytes:
    """The msgpack body of a frame: a map with "t" first, then fields in declaration order."""
    return msgpack.packb(to_map(frame, {"t": frame.TYPE}),  # type: ignore[no-any-return]
                         **_packer_options)


class _TooManyContainers(Exception):
    pass


def _counter(limit: int) -> Any:
    """A msgpack hook that counts maps and arrays and stops the decoder past `limit`: a frame
    of a million empty arrays costs a few of them, not a million."""
    left = [limit]

    def hook(obj: Any) -> Any:
        left[0] -= 1
        if left[0] < 0:
            raise _TooManyContainers
        return obj

    return hook


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack ext type {code}: protocol v1 has no ext types")


def decode_body(data: bytes, max_size: int = MAX_FRAME_SIZE,
                max_containers: int = MAX_CONTAINERS_FROM_SERVER) -> Frame:
    """Decode one msgpack body into a frame. Any bad input raises ProtocolError."""
    if len(data) > max_size:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"frame of {len(data)} bytes, limit {max_size}")
    hook = _counter(max_containers)
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=max_size,
            max_bin_len=max_size,
            max_array_len=MAX_LIST_LEN,
            max_map_len=MAX_MAP_LEN,
            max_ext_len=0,
            list_hook=hook,
            object_hook=hook,
            ext_hook=_no_ext,  # (max_ext_len=0 still lets an empty ext value through)
        )
    except _TooManyContainers:
        raise malformed(f"more than {max_containers} maps and arrays in one frame") from None
    except Exception as exc:  # msgpack raises many types: all mean "not a valid body"
        raise malformed(f"not a msgpack value: {type(exc).__name__}") from None
    if type(obj) is not dict:
        raise malformed(f"frame must be a map, got {type(obj).__name__}")
    t = obj.get("t")
    if type(t) is not int:
        raise malformed("frame needs an int type in key 't'")
    cls = FRAME_TYPES.get(t)
    if cls is None:
        raise malformed(f"unknown frame type {t}")
    result: Frame = from_map(cls, obj, cls.__name__)
    return result
