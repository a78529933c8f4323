"""Issue 17, fourth batch: chatd (and the relay, for the ratio) on the focused shapes, one
JSON line per shape with the load average. Run from a tree's root with
PYTHONPATH=<tree>:<tree>/clients, alternating trees:
python bench/results/shapes-17d.py TAG ["SHAPE|SHAPE..."]"""
import json
import sys

from bench import versus as v

SHAPES = [(v.Shape("50x1000xW16", 50, 16, count=1000), ("relay", "chatd")),
          (v.Shape("200x250xW4", 200, 4, count=250), ("chatd",)),
          (v.Shape("10x1000xW1", 10, 1, count=1000), ("relay", "chatd")),
          (v.Shape("paced 1,000/s", 50, 16, rate=1000, seconds=5), ("chatd",))]
tag = sys.argv[1] if len(sys.argv) > 1 else ""
only = sys.argv[2].split("|") if len(sys.argv) > 2 else None  # shape names, "|" between
peak = None
for shape, systems in SHAPES:
    if only and shape.name not in only:
        continue
    r = v.run_shape(shape, systems, 0, "sqlite://TMP/chatd.db", True)
    if shape.name == "50x1000xW16":
        peak = r["chatd"]["msgs_per_s"]
    with open("/proc/loadavg") as f:
        r["loadavg_after"] = " ".join(f.read().split()[:3])
    print(json.dumps({"tag": tag, **r}), flush=True)
if peak:
    half = v.Shape(f"paced {peak / 2:,.0f}/s (half)", 50, 16, rate=peak / 2, seconds=5)
    r = v.run_shape(half, ("chatd",), 0, "sqlite://TMP/chatd.db", True)
    with open("/proc/loadavg") as f:
        r["loadavg_after"] = " ".join(f.read().split()[:3])
    print(json.dumps({"tag": tag, **r}), flush=True)
