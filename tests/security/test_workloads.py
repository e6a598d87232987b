"""What the operator runs: least-privilege pods, secrets only from Secrets."""

from __future__ import annotations

import re
from typing import Any

import pytest

from fedma.spec import SpecError, parse
from fedma_operator.crds import build_crds
from fedma_operator.jobs import JobSettings, aggregation_job, silo_job
from tests.operator.test_lifecycle import round_body


def _round(**artifacts: Any):
    body = round_body()
    body["spec"]["artifacts"].update(artifacts)
    body["spec"]["silos"][1].update(gpus=2, dataVolume={"claimName": "silo-data"})
    body["spec"]["training"] = {"engine": "deepspeed"}
    return parse(body)


def _jobs(rnd) -> list[dict[str, Any]]:
    settings = JobSettings(trainer_image="fedma-trainer:test")
    return [*(silo_job(rnd, s, 1, "ns", settings) for s in rnd.spec.silos),
            aggregation_job(rnd, {"silo-1": "ab" * 32}, "ns", settings)]


def test_every_pod_runs_non_root_without_privileges_or_host_access():
    for job in _jobs(_round()):
        pod = job["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["automountServiceAccountToken"] is False  # no API token in a trainer
        for key in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(key)
        assert all("hostPath" not in v for v in pod["volumes"])
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and not sc.get("privileged")
            assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        data = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert all(v["persistentVolumeClaim"]["readOnly"] for v in data)  # data is read-only


SECRET_WORDS = re.compile(r"password|passwd|token|secret|credential|accesskey|privatekey",
                          re.IGNORECASE)


def _properties(schema: dict[str, Any], path: str = ""):
    for name, sub in (schema.get("properties") or {}).items():
        yield f"{path}.{name}", name, sub
        yield from _properties(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _properties(schema["items"], f"{path}[]")


@pytest.mark.parametrize("crd", sorted(build_crds()))
def test_no_spec_field_can_carry_a_secret_only_the_name_of_a_secret(crd):
    schema = build_crds()[crd]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    # A secret value would be a string (maxCaptionTokens, an integer, is not one).
    named = [(path, name) for path, name, sub in _properties(spec)
             if SECRET_WORDS.search(name) and sub.get("type") == "string"]
    assert named, "the test must see the Secret references"
    # Every secret-ish field is a reference to a Kubernetes Secret by name.
    assert all(name.endswith("Secret") for _, name in named), named


def test_store_credentials_reach_the_pods_only_from_the_named_secret():
    for job in _jobs(_round(credentialsSecret="store-creds")):
        for c in job["spec"]["template"]["spec"]["containers"]:
            assert c["envFrom"] == [{"secretRef": {"name": "store-creds"}}]
            literal = {e["name"]: e.get("value", "") for e in c["env"]}
            assert not any(k.startswith("AWS_") for k in literal), literal
            assert all("valueFrom" not in e or "secretKeyRef" in e["valueFrom"]
                       for e in c["env"])
    for job in _jobs(_round()):  # no Secret named: no credentials at all
        assert all("envFrom" not in c for c in job["spec"]["template"]["spec"]["containers"])


OVERRIDES = {
    "priorityClassName": "training-high", "runtimeClassName": "nvidia",
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "gpu", "operator": "In", "values": ["h200"]}]}]}}},
    "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
    "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
    "volumes": [{"name": "scratch", "mountPath": "/scratch", "readOnly": False,
                 "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
                {"name": "ca", "mountPath": "/etc/extra-ca", "configMap": {"name": "ca"}},
                {"name": "cache", "mountPath": "/cache",
                 "persistentVolumeClaim": {"claimName": "hf-cache"}}],
}


def _with_pod(pod: dict[str, Any], queue: str | None = None):
    body = round_body()
    body["spec"]["silos"][0]["pod"] = pod
    if queue:
        body["spec"]["silos"][0]["queueName"] = queue
    return parse(body)


