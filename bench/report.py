"""`python -m bench report`: bench/results/SUMMARY.md from whatever results are saved there,
each figure next to its baseline and bar."""

from __future__ import annotations

import json
import pathlib
from typing import Any

from .common import RESULTS


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def summary() -> str:
    lines = ["# chatd benchmark results", ""]
    r = _load("connections")
    if r:
        p = r["probe"]
        lines += [
            f"## Connections ({r['when']})", "",
            f"- {r['opened']:,} of {r['target']:,} opened ({r['failed']:,} failed) by"
            f" {r['loaders']} load processes from {len(r['source_addresses'])} source addresses,"
            f" {r['workers']} chatd workers; {r['held_after_hold']:,} still open after the hold",
            f"- connect rate {r['connects_per_s']:,}/s (ramp {r['ramp_seconds']} s)",
            f"- server memory **{r['kib_per_connection']} KiB per connection** (bar <= 8)",
            f"- server CPU while holding them idle (pings every {r['heartbeat_s']:g} s):"
            f" {r['idle_cpu_cores']:.1%} of one core",
            f"- 1:1 latency meanwhile ({p['pairs']} pairs, {p['messages']} messages):"
            f" p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms", "",
            "![ramp](connections.png)", ""]
    r = _load("throughput")
    if r:
        c, b = r["chatd"], r["relay"]
        lines += [
            f"## Throughput ({r['when']}), {r['pairs']} pairs x {r['window']} in flight,"
            f" {r.get('workers', 1)} worker(s)", "",
            "| | msg/s | p50 ms | p99 ms | p999 ms | p99 at half load |",
            "|---|---|---|---|---|---|",
            f"| bare relay | {b['msgs_per_s']:,} | {b['p50_ms']} | {b['p99_ms']} |"
            f" {b['p999_ms']} | {b.get('half_load_p99_ms', '')} |",
            f"| chatd | {c['msgs_per_s']:,} | {c['p50_ms']} | {c['p99_ms']} | {c['p999_ms']} |"
            f" {c.get('half_load_p99_ms', '')} |", "",
            f"chatd / relay = **{r['ratio_vs_relay']}** (bar >= 0.5); p99 at half load bar"
            " < 50 ms", ""]
    r = _load("throughput_sweep")
    if r:
        lines += [f"## Throughput sweep ({r['when']}), {r['workers']} worker(s)", "",
                  "| pairs | in flight | chatd msg/s | chatd p99 ms | relay msg/s | ratio |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {x['pairs']} | {x['window']} | {x['chatd']['msgs_per_s']:,} |"
                  f" {x['chatd']['p99_ms']} | {x['relay']['msgs_per_s']:,} |"
                  f" {x['ratio_vs_relay']} |" for x in r["runs"]]
        lines += ["", "![sweep](throughput_sweep.png)", ""]
    r = _load("drain")
    if r:
        lines += [f"## Offline drain ({r['when']})", "", "```", json.dumps(
            {k: v for k, v in r.items() if k not in ("benchmark", "when", "machine")},
            indent=1), "```", ""]
    r = _load("memory")
    if r:
        lines += [f"## Memory, one process ({r['when']})", "",
                  f"chatd {r['chatd']['kib_per_connection']} KiB per idle authenticated"
                  f" connection; a bare trio server {r['bare_trio']['kib_per_connection']} KiB",
                  ""]
    return "\n".join(lines)


def main(args: Any = None) -> pathlib.Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "SUMMARY.md"
    path.write_text(summary())
    print(f"saved {path}")
    return path
