"""One conformance suite, every backend: each test here gets each store in turn."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chatd.store import Store, open_store

BACKENDS = ["memory", "sqlite"]


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: object) -> AsyncIterator[Store]:
    url = "memory://" if request.param == "memory" else f"sqlite://{tmp_path}/chatd.db"
    async with open_store(url) as s:
        yield s
