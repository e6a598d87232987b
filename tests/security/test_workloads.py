"""What the operator runs: least-privilege pods, secrets only from Secrets."""

from __future__ import annotations

import re
from typing import Any

import pytest

from fedma.spec import parse
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
