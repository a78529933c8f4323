"""Group fan-out, run in one place.

A store with fan-out jobs (`FanoutJobs`) commits a group message together with its job (that
is SENT) and then only does steps when asked. Who asks:

- `FanoutRunner` (this module), started by `open_store` beside every such store: while the
  store's `fanout_mode` is "auto", it runs the jobs this store committed, and those it found
  unfinished when it opened (after a stop or a crash), one step after another, each step a
  write of its own after the sends already queued (fan-out never delays a SENT); a step
  that fails is tried again a second later.
- With several nodes and Cassandra's `numbering=owner`, the same: a group's messages are
  numbered by its owner, so its owner committed their jobs and runs them; the store also
  takes up the unfinished jobs of groups it owns now (an owner that died or left), every
  few seconds (`CassandraStore._sweep_fanouts`).
- With several nodes otherwise, the Redis router sets `fanout_mode = "external"` and takes
  `on_fanout`: each committed job goes into a Redis stream, and whichever node reads it runs
  it with `store.fanout(conv, seq)` (chatd.router.redis). The runner then does nothing.

Either way the store's mechanics keep every member's copy exactly once and in seq order per
conversation, whoever runs a job and however often it is started again.
"""

from __future__ import annotations

import logging
from typing import Final

import trio

from .base import FanoutJobs, StoreError

log = logging.getLogger("chatd.store")
RETRY_AFTER: Final = 1.0  # seconds before a failed step is tried again


class FanoutRunner:
    def __init__(self, store: FanoutJobs) -> None:
        self.store = store
        self._wake = trio.Event()
        store.on_fanout = self.committed

    def committed(self, conv: str, seq: int) -> None:
        """The store committed (or found unfinished) the job of (conv, seq)."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        store = self.store
        while True:
            more = False
            if store.fanout_mode == "auto":
                try:
                    more = await store.fanout_some()
                except StoreError as exc:
                    log.warning("fan-out step failed, retrying: %s", exc)
                    await trio.sleep(RETRY_AFTER)
                    continue
            if not more:
                await self._wake.wait()
                self._wake = trio.Event()
