"""Pluggable storage. `open_store(url)` gives a running Store for `memory://` or
`sqlite:///path/to/file.db`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import trio

from .base import (
    Appended,
    GroupInfo,
    Item,
    NewMessage,
    Page,
    ReceiptState,
    Store,
    StoreError,
    conv_members,
    direct_conv,
)
from .sqlite import SqliteStore

__all__ = ["Appended", "BadStoreURL", "GroupInfo", "Item", "NewMessage", "Page", "ReceiptState",
           "SqliteStore", "Store", "StoreError", "check_store_url",
           "conv_members", "direct_conv", "open_store"]


class BadStoreURL(ValueError):
    pass


def check_store_url(url: str) -> None:
    """Raise BadStoreURL unless open_store knows what to do with url."""
    if url != "memory://" and not (url.startswith("sqlite://") and url != "sqlite://"):
        raise BadStoreURL(f"unknown store {url!r}: use memory:// or sqlite:///path")


@contextlib.asynccontextmanager
async def open_store(url: str) -> AsyncIterator[Store]:
    if url == "memory://":  # the SQLite store on an in-memory database: nothing on disk
        sq = SqliteStore(":memory:", synchronous="OFF")
    elif url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")  # sqlite:///abs/file.db or sqlite://rel/file.db
        if not path:
            raise BadStoreURL(f"{url!r}: expected sqlite:///path/to/file.db")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        sq = SqliteStore(path)
    else:
        raise BadStoreURL(f"unknown store {url!r}: use memory:// or sqlite:///path")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sq.run)
            yield sq
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await sq.aclose()

