"""FederatedRound / FederatedTraining lifecycles through a real kopf operator on kmock."""

from __future__ import annotations

import hashlib
import json
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
    # The round by reference: a mounted ConfigMap and the sha256 the container checks, the
    # same for every Job of the round (not the whole spec in each Job's env).
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    (volume,) = [v for v in pod["volumes"] if v["name"] == "round"]
    cm = await api.get(f"/api/v1/namespaces/default/configmaps/{volume['configMap']['name']}")
    assert hashlib.sha256(cm["data"]["round.json"].encode()).hexdigest() == \
        env["FEDMA_ROUND_SHA256"]
    assert json.loads(cm["data"]["round.json"])["metadata"]["name"] == "demo-r0001"
    assert labels["fedma.io/round-uid"] == (await api.get(
        f"{rounds_path()}/demo-r0001"))["metadata"]["uid"]
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
    # The round ended: its file is gone (status keeps the accepted spec).
    assert st["roundFile"]["placed"] == []
    assert await api.items("/api/v1/namespaces/default/configmaps") == []


async def _n_jobs(ctl: JobController, n: int, **labels: str):
    jobs = await ctl.jobs(**labels)
    return jobs if len(jobs) >= n else None


async def _finish_all(ctl: JobController, api: Api, rnd: int = 1, fail: set[str] = frozenset(),
                      attempt: str | None = None, name: str = "demo-r0001") -> None:
    for j in await ctl.jobs(role="silo", **{"round-name": name}):
        lbl = j["metadata"]["labels"]
        if attempt and lbl["fedma.io/attempt"] != attempt:
            continue
        if (j.get("status") or {}).get("conditions"):
            continue
        silo = lbl["fedma.io/silo"]
        if silo in fail:
            await ctl.finish(j, False, {"silo": silo, "status": "Failed",
                                        "reason": "DataError: /data/x.jsonl:3: bad caption"})
        else:
            await ctl.finish(j, True, silo_summary(silo, rnd))


@pytest.mark.faults
async def test_failed_silo_is_retried_then_excluded_and_round_goes_on(k8s, operator):
    api, ctl = Api(k8s), JobController(Api(k8s))
    await api.create(rounds_path(), round_body(minSilos=2, backoffLimit=1))
    await wait_for(lambda: _n_jobs(ctl, 3, role="silo"), what="3 silo Jobs")
    await _finish_all(ctl, api, fail={"silo-3"})
    retry = await wait_for(lambda: _n_jobs(ctl, 1, silo="silo-3", attempt="2"), what="retry")
    assert retry[0]["metadata"]["name"] == "demo-r0001-silo-3-a2"
    await ctl.finish(retry[0], False, {"silo": "silo-3", "status": "Failed",
                                       "reason": "DataError: still bad"})
    agg = await wait_for(lambda: _n_jobs(ctl, 1, role="aggregate"), what="aggregation Job")
    cmd = agg[0]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert [c.split("=")[0] for c in cmd if c.startswith("silo-")] == ["silo-1", "silo-2"]
    st = (await get_round(api))["status"]
    assert st["silos"]["silo-3"]["phase"] == "Excluded"
    assert "still bad" in st["silos"]["silo-3"]["reason"]
    assert st["silos"]["silo-3"]["attempts"] == 2
    await ctl.finish(agg[0], True, agg_summary())
    st = (await wait_for(lambda: phase_is(api, "Succeeded")))["status"]
    assert st["aggregation"]["excluded"] == ["silo-3"]
    assert len(await ctl.jobs(role="silo", silo="silo-3")) == 2  # no third attempt


@pytest.mark.faults
async def test_a_silo_whose_data_is_bad_is_not_retried(k8s, operator):
    """The trainer says ``"retry": false`` for a DataError (the same data fails the same
    way, and every attempt reloads the backbones): excluded after one attempt."""
    api, ctl = Api(k8s), JobController(Api(k8s))
    await api.create(rounds_path(), round_body(minSilos=2, backoffLimit=2))
    await wait_for(lambda: _n_jobs(ctl, 3, role="silo"), what="3 silo Jobs")
    for j in await ctl.jobs(role="silo"):
        silo = j["metadata"]["labels"]["fedma.io/silo"]
        if silo == "silo-3":
            await ctl.finish(j, False, {"silo": silo, "status": "Failed", "retry": False,
                                        "reason": "DataError: /data/x.jsonl:7: image x.jpg "
                                                  "is unreadable"})
        else:
            await ctl.finish(j, True, silo_summary(silo, 1))
    agg = await wait_for(lambda: _n_jobs(ctl, 1, role="aggregate"), what="aggregation Job")
    st = (await get_round(api))["status"]["silos"]["silo-3"]
    assert st["phase"] == "Excluded" and st["attempts"] == 1, st
    assert st["reason"].endswith("is unreadable (not retried: fix the data)"), st
    assert len(await ctl.jobs(role="silo", silo="silo-3")) == 1
    await ctl.finish(agg[0], True, agg_summary())
    await wait_for(lambda: phase_is(api, "Succeeded"))


