"""The operator under faults: killed in each phase of a round, a silo cluster that stops
answering, and specs built to break it. Kubernetes API: kmock; the test plays the Job
controller (tests/operator/conftest.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import kmock
import pytest

from tests.faults.adversarial import ADVERSARIAL, adversarial_body
from tests.operator.conftest import (
    Api,
    Emulator,
    JobController,
    OperatorHandle,
    create_kubeconfig_secret,
    declare,
    rounds_path,
    wait_for,
)
from tests.operator.test_lifecycle import (
    _finish_all,
    _n_jobs,
    _remote_jobs,
    agg_summary,
    get_round,
    phase_is,
    round_body,
    silo_summary,
)

pytestmark = [pytest.mark.faults, pytest.mark.operator, pytest.mark.asyncio]


def _job_creates(k8s: Any) -> int:
    return sum(1 for r in k8s if getattr(r, "action", None) is not None
               and r.action.value == "CREATE" and r.resource is not None
               and r.resource.plural == "jobs")


@pytest.mark.parametrize("phase", ["pending", "training", "silos-finished", "aggregating",
                                   "aggregation-finished"])
async def test_operator_killed_in_each_phase_resumes_with_no_duplicate_job(k8s, operator, phase):
    api, ctl = Api(k8s), JobController(Api(k8s))
    await api.create(rounds_path(), round_body())
    if phase == "pending":  # killed at once: before, during or after its first reconcile
        await operator.stop()
        await operator.start()
    jobs = await wait_for(lambda: _n_jobs(ctl, 3, role="silo"), what="3 silo Jobs")
    await wait_for(lambda: phase_is(api, "Training"))
    if phase == "training":
        await operator.stop()
        await operator.start()
    if phase == "silos-finished":
        await operator.stop()
    for j in jobs:
        await ctl.finish(j, True, silo_summary(j["metadata"]["labels"]["fedma.io/silo"]))
    if phase == "silos-finished":
        await operator.start()
    agg = await wait_for(lambda: _n_jobs(ctl, 1, role="aggregate"), what="aggregation Job")
    if phase == "aggregating":
        await operator.stop()
        await operator.start()
    if phase == "aggregation-finished":
        await operator.stop()
    await ctl.finish(agg[0], True, agg_summary())
    if phase == "aggregation-finished":
        await operator.start()
    obj = await wait_for(lambda: phase_is(api, "Succeeded"), what="Succeeded")
    assert obj["status"]["output"]["digest"] == "cd" * 32
    assert len(await ctl.jobs(role="silo")) == 3 and len(await ctl.jobs(role="aggregate")) == 1
    assert _job_creates(k8s) == 4  # each Job created once: nothing lost, nothing twice


async def test_an_unreachable_silo_cluster_marks_its_silo_and_the_round_goes_on_by_quorum(k8s):
    api, ctl = Api(k8s), JobController(Api(k8s))
    handle = OperatorHandle(k8s, cluster_grace_s=1.0)
    await handle.start()
    try:
        remote = Emulator()
        async with remote, kmock.Server(remote):
            declare(remote)
            await create_kubeconfig_secret(api, "silo-3-kubeconfig",
                                           str(remote.url).rstrip("/"))
            body = round_body(silos=3, minSilos=2, backoffLimit=1)
            body["spec"]["silos"][2].update(kubeconfigSecret="silo-3-kubeconfig",
                                            namespace="silo-ns")
            await api.create(rounds_path(), body)
            rctl = JobController(Api(remote))
            await wait_for(lambda: _remote_jobs(rctl), what="silo-3's Job in its cluster")
        # The silo cluster's API server is gone (its `async with` ended); the hub's silos
        # finish meanwhile.
        await _finish_all(ctl, api)
        agg = await wait_for(lambda: _n_jobs(ctl, 1, role="aggregate"), timeout=30,
                             what="aggregation without silo-3")
        included = [c for c in agg[0]["spec"]["template"]["spec"]["containers"][0]["command"]
                    if c.startswith("silo-")]
        assert [c.split("=")[0] for c in included] == ["silo-1", "silo-2"]
        # The aggregation Job is created before the reconcile writes its status: wait for it.

        async def excluded():
            st = (await get_round(api)).get("status") or {}
            entry = (st.get("silos") or {}).get("silo-3") or {}
            return entry if entry.get("phase") == "Excluded" else None

        entry = await wait_for(excluded, timeout=10, what="silo-3 Excluded in status")
        assert "secret:silo-3-kubeconfig" in entry["reason"], entry
        assert "(attempt 2 of 2)" in entry["reason"], entry
        await ctl.finish(agg[0], True, {**agg_summary(), "included": ["silo-1", "silo-2"]})
        await wait_for(lambda: phase_is(api, "Succeeded"), what="Succeeded")
    finally:
        await handle.stop()


async def test_a_silo_cluster_blip_within_the_grace_costs_nothing(k8s):
    """The silo cluster's API server goes away for a few reconciles and comes back: the silo
    is shown waiting, then carries on with its first attempt; nothing is retried."""
    from tests.operator.conftest import free_port

    api, ctl = Api(k8s), JobController(Api(k8s))
    handle = OperatorHandle(k8s, cluster_grace_s=30.0)
    await handle.start()
    remote = Emulator()
    port = free_port()
    try:
        async with remote:
            declare(remote)
            await create_kubeconfig_secret(api, "silo-2-kubeconfig",
                                           f"http://127.0.0.1:{port}")
            body = round_body(silos=2, backoffLimit=0)
            body["spec"]["silos"][1].update(kubeconfigSecret="silo-2-kubeconfig",
                                            namespace="silo-ns")
            async with kmock.Server(remote, port=port):
                await api.create(rounds_path(), body)
                rctl = JobController(Api(remote))
                await wait_for(lambda: _remote_jobs(rctl), what="silo-2's Job in its cluster")

            async def waiting():
                entry = ((await get_round(api)).get("status") or {}).get("silos", {})
                entry = entry.get("silo-2", {})
                return entry if "waiting" in entry.get("reason", "") else None

            entry = await wait_for(waiting, what="silo-2 shown waiting on its cluster")
            assert entry["unreachableSince"] and entry["phase"] == "Running"
            async with kmock.Server(remote, port=port):  # back, with its objects
                job = (await rctl.jobs("silo-ns"))[0]
                await rctl.finish(job, True, silo_summary("silo-2"))
                await _finish_all(ctl, api)
                agg = await wait_for(lambda: _n_jobs(ctl, 1, role="aggregate"))
                await ctl.finish(agg[0], True, {**agg_summary(),
                                                "included": ["silo-1", "silo-2"]})
                st = (await wait_for(lambda: phase_is(api, "Succeeded")))["status"]
        entry = st["silos"]["silo-2"]
        assert entry["phase"] == "Succeeded" and entry["attempts"] == 1
        assert "unreachableSince" not in entry and "waiting" not in entry.get("reason", "")
    finally:
        await handle.stop()


@pytest.mark.parametrize("case", sorted(ADVERSARIAL))
async def test_an_adversarial_spec_is_refused_with_the_field_and_never_loops(k8s, operator,
                                                                            case):
    field = ADVERSARIAL[case][1]
    api, ctl = Api(k8s), JobController(Api(k8s))
    await api.create(rounds_path(), adversarial_body(round_body(), case))
    obj = await wait_for(lambda: phase_is(api, "Failed"), what="Failed")
    assert field in obj["status"]["message"], obj["status"]["message"]
    cond = {c["type"]: c for c in obj["status"]["conditions"]}
    assert cond["InvalidSpec"]["status"] == "True"
    assert await ctl.jobs() == []  # nothing was launched

    def writes() -> int:
        return sum(1 for r in k8s if getattr(r, "action", None) is not None
                   and r.action.value == "UPDATE" and r.resource is not None
                   and r.resource.plural == "federatedrounds")

    # Settled: the status, kopf's finalizer and annotation writes, the finalizer's removal
    # when the round's loop ends. After that, nothing more.
    await asyncio.sleep(1.5)
    before = writes()
    await asyncio.sleep(1.0)  # five reconcile intervals: a crash loop would keep writing
    assert writes() == before <= 6, before
    assert operator.task is not None and not operator.task.done()  # the operator lives on


async def test_rejected_and_bounded_updates_show_their_reasons_in_the_round_status(k8s,
                                                                                  operator):
    """What the aggregation Job reports (tests/faults/test_update_faults.py makes these
    reasons from real artifacts) is what a user reads in the FederatedRound's status."""
    api, ctl = Api(k8s), JobController(Api(k8s))
    await api.create(rounds_path(), round_body(minSilos=1))
    await wait_for(lambda: _n_jobs(ctl, 3, role="silo"))
    await _finish_all(ctl, api)
    agg = await wait_for(lambda: _n_jobs(ctl, 1, role="aggregate"))
    await ctl.finish(agg[0], True, {
        **agg_summary(), "included": ["silo-1", "silo-2"],
        "rejected": {"silo-3": "tensor '0.weight' holds NaN or infinite values"},
        "notes": {"silo-2": "clipped from norm 31.4 to 1"}})
    st = (await wait_for(lambda: phase_is(api, "Succeeded")))["status"]
    assert st["silos"]["silo-3"]["phase"] == "Excluded"
    assert st["silos"]["silo-3"]["reason"] == ("rejected by the aggregator: tensor '0.weight' "
                                               "holds NaN or infinite values")
    assert st["silos"]["silo-2"]["note"] == "clipped from norm 31.4 to 1"
    assert st["silos"]["silo-2"]["phase"] == "Succeeded"
