"""Write the Grafana dashboards of the chart (``charts/fedma/dashboards/*.json``).

Dashboards are generated, not hand-edited: ids, grid positions and the datasource variable are
laid out here once, so every panel is consistent, and tests/deploy/test_dashboards.py checks the
committed JSON is what this script writes. Run: ``python charts/dashboards.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "fedma" / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'training=~"$training"'
SILO = 'training=~"$training", silo=~"$silo"'
ALL = {"text": "All", "value": "$__all"}


def _variables(silo: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
         "hide": 0},
        {"name": "training", "label": "Training", "type": "query", "datasource": DS,
         "query": {"query": "label_values(fedma_training_current_round, training)",
                   "refId": "training"},
         "multi": True, "includeAll": True, "allValue": ".*", "refresh": 2, "sort": 1,
         "current": ALL, "hide": 0},
    ]
    if silo:
        q = 'label_values(fedma_silo_jobs_total{training=~"$training"}, silo)'
        out.append({"name": "silo", "label": "Silo", "type": "query", "datasource": DS,
                    "query": {"query": q, "refId": "silo"}, "multi": True,
                    "includeAll": True, "allValue": ".*", "refresh": 2, "sort": 1,
                    "current": ALL, "hide": 0})
    return out


class Layout:
    """Panels left to right in rows of 24 grid units; ids in order of appearance."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.x = self.y = self.row_h = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"id": len(self.panels) + 1, "type": "row", "title": title,
                            "collapsed": False, "panels": [],
                            "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1}})
        self.y += 1

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_h
        self.x = self.row_h = 0

    def panel(self, kind: str, title: str, description: str, targets: list[tuple[str, str]],
              w: int = 8, h: int = 8, unit: str = "short", **options: Any) -> None:
        if self.x + w > 24:
            self._newline()
        self.panels.append({
            "id": len(self.panels) + 1, "type": kind, "title": title,
            "description": description, "datasource": DS,
            "gridPos": {"x": self.x, "y": self.y, "w": w, "h": h},
            "targets": [{"refId": chr(ord("A") + i), "datasource": DS, "expr": expr,
                         "legendFormat": legend, "range": True}
                        for i, (expr, legend) in enumerate(targets)],
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": options,
        })
        self.x += w
        self.row_h = max(self.row_h, h)


def quantiles(histogram: str, by: str, sel: str) -> list[tuple[str, str]]:
    """p50 and p95 of a histogram over the panel's rate window, one series per ``by``."""
    return [(f"histogram_quantile({q}, sum by (le, {by}) (rate("
             f"{histogram}_bucket{{{sel}}}[$__rate_interval])))", f"p{int(q * 100)} {{{{{by}}}}}")
            for q in (0.5, 0.95)]


def _dashboard(uid: str, title: str, description: str, layout: Layout, silo: bool
               ) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "description": description,
        "tags": ["fedma"], "timezone": "browser", "editable": True, "graphTooltip": 1,
        "schemaVersion": 39, "version": 1, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": _variables(silo)},
        "annotations": {"list": []}, "links": [],
        "panels": layout.panels,
    }


