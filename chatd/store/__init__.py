"""Pluggable storage. `open_store(url)` gives a running Store for `memory://`,
`sqlite:///path/to/file.db` or `cassandra://host[:port][,host...]/keyspace[?options]`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Final

import trio

from chatd import need
from chatd.core import GroupInfo, NewMessage, ReceiptState
from chatd.core.convs import direct as direct_conv

from .base import Appended, FanoutJobs, Item, Page, Store, StoreError, StoreStats
from .cassandra import CassandraStore
from .cql import BadCassandraURL, CassandraURL
from .fanout import FanoutRunner
from .sqlite import SqliteStore

__all__ = ["Appended", "BadStoreURL", "CassandraStore", "FanoutJobs", "GroupInfo", "Item",
           "NewMessage", "Page", "ReceiptState", "SqliteStore", "Store", "StoreError",
           "StoreStats", "check_store_url", "direct_conv", "open_store"]


class BadStoreURL(ValueError):
    pass


USE: Final = "use memory://, sqlite:///path or cassandra://host[:port][,host...]/keyspace"


def check_store_url(url: str) -> None:
    """Raise BadStoreURL unless open_store knows what to do with url."""
    if url.startswith("cassandra:"):
        try:
            CassandraURL.parse(url)
        except BadCassandraURL as exc:
            raise BadStoreURL(str(exc)) from None
        need("cassandra")
    elif url != "memory://" and not (url.startswith("sqlite://") and url != "sqlite://"):
        raise BadStoreURL(f"unknown store {url!r}: {USE}")


def private_file(path: str) -> None:
    """Make the file (created empty if missing) and what SQLite keeps beside it readable by
    the node's user only (0600), whatever the umask and however it was created before."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for p in (path, path + "-wal", path + "-shm", path + "-journal"):
        if os.path.exists(p):
            os.chmod(p, 0o600)


@contextlib.asynccontextmanager
async def open_store(url: str, name: str | None = None) -> AsyncIterator[Store]:
    """The store at url, running. `name`: the node's name in a shared store, the same
    across its restarts (chatd.server.identity; default: a random one)."""
    check_store_url(url)
    sq: Store
    if url.startswith("cassandra:"):
        cassandra = CassandraStore(url, name)
        await cassandra.connect()
        sq = cassandra
    elif url == "memory://":  # the SQLite store on an in-memory database: nothing on disk
        sq = SqliteStore(":memory:", synchronous="OFF")
    elif url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")  # sqlite:///abs/file.db or sqlite://rel/file.db
        if not path:
            raise BadStoreURL(f"{url!r}: expected sqlite:///path/to/file.db")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        private_file(path)  # SQLite gives its -wal and -shm files the database's mode
        sq = SqliteStore(path)
    else:
        raise BadStoreURL(f"unknown store {url!r}: {USE}")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sq.run)
            if isinstance(sq, FanoutJobs):
                await nursery.start(FanoutRunner(sq).run)
            yield sq
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await sq.aclose()

