"""`chatd analytics`: read the analytics stream from Redis and print the report."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Final

from chatd.core import now_ms

from .report import build, parse

PAGE: Final = 10_000  # entries read per XRANGE


def _duration(text: str) -> float:
    from chatd.cli import duration  # (chatd.cli imports this module)

    return duration(text)


def add_analytics(sub: Any) -> None:
    p = sub.add_parser("analytics", help="report on the analytics event stream (active users,"
                       " messages a minute, delivery and read delays, busiest groups)")
    p.add_argument("--config", help="the node's TOML file: its analytics and"
                   " analytics_stream settings say where the stream is")
    p.add_argument("--redis", help="redis://host:port of the stream (default: the config's"
                   " analytics setting)")
    p.add_argument("--stream", help="the stream's key (default chatd:analytics)")
    p.add_argument("--since", default="24h", type=_duration,
                   help="how far back: 90m, 24h, 7d (default 24h)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--content", action="store_true", help="also the trending words of the"
                   " last hour (needs nodes with analytics_content = true; impossible with"
                   " end-to-end encrypted bodies)")


async def read_stream(url: str, stream: str, start: int, end: int) -> list[dict[str, Any]]:
    """The events of the stream between start and end (ms), oldest first."""
    from chatd.router.redis import connect_redis

    out: list[dict[str, Any]] = []
    lower = f"{start}-0"
    async with connect_redis(url) as redis:
        while True:
            entries = await redis.xrange(stream, lower, f"{end}-18446744073709551615",
                                         count=PAGE)
            out += [parse(e.field_values) for e in entries]
            if len(entries) < PAGE:
                return out
            last = entries[-1].identifier
            last = last.decode() if isinstance(last, bytes) else last
            lower = "(" + last


async def run_analytics(args: argparse.Namespace) -> int:
    from chatd import need
    from chatd.router.redis import REDIS_ERRORS
    from chatd.server import ConfigError, load_config
    from chatd.util import single_errors

    cfg = load_config(args.config, {}, dict(os.environ))
    url = args.redis or cfg.analytics
    if not url:
        raise ConfigError("no stream to read: give --redis redis://host:port (or --config"
                          " with the node's analytics setting)")
    need("redis")
    end = now_ms()
    start = end - int(args.since * 1000)
    try:
        with single_errors():  # (the client's task group wraps them)
            events = await read_stream(url, args.stream or cfg.analytics_stream, start, end)
    except REDIS_ERRORS as exc:
        print(f"chatd: analytics stream at {url}: {exc}", file=sys.stderr)
        return 1
    report = build(events, start, end, content=args.content)
    print(json.dumps(report.as_json()) if args.json else report.text())
    return 0
