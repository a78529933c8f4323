"""Print the frame reference tables of docs/PROTOCOL.md from the frame definitions.

tests/protocol/test_docs.py checks that the document contains exactly this output.
"""

from __future__ import annotations

from chatd.protocol import FRAME_TYPES
from chatd.protocol import frames as F
from chatd.protocol.schema import Bin, Bool, Int, Kind, ListOf, Scalars, Str, Struct

NAMES = {F.USER: "user id", F.GROUP: "group id", F.DEVICE: "device id", F.CONV: "conversation id",
         F.CLIENT_ID: "client id"}


def describe(kind: Kind) -> str:
    if kind in NAMES:
        return NAMES[kind]
    if isinstance(kind, Str):
        if kind.pattern is not None:
            return f"str `{kind.pattern.pattern}`"
        return f"str, {kind.min_len}..{kind.max_len} chars"
    if isinstance(kind, Int):
        hi = "2^63-1" if kind.hi == 2**63 - 1 else "2^32-1" if kind.hi == 2**32 - 1 else kind.hi
        return f"int {kind.lo}..{hi}"
    if isinstance(kind, Bool):
        return "bool"
    if isinstance(kind, Bin):
        return f"bin, at most {kind.max_len} bytes"
    if isinstance(kind, ListOf):
        return f"array (at most {kind.max_len}) of {describe(kind.item)}"
    if isinstance(kind, Struct):
        return f"map {kind.cls.__name__}"
    if isinstance(kind, Scalars):
        return "map str -> str/int/bool/array of str"
    raise AssertionError(kind)


def wire_default(value: object) -> str:
    if value is None:
        return "nil (absent)"
    if isinstance(value, bool):
        return str(value).lower()
    if value in ("", b"", ()):
        return {str: '""', bytes: "empty bin", tuple: "[]"}[type(value)]
    return f'"{value}"' if isinstance(value, str) else str(value)


def table(cls: type) -> str:
    rows = ["| key | field | type | required / default |", "|---|---|---|---|"]
    for s in cls.SPEC:  # type: ignore[attr-defined]
        need = "required" if s.required else f"default `{wire_default(s.default)}`"
        rows.append(f"| `{s.key}` | {s.attr} | {describe(s.kind)} | {need} |")
    if len(rows) == 2:
        rows.append("| | (no fields) | | |")
    return "\n".join(rows)


def main() -> str:
    out = []
    for t in sorted(FRAME_TYPES):
        cls = FRAME_TYPES[t]
        origin = {F.Origin.CLIENT: "client -> server", F.Origin.SERVER: "server -> client",
                  F.Origin.BOTH: "either way"}[cls.ORIGIN]
        doc = (cls.__doc__ or "").strip().splitlines()
        line = f" {doc[0]}" if doc and not doc[0].startswith(cls.__name__ + "(") else ""
        out.append(f"#### {t} {cls.__name__} ({origin})\n{line.strip()}\n\n{table(cls)}\n")
    for rec in (F.Media, F.HistoryItem):
        out.append(f"#### map {rec.__name__}\n\n{table(rec)}\n")
    return "\n".join(out).replace("\n\n\n", "\n\n")


if __name__ == "__main__":
    print(main())
