"""A real Prometheus scrapes a live operator and live trainers during a federation, loads the
chart's alert rules, and answers every dashboard query and every metric an alert reads.

The federation runs for real (the operator against kmock, the test kubelet running each Job's
command as a local process with tiny models; tests/kube runs one on a real control plane).
The scrape jobs are named as the chart's ServiceMonitor and PodMonitor name them (fedma-operator,
fedma-trainer); trainer targets arrive through file-based discovery as the kubelet starts them,
where the Prometheus Operator would find them by the PodMonitor's selector.

Faults are part of the run so alerts fire on real series: silo-3 of training "live" has no
data (its Jobs fail, it is excluded from both rounds), training "doomed" has only such a silo
(its round fails), and at the end the operator's /metrics goes away.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml

from tests.conftest import training_manifest
from tests.deploy.test_monitoring import RULES, expressions
from tests.operator.conftest import Api, Kubelet, free_port, trainings_path, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.operator, pytest.mark.asyncio]


class Prometheus:
    def __init__(self, workdir: Path, operator_port: int):
        self.dir = workdir
        self.port = free_port()
        self.targets = workdir / "trainers.json"
        self.targets.write_text("[]")
        shutil.copy(RULES, workdir / "rules.yaml")
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "900ms"},
            "rule_files": ["rules.yaml"],
            "scrape_configs": [
                {"job_name": "fedma-operator",
                 "static_configs": [{"targets": [f"127.0.0.1:{operator_port}"]}]},
                {"job_name": "fedma-trainer",
                 "file_sd_configs": [{"files": [str(self.targets)], "refresh_interval": "1s"}]},
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        binary = shutil.which("prometheus")
        assert binary, "prometheus missing: apt-get install prometheus (.ci/run does)"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            cwd=workdir, stdout=subprocess.DEVNULL, stderr=open(workdir / "log", "w"))  # noqa: SIM115
        self.started = time.time()

    def add_trainer(self, job: dict[str, Any], port: int) -> None:
        current = json.loads(self.targets.read_text())
        current.append({"targets": [f"127.0.0.1:{port}"],
                        "labels": {"pod": job["metadata"]["name"]}})
        tmp = self.targets.with_suffix(".tmp")
        tmp.write_text(json.dumps(current))
        tmp.replace(self.targets)  # atomic: discovery never reads half a file

    def api(self, path: str, **params: Any) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def range(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query_range", query=expr, start=self.started - 5,
                        end=time.time() + 1, step="1s")["result"]

    async def ready(self, timeout: float = 120) -> None:
        """Wait until the operator has been scraped and the rules evaluated at least once.

        The faults of this run happen within seconds of the trainings' creation; a Prometheus
        still replaying its TSDB or not yet scraping (a loaded CI machine) would see the
        exclusion and failure counters first at 1, and ``increase()`` would count nothing.
        In a cluster Prometheus runs long before any training: this is that precondition.
        """

        async def scraped() -> bool:
            try:
                up = self.api("query", query='up{job="fedma-operator"} == 1')["result"]
                groups = self.api("rules")["groups"]
            except OSError:  # not listening yet
                return False
            return bool(up) and bool(groups) and all(
                g.get("lastEvaluation", "").split("T")[0] not in ("", "0001-01-01")
                for g in groups)

        await wait_for(scraped, timeout=timeout, step=0.5, what="Prometheus scraping")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _finite(series: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(v)) for s in series for _, v in s["values"])


def _selectors(expr: str) -> list[str]:
    """The metric selectors an expression reads (name plus its label matchers)."""
    return [m.group(0) for m in re.finditer(r"\b(fedma_\w+|up)(\{[^}]*\})?", expr)]


async def test_prometheus_answers_every_dashboard_query_and_alert(k8s, operator, tmp_path,
                                                                  tiny_models):
    op_port = free_port()
    op_server, _ = prometheus_client.start_http_server(op_port, addr="127.0.0.1")
    prom = Prometheus(tmp_path, op_port)
    api = Api(k8s)
    kubelet = Kubelet(api, tmp_path, on_metrics=prom.add_trainer)
    runner = asyncio.create_task(kubelet.run())
    try:
        await prom.ready()
        # Enough samples per round that a trainer lives through several 1 s scrapes.
        live = training_manifest(tmp_path / "live", tiny_models, silos=3, rounds=2, n=480,
                                 batchSize=2)
        live["metadata"].update(name="live", namespace="default")
        live["spec"].pop("evaluation")
        live["spec"]["silos"][2]["data"]["path"] = str(tmp_path / "nowhere" / "data.jsonl")
        live["spec"]["aggregation"].update(minSilos=2, backoffLimit=0)
        doomed = training_manifest(tmp_path / "doomed", tiny_models, silos=1, rounds=1, n=4)
        doomed["metadata"].update(name="doomed", namespace="default")
        doomed["spec"].pop("evaluation")
        doomed["spec"]["silos"][0]["data"]["path"] = str(tmp_path / "nowhere" / "data.jsonl")
        doomed["spec"]["aggregation"]["backoffLimit"] = 0
        await api.create(trainings_path(), live)
        await api.create(trainings_path(), doomed)

        async def finished(name: str) -> dict[str, Any] | None:
            obj = await api.get(f"{trainings_path()}/{name}")
            return obj if (obj.get("status") or {}).get("phase") in ("Succeeded",
                                                                     "Failed") else None

        done = await wait_for(lambda: finished("live"), timeout=300, step=0.5,
                              what="training live")
        assert done["status"]["phase"] == "Succeeded", "\n".join(kubelet.log)
        failed = await wait_for(lambda: finished("doomed"), timeout=60, step=0.5,
                                what="training doomed")
        assert failed["status"]["phase"] == "Failed"
        await asyncio.sleep(3)  # the final transitions reach a scrape

        # Every panel of every dashboard returns series, with a value, over the run.
        empty = []
        for uid, title, expr in expressions():
            result = prom.range(expr)
            if not result or not _finite(result):
                empty.append(f"{uid} / {title}: {expr}")
        assert not empty, "panels without data:\n" + "\n".join(empty)
        # Each trainer was scraped while it ran, with the labels the dashboards join on.
        trained = prom.range('max by (training, silo) (fedma_trainer_samples_total)')
        assert {(s["metric"]["training"], s["metric"]["silo"]) for s in trained} >= {
            ("live", "silo-1"), ("live", "silo-2")}

        # Every metric each alert reads exists; every rule evaluates without error.
        rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
        for rule in rules:
            for sel in _selectors(rule["expr"]):
                assert prom.range(sel), f"{rule['alert']}: no series for {sel}"
        health = {r["name"]: (r["health"], r.get("lastError", ""))
                  for g in prom.api("rules")["groups"] for r in g["rules"]}
        assert health == {r["alert"]: ("ok", "") for r in rules}

        # The faults in this run fire their alerts on the real series.
        firing = prom.range('ALERTS{alertstate="firing"}')
        fired = {(s["metric"]["alertname"], s["metric"].get("training"),
                  s["metric"].get("silo")) for s in firing}
        assert ("FedmaSiloExcludedRepeatedly", "live", "silo-3") in fired, fired
        assert ("FedmaRoundFailed", "doomed", None) in fired, fired
        assert not {a for a in fired if a[0] == "FedmaSiloExcludedRepeatedly"
                    and a[2] != "silo-3"}, fired

        # The operator goes away: up drops to 0 and FedmaOperatorDown is pending (for: 5m).
        op_server.shutdown()
        op_server.server_close()

        async def operator_down() -> bool:
            pending = prom.range('ALERTS{alertname="FedmaOperatorDown"}')
            return bool(pending)

        await wait_for(operator_down, timeout=20, step=0.5, what="FedmaOperatorDown pending")
    finally:
        runner.cancel()
        for t in kubelet.tasks:
            t.cancel()
        prom.stop()
