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


# scripts/test runs the tests in two processes (pytest-xdist, `--dist loadgroup`). A session
# fixture starts its program once in each process that uses it, so the tests of each program
# below run in one process (their group's): the run starts one Cassandra node, one SeaweedFS
# and one Chromium, and builds the web app once. The other tests go to whichever process is
# free. (A test put in no group would still pass: its process would start its own.)
def xdist_group(item: pytest.Item) -> str | None:
    names = getattr(item, "fixturenames", ())
    if "cassandra" in item.nodeid.lower() or any("cassandra" in n for n in names):
        return "cassandra"  # (also the tests that ask for the node by name when they run)
    if item.nodeid.startswith("tests/media/") or "seaweedfs" in names:
        return "seaweedfs"
    if item.nodeid.startswith("tests/web/") or "browser" in names:
        return "web"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if (group := xdist_group(item)) is not None:
            item.add_marker(pytest.mark.xdist_group(group))


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
