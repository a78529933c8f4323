"""The analytics report: figures from a list of events (sans-IO; `command` reads the stream).

- active users: distinct users with any event, per UTC day and per UTC hour
- messages per minute: sends in each of the last minutes, and their mean over the period
- delivery delay: median (and p90) of `deliver` events' delays, in ms (arrival at the server to
  the frame queued to a device; a device that was offline counts its time away)
- read delay: median (and p90) of (read time - send time) for each `read` whose watermark is a
  message whose `send` event is in the period (a read marks older messages too: only the
  newest one is measured, as the app reports reads by watermark)
- busiest groups: sends per group chat
- trending words (only with --content, from nodes with analytics_content): the most frequent
  words of the last hour's text messages
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import statistics
from collections.abc import Iterable, Mapping
from typing import Any, Final

TOP: Final = 10
RECENT_MINUTES: Final = 10
STOPWORDS: Final = frozenset((
    "the", "and", "for", "you", "are", "but", "not", "with", "this", "that", "have", "was",
    "what", "all", "can", "your", "our", "out", "get", "has", "him", "his", "her", "she",
    "they", "them", "its", "just", "from", "will", "would", "there", "their", "then", "than",
    "when", "who", "how", "why", "yes", "now", "too", "very"))


def _hour(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:00")


def _day(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d")


def _minute(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M")


def _pct(values: list[int], p: float) -> int | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


def parse(fields: Mapping[Any, Any]) -> dict[str, Any]:
    """A stream entry's fields (bytes or str) as an event: numbers as int."""
    out: dict[str, Any] = {}
    for k, v in fields.items():
        k = k.decode() if isinstance(k, bytes) else str(k)
        v = v.decode() if isinstance(v, bytes) else v
        out[k] = int(v) if k in ("t", "s", "n", "g", "m", "l", "x") and str(v).lstrip(
            "-").isdigit() else v
    return out


@dataclasses.dataclass
class Report:
    start: int  # ms: the period looked at
    end: int
    events: int = 0
    daily_active: dict[str, int] = dataclasses.field(default_factory=dict)
    hourly_active: dict[str, int] = dataclasses.field(default_factory=dict)
    messages: int = 0
    messages_per_minute: float = 0.0
    recent_minutes: dict[str, int] = dataclasses.field(default_factory=dict)
    delivery_ms: dict[str, int | None] = dataclasses.field(default_factory=dict)
    read_ms: dict[str, int | None] = dataclasses.field(default_factory=dict)
    busiest_groups: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    kinds: dict[str, int] = dataclasses.field(default_factory=dict)
    trending_words: list[tuple[str, int]] | None = None

    def as_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["busiest_groups"] = [{"group": g, "messages": n} for g, n in self.busiest_groups]
        if self.trending_words is not None:
            out["trending_words"] = [{"word": w, "count": n} for w, n in self.trending_words]
        return out

    def text(self) -> str:
        lines = [f"chatd analytics {_minute(self.start)} .. {_minute(self.end)} UTC:"
                 f" {self.events} events"]
        lines.append("daily active users:  " + (", ".join(
            f"{d} {n}" for d, n in self.daily_active.items()) or "-"))
        lines.append("hourly active users: " + (", ".join(
            f"{h[11:]} {n}" for h, n in list(self.hourly_active.items())[-6:]) or "-"))
        lines.append(f"messages: {self.messages}, {self.messages_per_minute:.1f} a minute;"
                     " last minutes: " + (", ".join(
                         f"{m[11:]} {n}" for m, n in self.recent_minutes.items()) or "-"))
        lines.append(f"delivery delay (ms): median {self.delivery_ms.get('median', '-')},"
                     f" p90 {self.delivery_ms.get('p90', '-')}"
                     f" ({self.delivery_ms.get('count', 0)} deliveries)")
        lines.append(f"read delay (ms): median {self.read_ms.get('median', '-')},"
                     f" p90 {self.read_ms.get('p90', '-')} ({self.read_ms.get('count', 0)} reads)")
        lines.append("busiest groups: " + (", ".join(
            f"{g} {n}" for g, n in self.busiest_groups) or "-"))
        lines.append("events: " + ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items())))
        if self.trending_words is not None:
            lines.append("trending words (last hour): " + (", ".join(
                f"{w} {n}" for w, n in self.trending_words) or "-"))
        return "\n".join(lines)


def build(events: Iterable[Mapping[str, Any]], start: int, end: int,
          content: bool = False) -> Report:
    r = Report(start, end)
    days: dict[str, set[str]] = collections.defaultdict(set)
    hours: dict[str, set[str]] = collections.defaultdict(set)
    minutes: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    groups: collections.Counter[str] = collections.Counter()
    words: collections.Counter[str] = collections.Counter()
    sent_at: dict[tuple[str, int], int] = {}
    reads: list[tuple[str, int, int]] = []
    delivery: list[int] = []
    for ev in events:
        t, kind = ev.get("t"), ev.get("k")
        if not isinstance(t, int) or not start <= t <= end or not isinstance(kind, str):
            continue
        r.events += 1
        kinds[kind] += 1
        if user := ev.get("u"):
            days[_day(t)].add(user)
            hours[_hour(t)].add(user)
        if kind == "send":
            r.messages += 1
            minutes[_minute(t)] += 1
            sent_at[(ev.get("c", ""), ev.get("s", 0))] = t
            if ev.get("g"):
                groups[ev.get("c", "")] += 1
            if content and t >= end - 3_600_000 and ev.get("w"):
                words.update(w for w in str(ev["w"]).split() if w not in STOPWORDS)
        elif kind == "deliver" and isinstance(ev.get("l"), int):
            delivery.append(ev["l"])
        elif kind == "read":
            reads.append((ev.get("c", ""), ev.get("s", 0), t))
    read_delays = [t - sent_at[(c, s)] for c, s, t in reads if (c, s) in sent_at]
    r.daily_active = {d: len(u) for d, u in sorted(days.items())}
    r.hourly_active = {h: len(u) for h, u in sorted(hours.items())}
    span = max(1.0, (end - start) / 60_000)
    r.messages_per_minute = r.messages / span
    last = sorted(minutes)[-RECENT_MINUTES:]
    r.recent_minutes = {m: minutes[m] for m in last}
    for out, values in ((r.delivery_ms, delivery), (r.read_ms, read_delays)):
        out.update(count=len(values), median=(int(statistics.median(values)) if values
                                              else None), p90=_pct(values, 0.9))
    r.busiest_groups = groups.most_common(TOP)
    r.kinds = dict(kinds)
    if content:
        r.trending_words = words.most_common(TOP)
    return r
