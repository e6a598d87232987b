"""The Helm chart, rendered and linted by Helm's own engine, checked against the Kubernetes API
schemas offline, and applied to a kmock API server."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import (
    CHART,
    MONITORING,
    NAMESPACE,
    ROOT,
    by_kind,
    deep_merge,
    example_values,
    notes,
    render,
)

# An old minor still in support (the chart's kubeVersion allows 1.27+).
K8S_VERSION = "1.30.0"
PROMETHEUS_OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
CASES = {
    "hub-defaults": {"role": "hub"},
    "hub-everything": deep_merge(MONITORING, {"role": "hub", "operator": {
        "watchNamespaces": ["a", "b"], "siloNamespaces": ["team-a-silo"],
        "allowedImages": ["ghcr.io/fedma/", "registry.example.com/ml/trainer"]}}),
    "hub-all-namespaces": {"role": "hub", "operator": {"allNamespaces": True}},
    "hub-example": example_values("hub"),
    "silo-defaults": {"role": "silo"},
    "silo-everything": deep_merge(MONITORING, {
        "role": "silo", "data": {"persistentVolumeClaim": {"create": True}},
        "hubIdentity": {"subjects": [{"kind": "User", "name": "hub@example.org"}]}}),
    "silo-example": example_values("silo"),
    "silo-openshift-dns": {"role": "silo", "networkPolicy": {
        "dns": {"preset": "openshift", "cidrs": ["172.30.0.10/32"]},
        "store": {"peers": [{"namespaceSelector": {"matchLabels": {"store": "minio"}}}]}}},
}


@pytest.mark.parametrize("values", [{}, {"role": "silo"}, example_values("hub"),
                                    example_values("silo")], ids=["hub", "silo", "hub-example",
                                                                  "silo-example"])
def test_lint_strict_has_no_warnings(values):
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{K8S_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


def test_chart_crds_are_the_generated_crds(chart):
    top = {p.name: p.read_text() for p in (ROOT / "crds").glob("*.yaml")}
    assert {c["name"].split("/")[-1]: c["data"] for c in chart.crds} == top, (
        "charts/fedma/crds/ differs from crds/: run `make chart-assets`")


@pytest.mark.parametrize("case", CASES)
def test_every_manifest_is_valid_for_the_kubernetes_api(chart, case):
    docs = render(chart, CASES[case])
    assert docs
    for doc in docs:
        if doc["kind"] in PROMETHEUS_OPERATOR_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            continue  # not in the Kubernetes schemas: checked in test_monitoring_resources
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']}: {exc}") from None
        assert doc["metadata"].get("namespace", NAMESPACE) in (NAMESPACE, "a", "b")


def test_hub_and_silo_render_what_each_role_needs(chart):
    hub = {d["kind"] for d in render(chart, CASES["hub-everything"])}
    # hub-everything watches listed namespaces: RoleBindings only, nothing cluster-wide.
    assert hub == {"ServiceAccount", "ClusterRole", "RoleBinding",
                   "Deployment", "Service", "ServiceMonitor", "PodMonitor", "PrometheusRule",
                   "ConfigMap", "NetworkPolicy"}
    silo = {d["kind"] for d in render(chart, CASES["silo-everything"])}
    assert silo == {"ServiceAccount", "Secret", "Role", "RoleBinding", "PersistentVolumeClaim",
                    "NetworkPolicy", "PodMonitor"}
    # The silo role grants nothing cluster-wide and runs nothing.
    assert not {"ClusterRole", "ClusterRoleBinding", "Deployment"} & silo


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["spec"]["template"]["spec"]["containers"]


def test_operator_pod_is_locked_down_and_probed(chart):
    (dep,) = by_kind(render(chart, example_values("hub")), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] >= 1000
    assert pod["serviceAccountName"] == "fedma-operator"
    (c,) = _containers(dep)
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["privileged"] is False
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["port"] == "health"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 9090,
                                                                   "health": 8080}
    assert c["image"] == "ghcr.io/fedma/operator:0.1.0"
    assert "--namespace=fedma" in c["args"] and "--all-namespaces" not in c["args"]
    assert "--trainer-image=ghcr.io/fedma/trainer:0.1.0" in c["args"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"


def test_operator_arguments_are_ones_it_accepts(chart):
    from fedma_operator.main import parse_args

    for case in ("hub-defaults", "hub-everything", "hub-example", "hub-all-namespaces"):
        (dep,) = by_kind(render(chart, CASES[case]), "Deployment")
        args = parse_args(_containers(dep)[0]["args"])
        assert args.trainer_service_account == "fedma-trainer"
        assert args.all_namespaces == (case == "hub-all-namespaces")
        assert args.silo_cluster_grace == 60.0 and args.interval == 10.0
        op = CASES[case].get("operator", {})
        assert args.silo_namespace == op.get("siloNamespaces", [])
        assert args.allowed_image == op.get("allowedImages", [])


def test_all_namespaces_and_a_namespace_list_are_refused_together(chart):
    with pytest.raises(helm.HelmError, match=r"allNamespaces and operator\.watchNamespaces"):
        render(chart, {"operator": {"allNamespaces": True, "watchNamespaces": ["a"]}})


def test_image_tag_defaults_to_the_app_version(chart):
    (dep,) = by_kind(render(chart, {}), "Deployment")
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert _containers(dep)[0]["image"] == f"ghcr.io/fedma/operator:{version}"


def test_trainer_network_policy_allows_only_dns_and_the_store(chart):
    (np,) = by_kind(render(chart, example_values("silo")), "NetworkPolicy")
    spec = np["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["podSelector"]["matchExpressions"] == [
        {"key": "fedma.io/role", "operator": "In", "values": ["silo", "aggregate"]}]
    dns, store = spec["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert store["to"] == [{"ipBlock": {"cidr": "203.0.113.10/32"}}]
    assert store["ports"] == [{"port": 443, "protocol": "TCP"}]
    (metrics,) = spec["ingress"]
    assert metrics["ports"] == [{"port": 9400, "protocol": "TCP"}]
    # A silo with no store given: DNS and nothing else (default-deny).
    (np,) = by_kind(render(chart, {"role": "silo"}), "NetworkPolicy")
    (dns,) = np["spec"]["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert np["spec"]["ingress"] == []
    # A hub with no store given: public endpoints only, never cluster-internal or metadata.
    (np,) = by_kind(render(chart, {"role": "hub"}), "NetworkPolicy")
    (block,) = np["spec"]["egress"][1]["to"]
    assert "169.254.0.0/16" in block["ipBlock"]["except"]
    assert "10.0.0.0/8" in block["ipBlock"]["except"]


KUBE_DNS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
DNS_PRESETS = {
    "kube-dns": ([KUBE_DNS], {53}),
    "nodelocal": ([{"ipBlock": {"cidr": "169.254.20.10/32"}}, KUBE_DNS], {53}),
    "openshift": ([{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "openshift-dns"}}, "podSelector": {"matchLabels": {
            "dns.operator.openshift.io/daemonset-dns": "default"}}}], {5353, 53}),
    "gke-cloud-dns": ([{"ipBlock": {"cidr": "169.254.169.254/32"}}], {53}),
}


@pytest.mark.parametrize("preset", DNS_PRESETS)
def test_dns_presets_reach_where_each_platform_resolves(chart, preset):
    to, ports = DNS_PRESETS[preset]
    values = {"role": "silo", "networkPolicy": {"dns": {"preset": preset},
                                                "store": {"cidrs": ["203.0.113.10/32"]}}}
    (np,) = by_kind(render(chart, values), "NetworkPolicy")
    dns, store = np["spec"]["egress"]
    assert dns["to"] == to
    assert sorted((p["port"], p["protocol"]) for p in dns["ports"]) == sorted(
        (p, proto) for p in ports for proto in ("TCP", "UDP"))
    assert store["to"] == [{"ipBlock": {"cidr": "203.0.113.10/32"}}]


def test_dns_targets_and_ports_can_be_added_and_replaced(chart):
    values = {"networkPolicy": {"dns": {"preset": "nodelocal", "cidrs": ["10.96.0.10/32"],
                                        "peers": [{"podSelector": {"matchLabels": {"a": "b"}}}],
                                        "ports": [1053]}}}
    (np,) = by_kind(render(chart, values), "NetworkPolicy")
    dns = np["spec"]["egress"][0]
    assert dns["to"][-2:] == [{"ipBlock": {"cidr": "10.96.0.10/32"}},
                              {"podSelector": {"matchLabels": {"a": "b"}}}]
    assert {p["port"] for p in dns["ports"]} == {1053}
    with pytest.raises(helm.HelmError, match=r"dns\.preset=none needs networkPolicy\.dns\.cidrs"):
        render(chart, {"networkPolicy": {"dns": {"preset": "none"}}})
    (np,) = by_kind(render(chart, {"networkPolicy": {"dns": {
        "preset": "none", "cidrs": ["10.0.0.53/32"]}}}), "NetworkPolicy")
    assert np["spec"]["egress"][0]["to"] == [{"ipBlock": {"cidr": "10.0.0.53/32"}}]


def test_trainer_pods_match_the_policy_and_the_pod_monitor(chart):
    """The selectors above must select what the operator's Job builder actually labels."""
    from fedma.spec import parse, round_spec
    from fedma_operator import jobs

    training = parse(yaml.safe_load((ROOT / "examples" / "cluster-training.yaml").read_text()))
    rnd = round_spec(training, 1, None)  # type: ignore[arg-type]
    settings = jobs.JobSettings()
    silo_pod = jobs.silo_job(rnd, rnd.spec.silos[0], 1, "fedma", settings)["spec"]["template"]
    agg_pod = jobs.aggregation_job(rnd, {}, "fedma", settings)["spec"]["template"]
    docs = render(chart, deep_merge(MONITORING, {"role": "silo"}))
    (np,) = by_kind(docs, "NetworkPolicy")
    (pm,) = by_kind(docs, "PodMonitor")
    for pod in (silo_pod, agg_pod):
        assert _selects(np["spec"]["podSelector"], pod["metadata"]["labels"])
    assert _selects(pm["spec"]["selector"], silo_pod["metadata"]["labels"])
    assert not _selects(pm["spec"]["selector"], agg_pod["metadata"]["labels"])
    port = pm["spec"]["podMetricsEndpoints"][0]["port"]
    assert [p["name"] for p in silo_pod["spec"]["containers"][0]["ports"]] == [port]
    assert silo_pod["spec"]["serviceAccountName"] == "fedma-trainer"
    assert silo_pod["spec"]["securityContext"]["runAsUser"] == 10001


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        if e["operator"] == "In" and labels.get(e["key"]) not in e["values"]:
            return False
    return True


