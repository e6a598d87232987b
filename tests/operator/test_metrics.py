"""The operator's /metrics after a round, and its entrypoint's arguments."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from fedma_operator.main import parse_args
from fedma_operator.metrics import serve
from tests.operator.conftest import Api, JobController, rounds_path, wait_for
from tests.operator.test_lifecycle import (
    _n_jobs,
    agg_summary,
    phase_is,
    round_body,
    silo_summary,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _value(text: str, prefix: str) -> float:
    lines = [ln for ln in text.splitlines() if ln.startswith(prefix)]
    assert lines, f"no series {prefix!r} in /metrics"
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)


@pytest.mark.operator
@pytest.mark.asyncio
async def test_metrics_endpoint_reports_rounds_silos_and_api_calls(k8s, operator):
    port = _free_port()
    serve(port, "127.0.0.1")
    api, ctl = Api(k8s), JobController(Api(k8s))
    body = round_body(name="metrics-r0001")
    body["spec"]["trainingName"] = "metrics"
    await api.create(rounds_path(), body)
    jobs = await wait_for(lambda: _n_jobs(ctl, 3, role="silo"))
    for j in jobs:
        await ctl.finish(j, True, silo_summary(j["metadata"]["labels"]["fedma.io/silo"]))
    agg = await wait_for(lambda: _n_jobs(ctl, 1, role="aggregate"))
    await ctl.finish(agg[0], True, agg_summary())
    await wait_for(lambda: phase_is(api, "Succeeded", "metrics-r0001"))
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    t = 'training="metrics"'
    assert _value(text, f'fedma_rounds_total{{outcome="Succeeded",{t}}}') == 1
    assert _value(text, f'fedma_silo_jobs_total{{outcome="created",silo="silo-1",{t}}}') == 1
    assert _value(text, f'fedma_silo_updates_total{{outcome="accepted",{t}}}') == 3
    assert _value(text, f'fedma_silo_samples{{silo="silo-2",{t}}}') == 64
    assert _value(text, f'fedma_silo_samples_per_second{{silo="silo-2",{t}}}') == 32
    assert _value(text, f'fedma_round_duration_seconds_count{{outcome="Succeeded",{t}}}') == 1
    assert _value(text, f'fedma_round_phase_duration_seconds_count{{phase="Training",{t}}}') == 1
    assert _value(text, f'fedma_aggregation_duration_seconds_count{{{t}}}') == 1
    assert _value(text, 'fedma_reconcile_duration_seconds_count{kind="FederatedRound"}') >= 3
    assert _value(text, 'fedma_kubernetes_api_requests_total{resource="jobs",verb="create"}') >= 4
    assert "fedma_kubernetes_api_errors_total" in text


@pytest.mark.operator
@pytest.mark.asyncio
async def test_liveness_probe_answers_while_the_operator_runs(k8s):
    import asyncio

    from tests.operator.conftest import OperatorHandle

    port = _free_port()
    handle = OperatorHandle(k8s, liveness_port=port)
    await handle.start()
    try:
        async def probe():
            try:
                r = await asyncio.to_thread(urllib.request.urlopen,
                                            f"http://127.0.0.1:{port}/healthz", None, 2)
                return r.status == 200
            except OSError:
                return False

        assert await wait_for(probe, what="/healthz")
    finally:
        await handle.stop()


def test_entrypoint_needs_a_namespace_choice(monkeypatch, capsys):
    monkeypatch.delenv("FEDMA_NAMESPACE", raising=False)
    with pytest.raises(SystemExit):
        parse_args([])
    assert "--namespace" in capsys.readouterr().err
    args = parse_args(["--namespace", "a", "--namespace", "b", "--trainer-image", "img:1"])
    assert args.namespace == ["a", "b"] and args.trainer_image == "img:1"
    monkeypatch.setenv("FEDMA_NAMESPACE", "fedma")
    assert parse_args([]).namespace == ["fedma"]