@pytest.mark.faults
async def test_quorum_impossible_fails_the_round_with_the_reasons(k8s, operator):
    api, ctl = Api(k8s), JobController(Api(k8s))
    await api.create(rounds_path(), round_body(minSilos=3, backoffLimit=0))
    await wait_for(lambda: _n_jobs(ctl, 3, role="silo"), what="3 silo Jobs")
    await _finish_all(ctl, api, fail={"silo-2"})
    obj = await wait_for(lambda: phase_is(api, "Failed"), what="Failed")
    assert "quorum impossible" in obj["status"]["message"]
    assert "silo-2" in obj["status"]["message"] and "bad caption" in obj["status"]["message"]
    cond = {c["type"]: c for c in obj["status"]["conditions"]}["Succeeded"]
    assert cond["status"] == "False"
    assert not await ctl.jobs(role="aggregate")


@pytest.mark.faults
async def test_straggler_is_excluded_at_the_deadline_and_its_late_update_ignored(k8s, operator):
    api, ctl = Api(k8s), JobController(Api(k8s))
    await api.create(rounds_path(), round_body(minSilos=2, deadlineSeconds=2))
    jobs = await wait_for(lambda: _n_jobs(ctl, 3, role="silo"), what="3 silo Jobs")
    for j in jobs:
        if j["metadata"]["labels"]["fedma.io/silo"] != "silo-3":
            await ctl.finish(j, True, silo_summary(j["metadata"]["labels"]["fedma.io/silo"]))
    agg = await wait_for(lambda: _n_jobs(ctl, 1, role="aggregate"), timeout=10,
                         what="aggregation at the deadline")
    st = (await wait_for(lambda: phase_is(api, "Aggregating")))["status"]
    assert st["silos"]["silo-3"]["phase"] == "Excluded"
    assert "deadline" in st["silos"]["silo-3"]["reason"]
    # The straggler's Job was stopped (it holds accelerators) ...
    assert not await ctl.jobs(role="silo", silo="silo-3")
    cmd = agg[0]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "silo-3" not in " ".join(cmd)
    await ctl.finish(agg[0], True, agg_summary())
    st = (await wait_for(lambda: phase_is(api, "Succeeded")))["status"]
    assert st["silos"]["silo-3"]["phase"] == "Excluded"


@pytest.mark.faults
async def test_invalid_spec_fails_with_the_field_path(k8s, operator):
    api = Api(k8s)
    body = round_body()
    body["spec"]["training"] = {"batchSize": 0, "learningRat": 0.1}
    await api.create(rounds_path(), body)
    obj = await wait_for(lambda: phase_is(api, "Failed"), what="Failed")
    conds = {c["type"]: c for c in obj["status"]["conditions"]}
    assert conds["InvalidSpec"]["status"] == "True"
    msg = conds["InvalidSpec"]["message"]
    assert "spec.training.batchSize" in msg and "spec.training.learningRat" in msg
    assert "spec.spec." not in msg, msg  # whole-object paths, not prefixed twice
    assert not await JobController(api).jobs()


@pytest.mark.faults
async def test_spec_change_after_start_is_refused_not_applied(k8s, operator):
    api, ctl = Api(k8s), JobController(Api(k8s))
    await api.create(rounds_path(), round_body())
    await wait_for(lambda: _n_jobs(ctl, 3, role="silo"), what="3 silo Jobs")
    await wait_for(lambda: phase_is(api, "Training"))
    await api.patch(f"{rounds_path()}/demo-r0001", {"spec": {"aggregation": {"minSilos": 1}}})

    async def refused():
        st = (await get_round(api)).get("status") or {}
        return any(c["type"] == "SpecChangeRefused" and c["status"] == "True"
                   for c in st.get("conditions") or [])

    await wait_for(refused, what="SpecChangeRefused")
    await _finish_all(ctl, api, fail={"silo-1"})
    # minSilos stays at 3 (the refused edit would have allowed aggregating 2 updates).
    await wait_for(lambda: _n_jobs(ctl, 1, silo="silo-1", attempt="2"), what="retry")
    assert not await ctl.jobs(role="aggregate")


async def test_training_chains_three_rounds(k8s, operator):
    api, ctl = Api(k8s), JobController(Api(k8s))
    body = round_body()
    spec = {k: v for k, v in body["spec"].items()
            if k not in ("trainingName", "round", "totalRounds")}
    await api.create(trainings_path(), {"apiVersion": "fedma.io/v1alpha1",
                                        "kind": "FederatedTraining",
                                        "metadata": {"name": "demo", "namespace": "default"},
                                        "spec": {**spec, "rounds": 3}})
    for r in (1, 2, 3):
        name = f"demo-r{r:04d}"
        obj = await wait_for(lambda n=name: _round_exists(api, n), what=name)
        assert obj["spec"]["round"] == r
        if r > 1:  # round r starts from round r-1's output
            assert obj["spec"]["input"] == {"uri": f"s3://fedma/runs/demo/round-{r - 1:04d}/"
                                            "global.safetensors", "digest": "cd" * 32}
        await wait_for(lambda n=name: _n_jobs(ctl, 3, role="silo", **{"round-name": n}))
        await _finish_all(ctl, api, rnd=r, name=name)
        agg = await wait_for(lambda n=name: _n_jobs(ctl, 1, role="aggregate",
                                                    **{"round-name": n}))
        await ctl.finish(agg[0], True, agg_summary(r))

    async def done():
        obj = await api.get(f"{trainings_path()}/demo")
        return obj if (obj.get("status") or {}).get("phase") == "Succeeded" else None

    st = (await wait_for(done, what="training Succeeded"))["status"]
    assert st["completedRounds"] == 3 and [h["round"] for h in st["history"]] == [1, 2, 3]
    assert st["latest"]["uri"].endswith("round-0003/global.safetensors")