def overview() -> dict[str, Any]:
    d = Layout()
    d.row("Rounds")
    d.panel("stat", "Current round", "Round each training is in.",
            [(f"fedma_training_current_round{{{SEL}}}", "{{training}}")], w=6)
    d.panel("stat", "Rounds finished", "Rounds that ended in the time range, by outcome.",
            [(f"sum by (training, outcome) (increase(fedma_rounds_total{{{SEL}}}[$__range]))",
              "{{training}} {{outcome}}")], w=6)
    d.panel("timeseries", "Round duration", "p50 and p95 wall time of finished rounds.",
            quantiles("fedma_round_duration_seconds", "training", SEL), w=12, unit="s")
    d.panel("bargauge", "Mean time per phase", "Average time rounds spent in each phase "
            "(Pending, Training, Aggregating) over the time range.",
            [(f"sum by (training, phase) (increase(fedma_round_phase_duration_seconds_sum"
              f"{{{SEL}}}[$__range])) / sum by (training, phase) (increase("
              f"fedma_round_phase_duration_seconds_count{{{SEL}}}[$__range]))",
              "{{training}} {{phase}}")], w=12, unit="s")
    d.panel("timeseries", "Time left before a round must finish",
            "Active rounds: seconds until their silo plus aggregation deadline (below 0: "
            "stalled, see the FedmaRoundStalled alert).",
            [(f"fedma_round_deadline_timestamp_seconds{{{SEL}}} - time()", "{{round}}")],
            w=12, unit="s")
    d.row("Participation")
    d.panel("gauge", "Participation", "Share of silo updates accepted into aggregation.",
            [(f"sum by (training) (fedma_silo_updates_total{{{SEL}, outcome=\"accepted\"}}) / "
              f"sum by (training) (fedma_silo_updates_total{{{SEL}}})", "{{training}}")],
            w=6, unit="percentunit")
    d.panel("timeseries", "Accepted and excluded updates", "Silo updates per outcome.",
            [(f"sum by (training, outcome) (increase(fedma_silo_updates_total{{{SEL}}}"
              f"[$__rate_interval]))", "{{training}} {{outcome}}")], w=9)
    d.panel("timeseries", "Silo Jobs", "Training Jobs created, succeeded, failed (retried) "
            "and silos excluded.",
            [(f"sum by (training, outcome) (increase(fedma_silo_jobs_total{{{SEL}}}"
              f"[$__rate_interval]))", "{{training}} {{outcome}}")], w=9)
    d.row("Learning")
    d.panel("timeseries", "Loss per round", "Sample-weighted training loss of the latest "
            "round.", [(f"fedma_round_loss{{{SEL}}}", "{{training}}")], w=12)
    d.panel("timeseries", "Silo throughput", "Samples per second of each silo's last "
            "accepted update.",
            [(f"fedma_silo_samples_per_second{{{SEL}}}", "{{training}} {{silo}}")], w=12)
    d.panel("timeseries", "Aggregation time", "p95 from the aggregation Job's launch to its "
            "success.",
            [(f"histogram_quantile(0.95, sum by (le, training) (rate("
              f"fedma_aggregation_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
              "{{training}}")], w=12, unit="s")
    d.row("Operator")
    d.panel("stat", "Operator up", "Whether Prometheus reaches the operator's /metrics.",
            [('up{job="fedma-operator"}', "{{instance}}")], w=6)
    d.panel("timeseries", "Kubernetes API requests", "Requests per second by verb.",
            [("sum by (verb, resource) (rate(fedma_kubernetes_api_requests_total"
              "[$__rate_interval]))", "{{verb}} {{resource}}"),
             ("sum by (verb, resource) (rate(fedma_kubernetes_api_errors_total"
              "[$__rate_interval]))", "errors {{verb}} {{resource}}")], w=9, unit="reqps")
    d.panel("timeseries", "Reconcile time", "p95 of one reconcile, by kind.",
            [("histogram_quantile(0.95, sum by (le, kind) (rate("
              "fedma_reconcile_duration_seconds_bucket[$__rate_interval])))", "{{kind}}")],
            w=9, unit="s")
    return _dashboard("fedma-overview", "fedma / Federation overview",
                      "Rounds, participation, loss and the operator of fedma trainings.", d,
                      silo=False)


def silo_view() -> dict[str, Any]:
    d = Layout()
    d.row("Live (trainer pods)")
    d.panel("timeseries", "Samples per second", "Live training throughput of each silo Job.",
            [(f"sum by (training, silo) (rate(fedma_trainer_samples_total{{{SILO}}}"
              f"[$__rate_interval]))", "{{silo}}")], w=8)
    d.panel("timeseries", "Step loss", "Loss of the latest optimiser step.",
            [(f"fedma_trainer_loss{{{SILO}}}", "{{silo}}")], w=8)
    d.panel("timeseries", "Step time", "p50 and p95 wall time of one optimiser step.",
            quantiles("fedma_trainer_step_duration_seconds", "silo", SILO), w=8, unit="s")
    d.panel("state-timeline", "Phase", "What each silo Job is doing (loading the models, "
            "training, uploading its update, done).",
            [(f"max by (silo, phase) (fedma_trainer_phase{{{SILO}}}) == 1", "{{silo}} {{phase}}")],
            w=16)
    d.panel("stat", "Round", "Round the silo's Job trains.",
            [(f"max by (silo) (fedma_trainer_round{{{SILO}}})", "{{silo}}")], w=8)
    d.row("Per round (operator)")
    d.panel("timeseries", "Training time", "Wall time of each silo's last accepted update.",
            [(f"fedma_silo_samples{{{SILO}}} / fedma_silo_samples_per_second{{{SILO}}}",
              "{{silo}}")], w=8, unit="s")
    d.panel("timeseries", "Samples per second (per round)", "Samples of the silo's last "
            "accepted update over its Job's wall time.",
            [(f"fedma_silo_samples_per_second{{{SILO}}}", "{{silo}}")], w=8)
    d.panel("timeseries", "Loss", "Mean training loss of the silo's last accepted update.",
            [(f"fedma_silo_loss{{{SILO}}}", "{{silo}}")], w=8)
    d.panel("bargauge", "Failures", "Failed attempts (retried) and exclusions in the time "
            "range.",
            [(f"sum by (silo, outcome) (increase(fedma_silo_jobs_total{{{SILO}, "
              f"outcome=~\"failed|excluded\"}}[$__range]))", "{{silo}} {{outcome}}")], w=12)
    d.panel("bargauge", "Jobs created", "Training Jobs created for each silo in the time "
            "range (attempts).",
            [(f"sum by (silo) (increase(fedma_silo_jobs_total{{{SILO}, outcome=\"created\"}}"
              f"[$__range]))", "{{silo}}")], w=12)
    return _dashboard("fedma-silo", "fedma / Silo",
                      "One silo's training Jobs: live throughput, loss and failures.", d,
                      silo=True)


def render() -> dict[str, str]:
    return {f"{name}.json": json.dumps(build(), indent=2, sort_keys=True) + "\n"
            for name, build in (("fedma-overview", overview), ("fedma-silo", silo_view))}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
