"""A node's name in a shared store, kept across restarts (chatd.server.identity)."""

from __future__ import annotations

from pathlib import Path

from chatd.server.identity import store_name


def test_a_name_is_held_by_one_process_at_a_time_and_kept_across_restarts(
        tmp_path: Path) -> None:
    with store_name(str(tmp_path), "n1") as first:
        assert first is not None and first.startswith("n1@")
        with store_name(str(tmp_path), "n1") as second:  # (held: a random name instead)
            assert second is None
        with store_name(str(tmp_path), "n1-w1") as worker:  # (another name: its own lock)
            assert worker == first.replace("n1@", "n1-w1@")
    with store_name(str(tmp_path), "n1") as restarted:
        assert restarted == first


def test_two_data_dirs_give_two_names_for_one_node_name(tmp_path: Path) -> None:
    """Two machines may share a host name and a data dir path: the token tells them apart."""
    with store_name(str(tmp_path / "a"), "n1") as a, store_name(str(tmp_path / "b"), "n1") as b:
        assert a is not None and b is not None and a != b