def test_pod_overrides_reach_the_trainer_pod_and_leave_its_security_as_it_was():
    rnd = _with_pod(OVERRIDES, queue="gpus")
    job = silo_job(rnd, rnd.spec.silos[0], 1, "ns", JobSettings())
    plain = silo_job(rnd, rnd.spec.silos[1], 1, "ns", JobSettings())
    pod = job["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "training-high" and pod["runtimeClassName"] == "nvidia"
    assert pod["affinity"] == OVERRIDES["affinity"]
    assert job["spec"]["template"]["metadata"]["annotations"] == OVERRIDES["annotations"]
    trainer = pod["containers"][0]
    assert {"name": "NCCL_DEBUG", "value": "INFO"} in trainer["env"]
    mounts = {m["name"]: m for m in trainer["volumeMounts"]}
    assert mounts["scratch"]["readOnly"] is False and mounts["ca"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cache"]["persistentVolumeClaim"] == {"claimName": "hf-cache",
                                                         "readOnly": True}
    # Kueue: suspended, in its queue; the other silo has no queue and starts at once.
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpus"
    assert "suspend" not in plain["spec"]
    assert "kueue.x-k8s.io/queue-name" not in plain["metadata"]["labels"]
    # Everything the pod's security rests on is what it is without overrides.
    for key in ("securityContext", "serviceAccountName", "automountServiceAccountToken"):
        assert pod[key] == plain["spec"]["template"]["spec"][key]
    assert trainer["securityContext"] == plain["spec"]["template"]["spec"]["containers"][0][
        "securityContext"]
    assert all("hostPath" not in v and "secret" not in v for v in pod["volumes"])
    assert all("valueFrom" not in e for e in trainer["env"])


@pytest.mark.parametrize("pod, field", [
    ({"volumes": [{"name": "h", "mountPath": "/h", "hostPath": {"path": "/"}}]},
     "silos.0.pod.volumes.0.hostPath"),
    ({"volumes": [{"name": "s", "mountPath": "/s", "secret": {"secretName": "kubeconfig"}}]},
     "silos.0.pod.volumes.0.secret"),
    ({"env": [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "x", "key": "k"}}}]},
     "silos.0.pod.env.0.valueFrom"),
    ({"env": [{"name": "LD_PRELOAD", "value": "/data/evil.so"}]}, "silos.0.pod.env.0"),
    ({"env": [{"name": "PYTHONPATH", "value": "/data"}]}, "silos.0.pod.env.0"),
    ({"env": [{"name": "AWS_ENDPOINT_URL", "value": "http://elsewhere"}]},
     "silos.0.pod.env.0"),
    ({"env": [{"name": "FEDMA_ROUND_SHA256", "value": "0" * 64}]}, "silos.0.pod.env.0"),
    ({"annotations": {"container.apparmor.security.beta.kubernetes.io/trainer":
                      "unconfined"}}, "silos.0.pod"),
    ({"annotations": {"fedma.io/round-uid": "x"}}, "silos.0.pod"),
    ({"volumes": [{"name": "e", "mountPath": "/etc", "emptyDir": {}}]}, "silos.0"),
    ({"volumes": [{"name": "round", "mountPath": "/x", "emptyDir": {}}]}, "silos.0.pod"),
    ({"securityContext": {"privileged": True}}, "silos.0.pod.securityContext"),
    ({"hostNetwork": True}, "silos.0.pod.hostNetwork"),
    ({"serviceAccountName": "fedma-operator"}, "silos.0.pod.serviceAccountName"),
])
def test_pod_overrides_that_would_borrow_rights_are_refused_naming_the_field(pod, field):
    with pytest.raises(SpecError) as err:
        _with_pod(pod)
    paths = [path.replace("[", ".").replace("]", "") for path, _ in err.value.errors]
    assert f"spec.{field}" in paths, err.value.errors
