"""One conformance suite, every backend: each test here gets each store in turn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatd.store import Store, open_store

BACKENDS = ["memory", "sqlite", "cassandra"]


@pytest.fixture(params=["sqlite", "cassandra"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store several stores (processes, nodes) can open at once: an SQLite file, or the
    test Cassandra node (emptied first)."""
    if request.param == "cassandra":
        node = request.getfixturevalue("cassandra")
        node.truncate()
        return str(node.url())
    return f"sqlite://{tmp_path}/db.sqlite"


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: object) -> AsyncIterator[Store]:
    if request.param == "cassandra":
        node = request.getfixturevalue("cassandra")  # started once, emptied for each test
        node.truncate()
        url = node.url()
    else:
        url = "memory://" if request.param == "memory" else f"sqlite://{tmp_path}/chatd.db"
    async with open_store(url) as s:
        yield s
