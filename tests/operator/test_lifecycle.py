"""FederatedRound / FederatedTraining lifecycles through a real kopf operator on kmock."""

from __future__ import annotations

from typing import Any

import pytest

from tests.operator.conftest import Api, JobController, rounds_path, trainings_path, wait_for

pytestmark = [pytest.mark.operator, pytest.mark.asyncio]
DIGEST = "ab" * 32


def round_body(name: str = "demo-r0001", silos: int = 3, rnd: int = 1, total: int = 1,
               **aggregation: Any) -> dict[str, Any]:
    return {
        "apiVersion": "fedma.io/v1alpha1", "kind": "FederatedRound",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "trainingName": "demo", "round": rnd, "totalRounds": total,
            "model": {"vision": {"path": "/models/vision"},
                      "languageModel": {"path": "/models/lm"}},
            "silos": [{"name": f"silo-{i + 1}", "data": {"path": f"/data/{i + 1}.jsonl"}}
                      for i in range(silos)],
            "aggregation": {"deadlineSeconds": 600, **aggregation},
            "artifacts": {"uri": "s3://fedma/runs"},
        },
    }


def silo_summary(silo: str, rnd: int = 1, loss: float = 1.5) -> dict[str, Any]:
    return {"silo": silo, "round": rnd, "status": "Succeeded", "samples": 64, "steps": 4,
            "loss": loss, "seconds": 2.0,
            "update": {"uri": f"s3://fedma/runs/demo/round-{rnd:04d}/silos/{silo}/update."
                              "safetensors", "digest": DIGEST}}


def agg_summary(rnd: int = 1) -> dict[str, Any]:
    return {"round": rnd, "status": "Succeeded", "loss": 1.25, "samples": 192,
            "output": {"uri": f"s3://fedma/runs/demo/round-{rnd:04d}/global.safetensors",
                       "digest": "cd" * 32},
            "server_state": None, "included": ["silo-1", "silo-2", "silo-3"], "rejected": {}}


async def get_round(api: Api, name: str = "demo-r0001") -> dict[str, Any]:
    return await api.get(f"{rounds_path()}/{name}")


async def phase_is(api: Api, phase: str, name: str = "demo-r0001"):
    obj = await get_round(api, name)
    return obj if (obj.get("status") or {}).get("phase") == phase else None


async def test_three_silo_round_succeeds(k8s, operator):
    api, ctl = Api(k8s), JobController(Api(k8s))
    await api.create(rounds_path(), round_body())
    jobs = await wait_for(lambda: _n_jobs(ctl, 3, role="silo"), what="3 silo Jobs")
    names = sorted(j["metadata"]["name"] for j in jobs)
    assert names == [f"demo-r0001-silo-{i}-a1" for i in (1, 2, 3)]
    job = jobs[0]
    labels = job["metadata"]["labels"]
    assert labels["fedma.io/training"] == "demo" and labels["fedma.io/round"] == "1"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "FederatedRound"
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["image"] == "fedma-trainer:test"
    assert any(e["name"] == "FEDMA_ROUND" for e in pod["containers"][0]["env"])
    obj = await wait_for(lambda: phase_is(api, "Training"), what="Training")
    assert obj["status"]["silosDone"] == "0/3"
    for j in jobs:
        silo = j["metadata"]["labels"]["fedma.io/silo"]
        await ctl.finish(j, True, silo_summary(silo))
    agg = await wait_for(lambda: _n_jobs(ctl, 1, role="aggregate"), what="aggregation Job")
    cmd = agg[0]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[:2] == ["fedma", "aggregate"]
    assert [c for c in cmd if c.startswith("silo-")] == [f"silo-{i}={DIGEST}" for i in (1, 2, 3)]
    await ctl.finish(agg[0], True, agg_summary())
    obj = await wait_for(lambda: phase_is(api, "Succeeded"), what="Succeeded")
    st = obj["status"]
    assert st["output"]["digest"] == "cd" * 32 and st["silosDone"] == "3/3"
    assert st["loss"] == 1.25
    assert {s: e["phase"] for s, e in st["silos"].items()} == {
        f"silo-{i}": "Succeeded" for i in (1, 2, 3)}
    assert st["silos"]["silo-2"]["update"]["digest"] == DIGEST
    cond = {c["type"]: c for c in st["conditions"]}["Succeeded"]
    assert cond["status"] == "True" and cond["observedGeneration"] == 1


async def _n_jobs(ctl: JobController, n: int, **labels: str):
    jobs = await ctl.jobs(**labels)
    return jobs if len(jobs) >= n else None
