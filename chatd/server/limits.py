"""Rate limits per user (sans-IO: the caller passes the time).

One token bucket per key (a user) and kind of request. A bucket that has refilled is the
same as no bucket, so `prune()` drops those: memory is bounded by the users active within
the time a bucket takes to refill, not by everyone who ever connected.

A node with several worker processes gives each worker an equal share of the rate and the
burst (`share`), so a user's requests over all their connections, wherever the kernel put
them, never exceed the configured rate; no worker has to ask another before a send.
"""

from __future__ import annotations

import math
from typing import Any, Final

MAX_BUCKETS: Final = 200_000  # past this, prune() runs at once (a flood of new users)


class RateLimiter:
    """Token buckets: `rate` tokens a second up to `burst`, one bucket per key."""

    __slots__ = ("rate", "burst", "_buckets")

    def __init__(self, rate: float, burst: float, share: int = 1) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a rate limit needs rate > 0 and burst >= 1 (got {rate}, {burst})")
        self.rate = rate / share
        self.burst = max(1.0, burst / share)
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, at]

    def take(self, key: str, now: float, n: int = 1) -> int:
        """Take n tokens: 0 if allowed, else the milliseconds until they would be there
        (nothing is taken then)."""
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self.prune(now)
            b = self._buckets[key] = [self.burst, now]
        else:
            b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
            b[1] = now
        if b[0] >= n:
            b[0] -= n
            return 0
        return max(1, math.ceil((n - b[0]) / self.rate * 1000))

    def prune(self, now: float) -> None:
        """Forget the buckets that are full again."""
        full = [k for k, (tokens, at) in self._buckets.items()
                if tokens + (now - at) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]

    def __len__(self) -> int:
        return len(self._buckets)


class UserLimits:
    """The node's per-user limits, from its settings (see Config)."""

    def __init__(self, cfg: Any, share: int = 1) -> None:
        self.sends = RateLimiter(cfg.send_rate, cfg.send_burst, share)
        self.requests = RateLimiter(cfg.request_rate, cfg.request_burst, share)
        self.group_creates = RateLimiter(cfg.group_create_rate, cfg.group_create_burst, share)

    def prune(self, now: float) -> None:
        for limiter in (self.sends, self.requests, self.group_creates):
            limiter.prune(now)