async def _round_exists(api: Api, name: str):
    try:
        return await api.get(f"{rounds_path()}/{name}")
    except RuntimeError:
        return None


async def test_silo_in_its_own_cluster_through_a_kubeconfig_secret(k8s, operator):
    """Two API servers: the hub, and silo-2's own cluster reached with a kubeconfig Secret."""
    import kmock

    from tests.operator.conftest import Emulator, create_kubeconfig_secret, declare

    async with Emulator() as remote, kmock.Server(remote):
        declare(remote)
        api, ctl = Api(k8s), JobController(Api(k8s))
        rapi = Api(remote)
        rctl = JobController(rapi)
        await create_kubeconfig_secret(api, "silo-2-kubeconfig", str(remote.url).rstrip("/"))
        body = round_body(silos=2)
        body["spec"]["silos"][1].update(kubeconfigSecret="silo-2-kubeconfig",
                                        namespace="silo-ns", gpus=2)
        body["spec"]["training"] = {"engine": "deepspeed"}
        await api.create(rounds_path(), body)
        remote_jobs = await wait_for(lambda: _remote_jobs(rctl), what="Job in the silo cluster")
        job = remote_jobs[0]
        assert job["metadata"]["namespace"] == "silo-ns"
        assert "ownerReferences" not in job["metadata"]  # owners cannot cross clusters
        c = job["spec"]["template"]["spec"]["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert c["command"][:3] == ["torchrun", "--standalone", "--nproc-per-node=2"]
        # The Bearer token came from the Secret, not from the hub's credentials.
        reqs = [r for r in remote if getattr(r, "resource", None) is not None]
        assert any("t0ken" in str((r.headers or {}).get("Authorization", "")) for r in reqs)
        hub_jobs = await ctl.jobs(role="silo")
        assert [j["metadata"]["labels"]["fedma.io/silo"] for j in hub_jobs] == ["silo-1"]
        await ctl.finish(hub_jobs[0], True, silo_summary("silo-1"))
        await rctl.finish(job, True, silo_summary("silo-2"))
        agg = await wait_for(lambda: _n_jobs(ctl, 1, role="aggregate"), what="aggregation")
        await ctl.finish(agg[0], True, agg_summary())
        st = (await wait_for(lambda: phase_is(api, "Succeeded")))["status"]
        assert st["silos"]["silo-2"]["cluster"] == "secret:silo-2-kubeconfig"


async def _remote_jobs(ctl: JobController):
    return await ctl.jobs("silo-ns") or None


@pytest.mark.faults
async def test_missing_kubeconfig_secret_excludes_the_silo_with_the_reason(k8s, operator):
    api, ctl = Api(k8s), JobController(Api(k8s))
    body = round_body(silos=2, minSilos=1, backoffLimit=0)
    body["spec"]["silos"][1]["kubeconfigSecret"] = "nope"
    await api.create(rounds_path(), body)
    jobs = await wait_for(lambda: _n_jobs(ctl, 1, role="silo"), what="silo-1 Job")
    await ctl.finish(jobs[0], True, silo_summary("silo-1"))
    await wait_for(lambda: phase_is(api, "Aggregating"))
    st = (await get_round(api))["status"]
    assert st["silos"]["silo-2"]["phase"] == "Excluded"
    assert "default/nope" in st["silos"]["silo-2"]["reason"]


async def test_a_finished_job_is_acted_on_at_once_not_at_the_next_poll(k8s):
    """The reconcile interval is only the safety net: Job events wake the round's loop."""
    import time

    from tests.operator.conftest import OperatorHandle

    handle = OperatorHandle(k8s, interval=60.0)
    await handle.start()
    try:
        api, ctl = Api(k8s), JobController(Api(k8s))
        await api.create(rounds_path(), round_body(silos=2))
        jobs = await wait_for(lambda: _n_jobs(ctl, 2, role="silo"))
        t0 = time.perf_counter()
        for j in jobs:
            await ctl.finish(j, True, silo_summary(j["metadata"]["labels"]["fedma.io/silo"]))
        agg = await wait_for(lambda: _n_jobs(ctl, 1, role="aggregate"), timeout=10)
        assert time.perf_counter() - t0 < 5, "waited for the 60 s poll"
        await ctl.finish(agg[0], True, agg_summary())
        await wait_for(lambda: phase_is(api, "Succeeded"), timeout=10)
        assert time.perf_counter() - t0 < 10
    finally:
        await handle.stop()