def test_silo_binds_the_hub_identity_and_keeps_the_data_claim(chart):
    docs = render(chart, CASES["silo-everything"])
    (binding,) = by_kind(docs, "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "fedma-hub", "namespace": NAMESPACE},
        {"kind": "User", "name": "hub@example.org", "apiGroup": "rbac.authorization.k8s.io"}]
    (secret,) = by_kind(docs, "Secret")
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert "data" not in secret and "stringData" not in secret  # the token controller fills it
    (pvc,) = by_kind(docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    trainer = [d for d in by_kind(docs, "ServiceAccount") if d["metadata"]["name"]
               == "fedma-trainer"]
    assert trainer[0]["automountServiceAccountToken"] is False


def test_a_silo_nobody_may_use_is_refused(chart):
    with pytest.raises(helm.HelmError, match="nobody could run Jobs here"):
        render(chart, {"role": "silo", "hubIdentity": {"serviceAccount": {"create": False}}})


def test_notes_tell_each_role_its_next_step(chart):
    hub = notes(chart, example_values("hub"))
    assert "role=silo" in hub and "--skip-crds" in hub and "credentialsSecret" in hub
    assert "create secret generic fedma-s3" in hub
    silo = notes(chart, example_values("silo"))
    assert "fedma-hub-token" in silo and "kubeconfigSecret" in silo and "hospital-b-data" in silo
    assert "WARNING" not in silo and "public address" not in hub
    # No store address: the silo is told its updates cannot leave, and which value to set.
    bare = notes(chart, {"role": "silo"})
    assert "WARNING: networkPolicy.store is empty" in bare and "store.cidrs" in bare, bare
    assert "public address on ports 443" in notes(chart, {"role": "hub"})


BAD_VALUES = [
    ({"role": "server"}, "role"),
    ({"operator": {"metricsPort": 70000}}, "metricsPort"),
    ({"operator": {"watchNamespaces": ["Not_A_Namespace"]}}, "watchNamespaces"),
    ({"operator": {"siloNamespaces": ["Not_A_Namespace"]}}, "siloNamespaces"),
    ({"operator": {"allowedImages": ["has space"]}}, "allowedImages"),
    ({"images": {"operator": {"tag": "has space"}}}, "tag"),
    ({"operator": {"replicas": 2}}, "replicas"),
    ({"monitoring": {"serviceMonitor": {"interval": "soon"}}}, "interval"),
    ({"networkPolicy": {"store": {"cidrs": ["not-a-cidr"]}}}, "cidrs"),
    ({"networkPolicy": {"dns": {"preset": "coredns"}}}, "preset"),
    ({"networkPolicy": {"dns": {"ports": [0]}}}, "ports"),
    ({"data": {"persistentVolumeClaim": {"accessModes": ["ReadWriteSometimes"]}}},
     "accessModes"),
]


@pytest.mark.parametrize(("values", "field"), BAD_VALUES,
                         ids=[f for _, f in BAD_VALUES])
def test_schema_rejects_bad_values_naming_the_field(chart, values, field):
    with pytest.raises(helm.HelmValuesError) as err:
        chart.validate_schema(chart.merge_values(values))
    assert field in str(err.value), str(err.value)
    with pytest.raises(helm.HelmError):  # and an install (render) refuses them too
        render(chart, values)


def test_examples_pass_the_schema(chart):
    for role in ("hub", "silo"):
        chart.validate_schema(chart.merge_values(example_values(role)))
