import sys, json
from bench import versus as v
rate = float(sys.argv[1]) if len(sys.argv) > 1 else 1000
pairs = int(sys.argv[2]) if len(sys.argv) > 2 else 50
window = int(sys.argv[3]) if len(sys.argv) > 3 else v.PACED_WINDOW
if rate > 0:
    shape = v.Shape(f"paced {rate:,.0f}/s", pairs, window, rate=rate, seconds=5)
else:
    shape = v.Shape(f"{pairs}x{window}", pairs, window, count=int(sys.argv[4]))
r = v.run_shape(shape, ("chatd",), 0, "sqlite://TMP/chatd.db", False)
