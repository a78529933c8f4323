from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import settings

from bench.cassandra import CassandraNode

settings.register_profile("ci", max_examples=100, deadline=None)
settings.register_profile("dev", deadline=None)
# scripts/mutation: the same examples every run (a mutant is killed or not, not by luck), and
# fewer of them (see tests/protocol/strategies.py: examples)
settings.register_profile("mutation", max_examples=25, deadline=None, derandomize=True,
                          database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def cassandra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CassandraNode]:
    """One real Cassandra node for the whole run, with the chatd schema in `chatd_test`."""
    from chatd.store.cql import migrate

    node = CassandraNode(Path(tmp_path_factory.mktemp("cassandra")))
    try:
        node.start()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # (maybe inside a trio run)
            pool.submit(trio.run, migrate, node.url()).result()
        yield node
    finally:
        node.stop()
