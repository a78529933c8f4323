"""A tiny schema language: each frame field names its wire key and a kind that validates it.

Kinds check decoded (untrusted) msgpack values and convert them to Python values; `wire`
turns Python values back into msgpack-able ones. Everything bad raises ProtocolError(MALFORMED).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar

from .errors import ErrorCode, ProtocolError
from .limits import MAX_LIST_LEN, MAX_MAP_LEN, MAX_TEXT_LEN, MAX_UINT


def malformed(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MALFORMED, message)


class Kind:
    name: ClassVar[str] = "value"

    def check(self, value: Any, where: str) -> Any:
        raise NotImplementedError

    def wire(self, value: Any) -> Any:
        return value


class Str(Kind):
    name = "str"

    def __init__(self, max_len: int = MAX_TEXT_LEN, pattern: str | None = None, min_len: int = 0):
        self.max_len = max_len
        self.min_len = min_len
        self.pattern = re.compile(pattern) if pattern else None

    def check(self, value: Any, where: str) -> str:
        if type(value) is not str:
            raise malformed(f"{where}: expected str, got {type(value).__name__}")
        if not self.min_len <= len(value) <= self.max_len:
            raise malformed(f"{where}: length {len(value)} outside {self.min_len}..{self.max_len}")
        if self.pattern is not None and self.pattern.fullmatch(value) is None:
            raise malformed(f"{where}: {value[:40]!r} does not match {self.pattern.pattern}")
        return value


class Int(Kind):
    name = "int"

    def __init__(self, lo: int = 0, hi: int = MAX_UINT):
        self.lo, self.hi = lo, hi

    def check(self, value: Any, where: str) -> int:
        if type(value) is not int:  # bool is not an int on the wire
            raise malformed(f"{where}: expected int, got {type(value).__name__}")
        if not self.lo <= value <= self.hi:
            raise malformed(f"{where}: {value} outside {self.lo}..{self.hi}")
        return value


class Bool(Kind):
    name = "bool"

    def check(self, value: Any, where: str) -> bool:
        if type(value) is not bool:
            raise malformed(f"{where}: expected bool, got {type(value).__name__}")
        return value


class Bin(Kind):
    """Opaque bytes. Length is checked by the caller's semantic limits (see TOO_LARGE)."""

    name = "bin"

    def __init__(self, max_len: int):
        self.max_len = max_len

    def check(self, value: Any, where: str) -> bytes:
        if type(value) is not bytes:
            raise malformed(f"{where}: expected bin, got {type(value).__name__}")
        if len(value) > self.max_len:
            raise malformed(f"{where}: {len(value)} bytes, at most {self.max_len}")
        return value


class ListOf(Kind):
    name = "array"

    def __init__(self, item: Kind, max_len: int = MAX_LIST_LEN):
        self.item, self.max_len = item, max_len

    def check(self, value: Any, where: str) -> tuple[Any, ...]:
        if type(value) is not list:
            raise malformed(f"{where}: expected array, got {type(value).__name__}")
        if len(value) > self.max_len:
            raise malformed(f"{where}: {len(value)} items, at most {self.max_len}")
        check = self.item.check
        return tuple([check(v, where) for v in value])

    def wire(self, value: Any) -> Any:
        w = self.item.wire
        return [w(v) for v in value]


class Scalars(Kind):
    """A small map of str -> (str | int | bool | array of str): server-made event details."""

    name = "map"

    def check(self, value: Any, where: str) -> dict[str, Any]:
        if type(value) is not dict or len(value) > MAX_MAP_LEN:
            raise malformed(f"{where}: expected a map of at most {MAX_MAP_LEN} entries")
        for k, v in value.items():
            if type(k) is not str:
                raise malformed(f"{where}: keys must be str")
            if type(v) is list:
                ListOf(Str()).check(v, f"{where}.{k}")
            elif type(v) not in (str, int, bool):
                raise malformed(f"{where}.{k}: expected str, int, bool or array of str")
        return dict(value)


class Struct(Kind):
    """A nested map described by a dataclass made with `record`."""

    name = "map"

    def __init__(self, cls: type):
        self.cls = cls

    def check(self, value: Any, where: str) -> Any:
        return from_map(self.cls, value, where)

    def wire(self, value: Any) -> Any:
        return to_map(value)


@dataclasses.dataclass(frozen=True, slots=True)
class Spec:
    attr: str
    key: str
    kind: Kind
    required: bool
    default: Any


_NO_DEFAULT: Any = dataclasses.MISSING


def f(key: str, kind: Kind, *, default: Any = _NO_DEFAULT) -> Any:
    """Declare a field: its wire key, kind and (for optional fields) default."""
    meta = {"key": key, "kind": kind}
    if default is _NO_DEFAULT:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def specs_of(cls: type) -> tuple[Spec, ...]:
    out = []
    for fld in dataclasses.fields(cls):
        required = fld.default is dataclasses.MISSING
        out.append(Spec(fld.name, fld.metadata["key"], fld.metadata["kind"], required,
                        None if required else fld.default))
    return tuple(out)


def from_map(cls: Any, value: Any, where: str) -> Any:
    if type(value) is not dict:
        raise malformed(f"{where}: expected map, got {type(value).__name__}")
    if len(value) > MAX_MAP_LEN:
        raise malformed(f"{where}: {len(value)} entries, at most {MAX_MAP_LEN}")
    kwargs = {}
    for s in cls.SPEC:
        if s.key in value:
            v = value[s.key]
            if v is None and not s.required and s.default is None:
                continue
            kwargs[s.attr] = s.kind.check(v, s.key)
        elif s.required:
            raise malformed(f"{where}: missing field {s.key!r}")
    return cls(**kwargs)


# class -> its fields as (attribute, key, default or _NO_DEFAULT, wire function or None when
# the value goes as it is): what to_map needs, looked up once per class, not once per field
_PLANS: dict[type, tuple[tuple[str, str, Any, Any], ...]] = {}


def _plan(cls: type) -> tuple[tuple[str, str, Any, Any], ...]:
    plan = _PLANS[cls] = tuple(
        (s.attr, s.key, _NO_DEFAULT if s.required else s.default,
         None if type(s.kind).wire is Kind.wire else s.kind.wire)
        for s in cls.SPEC)  # type: ignore[attr-defined]
    return plan


def to_map(obj: Any, out: dict[str, Any] | None = None) -> dict[str, Any]:
    """The wire map of a frame or record (into `out` if given, after what it holds)."""
    if out is None:
        out = {}
    cls = type(obj)
    for attr, key, default, wire in _PLANS.get(cls) or _plan(cls):
        v = getattr(obj, attr)
        if default is not _NO_DEFAULT and v == default:
            continue  # canonical form: defaults are omitted
        out[key] = v if wire is None else wire(v)
    return out
