"""Hypothesis strategies for every frame, derived from the frames' own field specs."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st

from chatd.protocol import FRAME_TYPES
from chatd.protocol.schema import Bin, Bool, Int, Kind, ListOf, Scalars, Str, Struct


def examples(n: int) -> int:
    """n examples, or the profile's smaller number under the quick "mutation" profile
    (scripts/mutation runs the protocol tests once per mutant)."""
    if os.environ.get("HYPOTHESIS_PROFILE") == "mutation":
        return min(n, settings.default.max_examples)
    return n


def for_kind(kind: Kind) -> st.SearchStrategy[Any]:
    if isinstance(kind, Str):
        if kind.pattern is not None:
            return st.from_regex(kind.pattern, fullmatch=True).filter(
                lambda s: kind.min_len <= len(s) <= kind.max_len)
        return st.text(min_size=kind.min_len, max_size=min(kind.max_len, 40))
    if isinstance(kind, Int):
        return st.integers(kind.lo, kind.hi)
    if isinstance(kind, Bool):
        return st.booleans()
    if isinstance(kind, Bin):
        return st.binary(max_size=min(kind.max_len, 64))
    if isinstance(kind, ListOf):
        return st.lists(for_kind(kind.item), max_size=4).map(tuple)
    if isinstance(kind, Struct):
        return for_class(kind.cls)
    if isinstance(kind, Scalars):
        value = st.one_of(st.text(max_size=10), st.integers(0, 2**40), st.booleans(),
                          st.lists(st.text(max_size=5), max_size=3))
        return st.dictionaries(st.text(max_size=8), value, max_size=4)
    raise AssertionError(kind)


def for_class(cls: Any) -> st.SearchStrategy[Any]:
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for spec in cls.SPEC:
        s = for_kind(spec.kind)
        if not spec.required:
            s = st.one_of(st.just(spec.default), s)
        fields[spec.attr] = s
    return st.fixed_dictionaries(fields).map(lambda kw: cls(**kw))


any_frame = st.sampled_from(sorted(FRAME_TYPES)).flatmap(lambda t: for_class(FRAME_TYPES[t]))
