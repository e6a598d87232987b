"""Alert rules (promtool), the Prometheus Operator resources, and the Grafana dashboards'
structure and PromQL. The live check of every query is test_prometheus_live.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import CHART, MONITORING, ROOT, by_kind, deep_merge, render

RULES = CHART / "rules" / "fedma-alerts.yaml"
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
# What Grafana substitutes before a query reaches Prometheus (values as in a 1 s-scrape test).
GRAFANA_VARS = {"$__rate_interval": "15s", "$__range": "10m", "$training": ".*",
                "$silo": ".*", "${datasource}": "prometheus"}
ALERTS = {"FedmaRoundFailed", "FedmaSiloExcludedRepeatedly", "FedmaRoundStalled",
          "FedmaOperatorDown", "FedmaTrainerThroughputCollapsed"}


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool missing: apt-get install prometheus (.ci/run does)"
    return found


def test_promtool_checks_the_rules():
    out = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    names = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert names == ALERTS


def test_promtool_unit_tests_every_alert():
    tests = RULES.with_name("fedma-alerts.test.yaml")
    out = subprocess.run([promtool(), "test", "rules", tests.name], capture_output=True,
                         text=True, check=False, cwd=tests.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    tested = {t["alertname"] for case in yaml.safe_load(tests.read_text())["tests"]
              for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert tested == ALERTS, f"alerts without a firing test: {ALERTS - tested}"


def test_prometheus_rule_carries_the_rules_file(chart):
    docs = render(chart, deep_merge(MONITORING, {"role": "hub"}))
    (rule,) = by_kind(docs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def test_monitors_select_the_operator_and_name_the_jobs_the_rules_use(chart):
    docs = render(chart, deep_merge(MONITORING, {"role": "hub",
                                                 "monitoring": {"serviceMonitor": {
                                                     "labels": {"release": "kps"}}}}))
    (sm,) = by_kind(docs, "ServiceMonitor")
    (svc,) = by_kind(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["metadata"]["labels"]["release"] == "kps"
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    (pm,) = by_kind(docs, "PodMonitor")
    jobs = {r["replacement"] for m in (endpoint, pm["spec"]["podMetricsEndpoints"][0])
            for r in m["relabelings"] if r["targetLabel"] == "job"}
    assert jobs == {"fedma-operator", "fedma-trainer"}
    rules = RULES.read_text()
    assert 'job="fedma-operator"' in rules
    (dep,) = by_kind(docs, "Deployment")
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"][
        "labels"].items()


def test_dashboards_are_generated_from_charts_dashboards_py():
    import importlib.util

    spec = importlib.util.spec_from_file_location("dashboards", ROOT / "charts" /
                                                  "dashboards.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    rendered = mod.render()
    assert sorted(rendered) == [p.name for p in DASHBOARDS]
    for path in DASHBOARDS:
        assert path.read_text() == rendered[path.name], (
            f"{path} is stale: run `make chart-assets`")


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def expressions() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, PromQL with Grafana's variables substituted)."""
    out = []
    for path in DASHBOARDS:
        d = json.loads(path.read_text())
        for p in panels(d):
            for t in p["targets"]:
                expr = t["expr"]
                for k, v in GRAFANA_VARS.items():
                    expr = expr.replace(k, v)
                out.append((d["uid"], p["title"], expr))
    return out


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.stem for p in DASHBOARDS])
def test_dashboard_structure(path):
    d = json.loads(path.read_text())
    assert d["uid"] and d["title"].startswith("fedma / ") and d["schemaVersion"] >= 36
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "training" in variables
    if d["uid"] == "fedma-silo":
        assert "silo" in variables
    occupied: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                 for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & occupied, f"{p['title']} overlaps another panel"
        occupied |= cells
    for p in panels(d):
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and p["description"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            used = set(re.findall(r"\$\{?(\w+)", t["expr"])) - {"__rate_interval", "__range"}
            assert used <= set(variables), f"{p['title']}: unknown variables {used}"


def test_dashboards_cover_what_users_watch():
    titles = {(uid, title) for uid, title, _ in expressions()}
    overview = {t for u, t in titles if u == "fedma-overview"}
    silo = {t for u, t in titles if u == "fedma-silo"}
    assert {"Current round", "Mean time per phase", "Participation",
            "Accepted and excluded updates", "Loss per round", "Silo throughput"} <= overview
    assert {"Training time", "Samples per second", "Loss", "Failures"} <= silo


def test_every_panel_query_is_valid_promql(tmp_path):
    """promtool parses each query (as a recording rule) exactly as Prometheus would."""
    rules = {"groups": [{"name": "panels", "rules": [
        {"record": f"panel:{i}", "expr": expr} for i, (_, _, expr) in enumerate(expressions())]}]}
    path = tmp_path / "panels.yaml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dashboard_configmaps_carry_the_json_for_the_sidecar(chart):
    docs = render(chart, {"role": "hub"})
    maps = by_kind(docs, "ConfigMap")
    assert len(maps) == len(DASHBOARDS)
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((name, text),) = cm["data"].items()
        assert json.loads(text) == json.loads(Path(CHART / "dashboards" / name).read_text())


GRAFANA = ROOT / "tests" / "deploy" / "grafana"


def _tsc(dashboards: dict[str, dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    """Each dashboard as a typed object literal (so literal types and excess properties are
    checked, which importing the .json would widen away), compiled by tsc."""
    tsc = GRAFANA / "node_modules" / ".bin" / "tsc"
    assert tsc.exists(), f"run `npm ci --prefix {GRAFANA}` (make install does)"
    work = Path(tempfile.mkdtemp(prefix=".check-", dir=GRAFANA))
    try:
        for name, d in dashboards.items():
            (work / f"{name}.ts").write_text(
                "import type { Dashboard } from '@grafana/schema';\n"
                f"export const dashboard: Dashboard = {json.dumps(d, indent=1)};\n")
        (work / "tsconfig.json").write_text(json.dumps({
            "compilerOptions": {"strict": True, "noEmit": True, "module": "nodenext",
                                "moduleResolution": "nodenext", "target": "es2022",
                                "skipLibCheck": True},
            "include": ["*.ts"]}))
        return subprocess.run([str(tsc), "-p", str(work)], capture_output=True, text=True,
                              check=False, cwd=work)
    finally:
        shutil.rmtree(work)


def test_dashboards_type_check_against_grafana_schema():
    out = _tsc({p.stem: json.loads(p.read_text()) for p in DASHBOARDS})
    assert out.returncode == 0, out.stdout + out.stderr
    # The check can fail: a property Grafana's schema does not know is reported.
    bad = json.loads(DASHBOARDS[0].read_text())
    bad["templating"]["list"][1]["definition"] = "label_values(up, job)"
    out = _tsc({"bad": bad})
    assert out.returncode != 0 and "definition" in out.stdout, out.stdout
