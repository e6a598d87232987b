"""End to end for real: the operator drives a 2-round federation whose Jobs actually run.

A test "kubelet" executes each Job's container command as a local process (CPU, tiny models,
a file:// store) with the Job's environment, then reports back through the Job's status and
the pod's termination message, as the kubelet would. Only the container runtime and the
scheduler are stand-ins; the operator, the Job entrypoints, training and aggregation are real.
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from fedma.store import Store, global_rel
from tests.conftest import training_manifest
from tests.operator.conftest import Api, Kubelet, trainings_path, wait_for

pytestmark = [pytest.mark.operator, pytest.mark.e2e, pytest.mark.asyncio]


async def test_two_round_federation_runs_through_the_operator(k8s, operator, tmp_path,
                                                              tiny_models):
    manifest = training_manifest(tmp_path, tiny_models, silos=2, rounds=2)
    manifest["metadata"]["namespace"] = "default"
    manifest["spec"].pop("evaluation")
    api = Api(k8s)
    kubelet = Kubelet(api, tmp_path)
    runner = asyncio.create_task(kubelet.run())
    try:
        await api.create(trainings_path(), manifest)

        async def done():
            obj = await api.get(f"{trainings_path()}/tiny")
            phase = (obj.get("status") or {}).get("phase")
            return obj if phase in ("Succeeded", "Failed") else None

        try:
            obj = await wait_for(done, timeout=float(os.environ.get("E2E_TIMEOUT", 240)),
                                 step=0.5, what="training to finish")
        except AssertionError:
            rounds = await api.items("/apis/fedma.io/v1alpha1/namespaces/default/federatedrounds")
            raise AssertionError("training did not finish; rounds: " + json.dumps(
                [r.get("status") for r in rounds])[:3000] + "\nkubelet:\n"
                + "\n".join(kubelet.log)) from None
    finally:
        runner.cancel()
        for t in kubelet.tasks:
            t.cancel()
    st = obj["status"]
    assert st["phase"] == "Succeeded", (st, "\n".join(kubelet.log))
    store = Store(manifest["spec"]["artifacts"]["uri"])
    for h in st["history"]:
        m = store.get_manifest(global_rel("tiny", h["round"]))
        assert h["output"]["digest"] == m["sha256"]
        assert h["included"] == ["silo-1", "silo-2"] == m["included"]
    assert st["latest"]["digest"] == store.get_manifest(global_rel("tiny", 2))["sha256"]
    # Round 2 started from round 1's output: the aggregator checked it against every update.
    r2 = await api.get("/apis/fedma.io/v1alpha1/namespaces/default/federatedrounds/tiny-r0002")
    assert r2["spec"]["input"]["digest"] == st["history"][0]["output"]["digest"]
    silo = r2["status"]["silos"]["silo-1"]
    upd = store.get_manifest(store.rel(silo["update"]["uri"]))
    assert upd["sha256"] == silo["update"]["digest"]
    assert upd["base_digest"] == r2["spec"]["input"]["digest"]
    assert len(kubelet.started) == 6  # 2 rounds × (2 silos + 1 aggregation), none twice
