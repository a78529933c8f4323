"""Small helpers shared by the server, the SDK and the CLI."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def single_errors() -> Iterator[None]:
    """Re-raise a lone exception out of trio's ExceptionGroup wrapping (nurseries wrap even
    one error), so callers can catch it by its own type. Groups of several stay groups."""
    try:
        yield
    except BaseExceptionGroup as group:
        inner: BaseException = group
        while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
            inner = inner.exceptions[0]
        if isinstance(inner, BaseExceptionGroup):
            raise
        raise inner from None
