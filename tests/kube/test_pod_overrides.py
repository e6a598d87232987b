"""Per-silo pod overrides on the real control plane: the real apiserver admits the training
(strict field validation, the CRD's CEL rules), the real Job controller makes the pods, the real
Priority and RuntimeClass admission plugins resolve the classes named; what would borrow
rights is refused by the apiserver with the field named. The pure rules:
tests/security/test_workloads.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.kube.deployed import NAMESPACE
from tests.kube.test_lifecycle import delete_training, one_round, round_status
from tests.kube.waiting import apply, finished_training, items

pytestmark = [pytest.mark.kube]
PRIORITY, RUNTIME = "fedma-test-high", "fedma-test-runtime"


def _overrides() -> dict:
    return {
        "priorityClassName": PRIORITY, "runtimeClassName": RUNTIME,
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                               "labelSelector": {"matchLabels": {
                                                   "fedma.io/role": "silo"}}}}]}},
        "annotations": {"example.com/team": "vision"},
        "env": [{"name": "NCCL_DEBUG", "value": "WARN"}],
        "volumes": [{"name": "scratch", "mountPath": "/scratch", "readOnly": False,
                     "emptyDir": {"sizeLimit": "1Gi"}},
                    {"name": "notes", "mountPath": "/etc/notes",
                     "configMap": {"name": "silo-notes"}}],
    }


def test_a_silos_pod_overrides_reach_its_pods_through_the_real_admission(
        hub, operator, tmp_path: Path, tiny_models):
    apply(hub, {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                "metadata": {"name": PRIORITY}, "value": 100000})
    apply(hub, {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
                "metadata": {"name": RUNTIME}, "handler": "runc"})
    apply(hub, {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "silo-notes", "namespace": NAMESPACE},
                "data": {"README": "scratch space for silo-1"}})
    manifest = one_round(tmp_path, tiny_models, "overrides")
    manifest["spec"]["silos"][0]["pod"] = _overrides()
    apply(hub, manifest, "--validate=strict")
    t = finished_training(hub, "overrides", operator, 300)
    st = round_status(hub, "overrides")
    assert t["status"]["phase"] == "Succeeded", st
    job = st["silos"]["silo-1"]["job"]
    pods = items(hub, f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=job-name%3D{job}")
    assert pods, job
    pod = pods[0]
    spec = pod["spec"]
    # Resolved by the apiserver's own admission plugins, not copied by fedma.
    assert spec["priority"] == 100000 and spec["priorityClassName"] == PRIORITY, spec
    assert spec["runtimeClassName"] == RUNTIME
    assert spec["affinity"] == _overrides()["affinity"]
    assert pod["metadata"]["annotations"]["example.com/team"] == "vision"
    trainer = spec["containers"][0]
    assert {"name": "NCCL_DEBUG", "value": "WARN"} in trainer["env"]
    assert {m["name"] for m in trainer["volumeMounts"]} >= {"scratch", "notes"}
    other = st["silos"]["silo-2"]["job"]
    plain = items(hub, f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=job-name%3D{other}")
    assert plain and "priorityClassName" not in plain[0]["spec"]  # overrides are per silo
    delete_training(hub, "overrides")


@pytest.mark.parametrize("pod, says", [
    ({"volumes": [{"name": "h", "mountPath": "/h", "hostPath": {"path": "/"}}]},
     'unknown field "spec.silos[0].pod.volumes[0].hostPath"'),
    ({"env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "x", "key": "k"}}}]},
     'unknown field "spec.silos[0].pod.env[0].valueFrom"'),
    ({"env": [{"name": "LD_PRELOAD", "value": "/data/x.so"}]},
     "spec.silos[0].pod.env[0].name: Invalid value"),
    ({"volumes": [{"name": "v", "mountPath": "/v", "emptyDir": {},
                   "configMap": {"name": "c"}}]},
     "give exactly one of emptyDir, configMap, persistentVolumeClaim"),
])
def test_overrides_that_would_borrow_rights_are_refused_at_admission(hub, tmp_path: Path,
                                                                    tiny_models, pod, says):
    manifest = one_round(tmp_path, tiny_models, "refused")
    manifest["spec"]["silos"][0]["pod"] = pod
    out = hub.kubectl("apply", "--validate=strict", "--dry-run=server", "-f", "-",
                      input=json.dumps(manifest), check=False)
    assert out.returncode != 0 and says in out.stderr, out.stderr
