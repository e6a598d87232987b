"""Deleting a training releases its silos' GPUs everywhere, on real control planes: the Jobs
no ownerReference reaches (a silo's own cluster, another hub namespace) are deleted by the
round's finalizer (operator/fedma_operator/release.py), their pods stopped by the real garbage
collector and kubelet; an unreachable silo cluster costs bounded tries and an Event, never a
stuck deletion."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults.conftest import INJECT
from tests.kube.conftest import HUB_SILO_NAMESPACE, SILO_NAMESPACE
from tests.kube.deployed import NAMESPACE
from tests.kube.test_lifecycle import jobs_of, one_round, proxied_secret
from tests.kube.waiting import apply, fedma_path, get, items, wait_until

pytestmark = [pytest.mark.kube, pytest.mark.faults]


def pods_of(cp, name: str, namespace: str) -> list[dict]:
    return items(cp, f"/api/v1/namespaces/{namespace}/pods?labelSelector=fedma.io/training%3D"
                     f"{name}")


def round_events(hub, name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in items(hub, f"/api/v1/namespaces/{NAMESPACE}/events?fieldSelector="
                        f"involvedObject.name%3D{name}-r0001"):
        out.setdefault(e.get("reason", ""), []).append(e.get("message", ""))
    return out


def delete_training(hub, name: str, timeout_s: int) -> float:
    t0 = time.monotonic()
    hub.kubectl("-n", NAMESPACE, "delete", "federatedtraining", name, "--wait=true",
                f"--timeout={timeout_s}s")
    wait_until(lambda: get(hub, fedma_path(NAMESPACE, "federatedrounds", f"{name}-r0001"))
               is None, timeout_s, "the round to be gone")
    return time.monotonic() - t0


def test_deleting_a_training_deletes_its_running_jobs_in_every_cluster_and_namespace(
        hub, silo, operator, tmp_path: Path, tiny_models):
    manifest = one_round(tmp_path, tiny_models, "gone", silos=3)
    silos = manifest["spec"]["silos"]
    silos[1].update(kubeconfigSecret="silo-a-kubeconfig", namespace=SILO_NAMESPACE)
    silos[2].update(namespace=HUB_SILO_NAMESPACE)
    remote, local = tmp_path / "remote-hung", tmp_path / "local-hung"
    with silo.pod_env(PYTHONPATH=str(INJECT), FEDMA_FAULT=f"hang:silo-2:{remote}"), \
            hub.pod_env(PYTHONPATH=str(INJECT), FEDMA_FAULT=f"hang:silo-3:{local}"):
        apply(hub, manifest)
        wait_until(lambda: remote.exists() and local.exists(), 120, "both silos to start")
    assert list(jobs_of(silo, "gone", SILO_NAMESPACE)) == ["gone-r0001-silo-2-a1"]
    assert list(jobs_of(hub, "gone", HUB_SILO_NAMESPACE)) == ["gone-r0001-silo-3-a1"]
    delete_training(hub, "gone", 90)
    for cp, ns in ((silo, SILO_NAMESPACE), (hub, HUB_SILO_NAMESPACE), (hub, NAMESPACE)):
        wait_until(lambda cp=cp, ns=ns: not jobs_of(cp, "gone", ns) and not pods_of(
            cp, "gone", ns), 60, f"no Job or pod of the training left in {ns} of {cp.name}")
        cms = [c["metadata"]["name"] for c in items(cp, f"/api/v1/namespaces/{ns}/configmaps")
               if c["metadata"]["name"].startswith("gone-")]
        assert not cms, (cp.name, ns, cms)
    events = wait_until(lambda: (lambda e: e if "RoundReleased" in e else None)(
        round_events(hub, "gone")), 30, "the RoundReleased Event")
    assert not events.get("RoundReleaseFailed"), events
    released = " ".join(events.get("RoundReleased", []))
    assert "gone-r0001-silo-2-a1" in released and "secret:silo-a-kubeconfig" in released, events
    assert "gone-r0001-silo-3-a1" in released and HUB_SILO_NAMESPACE in released, events


def test_an_unreachable_silo_cluster_does_not_block_deletion(hub, silo, operator,
                                                             tmp_path: Path, tiny_models):
    """The silo's endpoint stops answering (a proxy that accepts and holds every byte): the
    round is gone after bounded tries (3, each a 3 s API timeout in this install), with a
    Warning Event naming the Job left behind, which stops at its deadline."""
    proxy = proxied_secret(hub, silo, tmp_path, "silo-a-release")
    manifest = one_round(tmp_path, tiny_models, "stuck", silos=2)
    manifest["spec"]["silos"][1].update(kubeconfigSecret="silo-a-release",
                                        namespace=SILO_NAMESPACE)
    marker = tmp_path / "hung"
    try:
        with silo.pod_env(PYTHONPATH=str(INJECT), FEDMA_FAULT=f"hang:silo-2:{marker}"):
            apply(hub, manifest)
            wait_until(marker.exists, 120, "the remote silo to start")
        proxy.hang()
        took = delete_training(hub, "stuck", 120)
        events = wait_until(lambda: (lambda e: e if "RoundReleaseFailed" in e else None)(
            round_events(hub, "stuck")), 30, "the RoundReleaseFailed Event")
        left = jobs_of(silo, "stuck", SILO_NAMESPACE)
    finally:
        proxy.close()
        hub.kubectl("-n", NAMESPACE, "delete", "secret", "silo-a-release")
        for name in jobs_of(silo, "stuck", SILO_NAMESPACE):
            silo.kubectl("-n", SILO_NAMESPACE, "delete", "job", name, "--wait=false")
    # 3 tries of (a list that gets no answer within 3 s) with 2 + 4 s between: ~15 s.
    assert took < 60, took
    failed = " ".join(events.get("RoundReleaseFailed", []))
    assert "silo-2 (Job stuck-r0001-silo-2-a1)" in failed, events
    assert "after 3 tries" in failed and "no answer within" in failed, events
    assert list(left) == ["stuck-r0001-silo-2-a1"]  # left to its deadline, as the Event says
