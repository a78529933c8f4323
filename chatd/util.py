"""Small helpers shared by the server, the SDK and the CLI."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any


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


def redact(url: str) -> str:
    """The URL with its password (if any) replaced, for messages and logs."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://[^:/@]*:)[^@/]*@", r"\1***@", url)


def need_token(args: Any) -> str:
    """The CLI's --token (or CHATD_TOKEN), or exit saying how to make one."""
    if not args.token:
        raise SystemExit("chatd: give --token (or CHATD_TOKEN); make one with `chatd token USER`")
    return str(args.token)
