#!/bin/bash
# usage: run.sh LABEL [tree]  -> appends summary to /tmp/wt21/runs.jsonl
LABEL=$1; TREE=${2:-/work/wt21}
read PID URL < /tmp/wt21/node.info
cd $TREE
LOAD=$(cut -d' ' -f1 /proc/loadavg)
PYTHONPATH=$TREE:$TREE/clients /work/main/.venv/bin/python -m bench stores --pairs 20 --window 8 --seconds 5 --cassandra "$URL&numbering=owner" --cassandra-pid $PID > /tmp/wt21/last.out 2>&1
/work/main/.venv/bin/python - "$LABEL" "$LOAD" "$TREE" <<'PY'
import json, sys
label, load, tree = sys.argv[1:4]
r = json.load(open(f"{tree}/bench/results/stores.json"))
c, s = r["cassandra"], r["sqlite"]
out = {"label": label, "load": float(load), "when": r["when"],
 "cass": c["msgs_per_s"], "p50": c["p50_ms"], "sqlite": s["msgs_per_s"], "ratio": r["cassandra_vs_sqlite"],
 "req": c["requests_per_msg"], "paxos": c["paxos_per_msg"], "jvm_ms": c["cassandra_cpu_ms_per_msg"],
 "jvm_cpu": c["cassandra_cpu"], "chatd_cpu": c["server_cpu"],
 "chatd_us_msg": round(c["server_cpu"]*1e6/max(c["msgs_per_s"],1)),
 "sqlite_chatd_us_msg": round(s["server_cpu"]*1e6/max(s["msgs_per_s"],1))}
print(json.dumps(out))
open("/tmp/wt21/runs.jsonl","a").write(json.dumps(out)+"\n")
r["label"] = label
open("/tmp/wt21/runs-full.jsonl","a").write(json.dumps(r)+"\n")
PY
