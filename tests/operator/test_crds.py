"""crds/ is generated from fedma.spec; it must be current and structural."""

from pathlib import Path

import pytest
import yaml

from fedma.spec import parse
from fedma_operator.crds import build_crds, render

ROOT = Path(__file__).resolve().parents[2]


def test_crds_folder_is_current_with_the_types():
    for name, crd in build_crds().items():
        path = ROOT / "crds" / name
        assert path.exists(), f"{path} missing: run `python -m fedma_operator.crds crds`"
        assert path.read_text() == render(crd), (
            f"{path} is stale against fedma/spec.py: run `python -m fedma_operator.crds crds`")


def _walk(node, where="spec"):
    if isinstance(node, dict):
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, where
        if "properties" in node:
            assert node.get("type") == "object", where
            assert node.get("additionalProperties") is not False, where
            for k, v in node["properties"].items():
                _walk(v, f"{where}.{k}")
        if "items" in node:
            _walk(node["items"], f"{where}[]")
        if isinstance(node.get("additionalProperties"), dict):
            _walk(node["additionalProperties"], f"{where}.*")
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            assert "type" in node, f"{where}: structural schemas need a type on every node"


def test_schemas_are_structural_with_status_subresource_and_columns():
    crds = build_crds()
    assert {c["spec"]["names"]["kind"] for c in crds.values()} == {"FederatedTraining",
                                                                    "FederatedRound"}
    for crd in crds.values():
        version = crd["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        _walk(version["schema"]["openAPIV3Schema"]["properties"]["spec"])
        names = [c["name"] for c in version["additionalPrinterColumns"]]
        assert "Phase" in names and "Loss" in names and names[-1] == "Age"
        assert crd["spec"]["names"]["shortNames"]
    rnd = crds["fedma.io_federatedrounds.yaml"]["spec"]["versions"][0]
    assert [c["name"] for c in rnd["additionalPrinterColumns"]] == [
        "Training", "Round", "Phase", "Silos", "Loss", "Age"]


@pytest.mark.parametrize("example", ["training.yaml", "cluster-training.yaml",
                                     "federation.yaml"])
def test_example_manifests_parse_as_the_types(example):
    """The types' own check; the CRD's is the real apiserver's, in
    tests/kube/test_admission.py (jsonschema cannot read OpenAPI 3.0's boolean bounds)."""
    parse(yaml.safe_load((ROOT / "examples" / example).read_text()))
