"""The task that moves this process's analytics events to a Redis Stream, in batches.

Every FLUSH_INTERVAL it sends what the buffer holds in pipelines of BATCH `XADD stream MAXLEN ~
maxlen` commands (one round trip per batch). If Redis does not answer (down, slow: TIMEOUT),
the batch is dropped and counted, and the next attempt waits RETRY_AFTER: nothing the chat does
ever waits for Redis; meanwhile the buffer fills to its cap and further events are dropped and
counted too (chatd_analytics_events_dropped_total{reason="redis"|"full"}).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

import trio

from chatd.server import metrics

from . import events

log = logging.getLogger("chatd.analytics")
FLUSH_INTERVAL: Final = 0.5
BATCH: Final = 500
TIMEOUT: Final = 2.0
RETRY_AFTER: Final = 2.0


class Publisher:
    def __init__(self, url: str, stream: str, maxlen: int, buffer: events.EventBuffer,
                 failed: Callable[[str, BaseException], None] | None = None,
                 recovered: Callable[[str], None] | None = None) -> None:
        self.url = url
        self.stream = stream
        self.maxlen = maxlen
        self.buffer = buffer
        self.failed = failed
        self.recovered = recovered
        self._redis: Any = None
        self._full_counted = 0

    def _count_full(self) -> None:
        new = self.buffer.dropped - self._full_counted
        if new:
            metrics.ANALYTICS_DROPPED.labels("full").inc(new)
            self._full_counted = self.buffer.dropped

    async def flush(self) -> bool:
        """Publish what the buffer holds; False if Redis failed (that batch was dropped)."""
        import coredis

        from chatd.router.redis import REDIS_ERRORS

        self._count_full()
        while len(self.buffer):
            batch = self.buffer.take(BATCH)
            try:
                with trio.fail_after(TIMEOUT):
                    async with self._redis.pipeline(transaction=False) as p:
                        for ev in batch:
                            p.xadd(self.stream, ev, trim_strategy=coredis.PureToken.MAXLEN,
                                   threshold=self.maxlen,
                                   trim_operator=coredis.PureToken.APPROXIMATELY)
            except REDIS_ERRORS as exc:
                metrics.ANALYTICS_DROPPED.labels("redis").inc(len(batch))
                if self.failed is not None:
                    self.failed("analytics", exc)
                return False
            metrics.ANALYTICS_PUBLISHED.inc(len(batch))
        if self.recovered is not None:
            self.recovered("analytics")
        return True

    async def run(self) -> None:
        """Publish until cancelled (the client reconnects by itself after a failure)."""
        from chatd.router.redis import connect_redis

        async with connect_redis(self.url) as self._redis:
            try:
                while True:
                    await trio.sleep(FLUSH_INTERVAL)
                    if not await self.flush():
                        await trio.sleep(RETRY_AFTER)
            finally:
                events.stop()
                with trio.move_on_after(1) as scope:  # what is left, if Redis answers
                    scope.shield = True
                    await self.flush()


async def publish(config: Any, failed: Callable[[str, BaseException], None] | None = None,
                  recovered: Callable[[str], None] | None = None) -> None:
    """Turn the hooks on and publish until cancelled (the node's task, with `analytics` set)."""
    publisher = Publisher(config.analytics, config.analytics_stream, config.analytics_maxlen,
                          events.EventBuffer(content=config.analytics_content), failed,
                          recovered)
    try:
        while True:
            events.install(publisher.buffer)
            try:
                await publisher.run()
            except Exception as exc:  # (e.g. a Redis Cluster unreachable as the client starts)
                if failed is not None:
                    failed("analytics", exc)
                events.stop()
                lost = len(publisher.buffer.take(len(publisher.buffer)))
                metrics.ANALYTICS_DROPPED.labels("redis").inc(lost)
                await trio.sleep(RETRY_AFTER)
    finally:
        events.stop()
