"""deploy/prometheus/alerts.yml (promtool: checked, and unit-tested on synthetic series) and
deploy/grafana/chatd.json refer only to metrics a running node exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .conftest import DEPLOY, Node

RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "chatd.json"
NOT_CHATD = {"up"}  # recorded by Prometheus itself for each scrape target


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: apt-get install prometheus (scripts/test does it)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)


def alert_rules() -> list[dict[str, str]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dash["templating"]["list"] if "definition" in v]
    return exprs


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bchatd_[a-z0-9_]+", expr)) | {
        n for n in NOT_CHATD if re.search(rf"\b{n}\{{", expr)}


def test_promtool_checks_the_rules() -> None:
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in out.stdout


def test_alerts_fire_on_trouble_and_stay_quiet_otherwise() -> None:
    out = promtool("test", "rules", str(RULE_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    # every alert has a case where it fires
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing = {t["alertname"] for group in tests for t in group["alert_rule_test"]
              if t["exp_alerts"]}
    assert firing == {r["alert"] for r in alert_rules()}


def test_dashboard_is_grafana_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and dash["uid"] and dash["title"]
    for panel in dash["panels"]:
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}


def test_rules_and_dashboard_use_only_metrics_a_node_exports(tmp_path: Path,
                                                             nodes: list[Node]) -> None:
    # two workers (what most nodes run: only the multi-process metrics exist there), with the
    # HTTP listener (image metrics)
    node = Node([sys.executable, "-m", "chatd"], tmp_path / "data", "--workers", "2",
                "--http-port", "0")
    nodes.append(node)
    status, text = node.http("/metrics")
    assert status == 200
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    used: dict[str, set[str]] = {}
    for source, exprs in (("alerts.yml", [r["expr"] for r in alert_rules()]),
                          ("chatd.json", dashboard_exprs())):
        for expr in exprs:
            for name in metric_names(expr):
                used.setdefault(name, set()).add(source)
    missing = {n: sorted(s) for n, s in used.items() if n not in exported | NOT_CHATD}
    assert not missing, f"metrics no node exports: {missing}"
    assert len(used) > 20  # (the regex found them)
