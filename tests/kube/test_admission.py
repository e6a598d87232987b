"""What the real apiserver admits: the CRDs' schemas and CEL rules, the examples, and every
adversarial spec of docs/reliability.md (refused at admission with the apiserver's message
naming the field, or, where a schema cannot say it, by the operator with a condition)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.faults.adversarial import ADVERSARIAL, adversarial_body
from tests.kube.deployed import NAMESPACE
from tests.kube.waiting import fedma_path, get, items, phase, wait_until

pytestmark = [pytest.mark.kube]
ROOT = Path(__file__).resolve().parents[2]
# Refused by the CRD schema itself; the rest by the operator's own parse (InvalidSpec).
SCHEMA_REFUSES = {"huge-round-number", "negative-deadline", "negative-batch-size",
                  "too-many-silos", "digest-not-sha256", "traversal-in-the-training-name",
                  "unknown-field"}
NS = "admission"


def round_body(name: str, silos: int = 2, **spec) -> dict:
    return {"apiVersion": "fedma.io/v1alpha1", "kind": "FederatedRound",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"trainingName": "adm", "round": 1, "totalRounds": 1,
                     "model": {"vision": {"path": "/models/vision"},
                               "languageModel": {"path": "/models/lm"}},
                     "silos": [{"name": f"silo-{i + 1}", "data": {"path": f"/d/{i}.jsonl"}}
                               for i in range(silos)],
                     "aggregation": {"deadlineSeconds": 600},
                     "artifacts": {"uri": "s3://fedma/runs"}, **spec}}


@pytest.fixture(scope="module")
def ns(hub):
    hub.kubectl("create", "namespace", NS)
    yield NS
    hub.kubectl("delete", "namespace", NS, "--wait=false")


def create(hub, obj, *flags):
    return hub.kubectl("create", *flags, "-f", "-", input=json.dumps(obj), check=False)


@pytest.mark.parametrize("example", ["training.yaml", "cluster-training.yaml",
                                     "federation.yaml"])
def test_every_example_is_accepted_with_strict_validation(hub, example):
    docs = [d for d in yaml.safe_load_all((ROOT / "examples" / example).read_text()) if d]
    for doc in docs:
        doc.setdefault("metadata", {})["namespace"] = NAMESPACE
        out = hub.kubectl("apply", "--validate=strict", "--dry-run=server", "-f", "-",
                          input=yaml.safe_dump(doc), check=False)
        assert out.returncode == 0, (example, out.stderr)
        if doc["kind"] == "FederatedTraining":  # and the schema's bounds hold for it
            bad = {**doc, "spec": {**doc["spec"], "rounds": 0}}
            out = hub.kubectl("apply", "--dry-run=server", "-f", "-",
                              input=yaml.safe_dump(bad), check=False)
            assert out.returncode != 0 and "spec.rounds" in out.stderr, out.stderr


@pytest.mark.faults
@pytest.mark.parametrize("case", sorted(ADVERSARIAL))
def test_an_adversarial_spec_is_refused_at_admission_or_by_the_operator(hub, operator, ns,
                                                                       case):
    field = ADVERSARIAL[case][1]
    body = adversarial_body(round_body(f"adv-{case.lower()}"[:63]), case)
    out = create(hub, body)
    if case in SCHEMA_REFUSES:
        assert out.returncode != 0, f"{case}: admitted"
        assert field in out.stderr, out.stderr
        return
    assert out.returncode == 0, out.stderr
    name = body["metadata"]["name"]
    obj = wait_until(lambda: (lambda o: o if phase(o) == "Failed" else None)(
        get(hub, fedma_path(ns, "federatedrounds", name))), 30, f"{name} Failed",
        operator.tail)
    assert field in obj["status"]["message"], obj["status"]
    conds = {c["type"]: c for c in obj["status"]["conditions"]}
    assert conds["InvalidSpec"]["status"] == "True"
    assert not items(hub, f"/apis/batch/v1/namespaces/{ns}/jobs?labelSelector="
                          f"fedma.io/round-name%3D{name}")


def test_the_cel_rules_refuse_what_the_types_refuse(hub, ns):
    quorum = create(hub, round_body("quorum", aggregation={"minSilos": 3, "deadlineSeconds": 1}))
    assert quorum.returncode != 0
    assert "aggregation.minSilos exceeds the number of silos listed" in quorum.stderr
    prox = create(hub, round_body("prox", aggregation={"strategy": "fedprox"}))
    assert "training.proximalMu must be > 0" in prox.stderr, prox.stderr
    dp = create(hub, round_body("dp", aggregation={
        "privacy": {"noiseMultiplier": 1.0, "clipNorm": 1.0}, "robust": {"maxUpdateNorm": 5.0}}))
    assert "maxUpdateNorm is not allowed with central DP" in dp.stderr, dp.stderr
    gpus = round_body("gpus")
    gpus["spec"]["silos"][1]["gpus"] = 2
    out = create(hub, gpus)  # the torch engine (the default) trains on one device
    assert "silos[].gpus above 1 needs training.engine deepspeed" in out.stderr, out.stderr
    gpus["spec"]["training"] = {"engine": "deepspeed"}
    assert create(hub, gpus, "--dry-run=server").returncode == 0
    dup = round_body("dup")
    dup["spec"]["silos"][1]["name"] = "silo-1"
    out = create(hub, dup)
    assert out.returncode != 0 and "Duplicate value" in out.stderr, out.stderr


def test_an_initial_projector_outside_the_store_is_refused_at_admission(hub, ns):
    spec = {k: v for k, v in round_body("x")["spec"].items()
            if k not in ("trainingName", "round", "totalRounds")}

    def training(name: str, uri: str) -> dict:
        return {"apiVersion": "fedma.io/v1alpha1", "kind": "FederatedTraining",
                "metadata": {"name": name, "namespace": NS},
                "spec": {**spec, "rounds": 2,
                         "initialProjector": {"uri": uri, "digest": "ab" * 32}}}

    for uri in ("s3://elsewhere/runs/t/round-0003/global.safetensors",
                "s3://fedma/runs-old/t/round-0003/global.safetensors"):
        out = create(hub, training("outside", uri), "--dry-run=server")
        assert out.returncode != 0, uri
        assert "initialProjector.uri must lie inside artifacts.uri" in out.stderr, out.stderr
    inside = create(hub, training("inside", "s3://fedma/runs/t/round-0003/global.safetensors"),
                    "--dry-run=server")
    assert inside.returncode == 0, inside.stderr


def test_a_rounds_spec_is_immutable_at_admission(hub, ns):
    body = round_body("fixed", aggregation={"deadlineSeconds": 600, "minSilos": 0})
    assert create(hub, body).returncode == 0
    out = hub.kubectl("-n", ns, "patch", "federatedround", "fixed", "--type=merge", "-p",
                      json.dumps({"spec": {"aggregation": {"deadlineSeconds": 5}}}),
                      check=False)
    assert out.returncode != 0
    assert "a FederatedRound's spec is immutable" in out.stderr, out.stderr


def test_unknown_fields_are_refused_by_kubectl_and_pruned_for_other_clients(hub, ns):
    body = round_body("unknown")
    body["spec"]["sneaky"] = True
    body["spec"]["silos"][0]["extra"] = 1
    out = create(hub, body)  # kubectl: server-side strict field validation
    assert out.returncode != 0 and 'unknown field "spec.sneaky"' in out.stderr, out.stderr
    # A client that asks for nothing (the API default, fieldValidation=Warn): pruned.
    status, stored = hub.request("POST", fedma_path(ns, "federatedrounds"), body)
    assert status == 201, stored
    assert "sneaky" not in stored["spec"] and "extra" not in stored["spec"]["silos"][0]


def test_the_charts_monitors_are_accepted_by_the_prometheus_operators_crds(hub, tmp_path):
    """With the prometheus-operator's own CRDs (from its pinned Go module) in the hub, the
    ServiceMonitor, PodMonitor and PrometheusRule of examples/values-hub.yaml are validated by
    the apiserver, strictly."""
    crds = hub.bin.parent / "crds" / "monitoring"
    hub.kubectl("apply", "--server-side", "-f", str(crds))
    hub.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(crds))
    out = hub.helm("template", "fedma", "charts/fedma", "-n", NAMESPACE, "-f",
                   "examples/values-hub.yaml", "--api-versions", "monitoring.coreos.com/v1")
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    monitors = [d for d in docs if d["apiVersion"] == "monitoring.coreos.com/v1"]
    assert {d["kind"] for d in monitors} == {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    for doc in monitors:
        res = hub.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-",
                          input=yaml.safe_dump(doc), check=False)
        assert res.returncode == 0, (doc["kind"], res.stderr)
    # And a typo in one is refused by the real schema, naming the field.
    bad = {**monitors[0], "spec": {**monitors[0]["spec"], "endpointz": []}}
    res = hub.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-",
                      input=yaml.safe_dump(bad), check=False)
    assert res.returncode != 0 and "endpointz" in res.stderr, res.stderr


def test_monitors_without_the_prometheus_operator_crds_fail_the_install_cleanly(silo,
                                                                                tmp_path):
    """The silo cluster has no monitoring.coreos.com API: ``helm install`` with the PodMonitor
    on fails before it applies anything, naming the value to change; nothing is left behind."""
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"role": "silo",
                                      "monitoring": {"podMonitor": {"enabled": True}}}))
    res = silo.helm("install", "mon", "charts/fedma", "-n", "fedma-mon", "--create-namespace",
                    "--skip-crds", "-f", str(values), check=False)
    assert res.returncode != 0
    assert "monitoring.podMonitor.enabled=true" in res.stderr, res.stderr
    assert "no PodMonitor API" in res.stderr, res.stderr
    assert "mon" not in silo.helm("list", "-A", "-q").stdout.split()
    left = silo.kubectl("get", "serviceaccounts,roles,rolebindings,networkpolicies,"
                        "persistentvolumeclaims,secrets", "-A", "-l",
                        "app.kubernetes.io/instance=mon", "-o", "name").stdout
    assert left == "", left


@pytest.mark.parametrize("preset", ["kube-dns", "nodelocal", "openshift", "gke-cloud-dns"])
def test_the_network_policy_of_every_dns_preset_is_admitted(hub, preset):
    """Each preset renders a NetworkPolicy the real apiserver accepts, strictly (a peer, CIDR
    or port it would refuse fails here). Admitted, not enforced: no network plugin runs here
    (docs/deploy.md, what the tests cover)."""
    out = hub.helm("template", "fedma-silo", "charts/fedma", "-n", NAMESPACE, "-s",
                   "templates/networkpolicy.yaml", "--set", "role=silo",
                   "--set", f"networkPolicy.dns.preset={preset}",
                   "--set", "networkPolicy.dns.cidrs={10.96.0.10/32}",
                   "--set", "networkPolicy.store.cidrs={203.0.113.10/32}")
    (doc,) = [d for d in yaml.safe_load_all(out.stdout) if d]
    res = hub.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-",
                      input=yaml.safe_dump(doc), check=False)
    assert res.returncode == 0, res.stderr
