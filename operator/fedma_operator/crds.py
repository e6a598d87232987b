"""CRDs generated from the API types in :mod:`fedma.spec` (types first, YAML generated).

The pydantic JSON schema is rewritten into a Kubernetes *structural* schema: ``$ref`` inlined,
``anyOf [X, null]`` turned into ``X`` + ``nullable``, titles dropped, object defaults dropped
(the types apply them), and no ``additionalProperties: false`` next to ``properties`` (which
Kubernetes forbids; unknown fields are refused by kubectl's strict field validation instead,
and by the operator's own parse, which names the field path). Cross-field rules (FedProx needs
μ > 0, quorum ≤ silos, ...) stay in the types: the operator reports them as an ``InvalidSpec``
condition.

``python -m fedma_operator.crds [DIR]`` writes ``crds/``; a test fails when it is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from fedma.spec import API_VERSION, GROUP, FederatedRoundSpec, FederatedTrainingSpec

VERSION = API_VERSION.split("/")[1]
_DROP = {"title", "description_", "discriminator"}


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    defs = schema.get("$defs", {})

    def conv(node: Any) -> Any:
        if isinstance(node, list):
            return [conv(n) for n in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            target = conv(defs[node["$ref"].split("/")[-1]])
            extra = {k: conv(v) for k, v in node.items() if k not in ("$ref", "default")}
            return {**target, **extra}
        any_of = node.get("anyOf")
        if any_of is not None:
            rest = [a for a in any_of if a.get("type") != "null"]
            if len(rest) == 1:
                merged = {**conv(rest[0]), "nullable": True}
                for k, v in node.items():
                    if k not in ("anyOf", "default", "title"):
                        merged[k] = conv(v)
                if node.get("default") is not None:
                    merged["default"] = node["default"]
                return merged
        out: dict[str, Any] = {}
        for k, v in node.items():
            if k in _DROP or k == "$defs":
                continue
            if k == "additionalProperties" and v is False:
                continue
            if k == "default" and isinstance(v, dict | list):
                continue
            if k == "properties":
                out[k] = {name: conv(sub) for name, sub in v.items()}
            else:
                out[k] = conv(v)
        # JSON Schema 2020 (pydantic) writes ``exclusiveMinimum: 0``; apiextensions v1 speaks
        # OpenAPI 3.0, where the bound is ``minimum`` and ``exclusiveMinimum`` a boolean.
        for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
            if isinstance(out.get(flag), int | float) and not isinstance(out[flag], bool):
                limit = out.pop(flag)
                if bound in out and out[bound] != limit:
                    raise ValueError(f"{flag}={limit} beside {bound}={out[bound]}")
                out[bound], out[flag] = limit, True
        if "enum" in out and "type" not in out:
            out["type"] = "integer" if all(isinstance(e, int) for e in out["enum"]) else "string"
        return out

    return conv({k: v for k, v in schema.items() if k != "$defs"})


_STATUS = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def _crd(kind: str, plural: str, short: list[str], spec_schema: dict[str, Any],
         columns: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(),
                      "listKind": f"{kind}List", "shortNames": short, "categories": ["fedma"]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema,
                        "status": _STATUS,
                    },
                }},
            }],
        },
    }


def _col(name: str, path: str, kind: str = "string", **kw: Any) -> dict[str, Any]:
    return {"name": name, "type": kind, "jsonPath": path, **kw}


AGE = _col("Age", ".metadata.creationTimestamp", "date")


def build_crds() -> dict[str, dict[str, Any]]:
    """File name → CRD object."""
    training = structural(FederatedTrainingSpec.model_json_schema(by_alias=True))
    rnd = structural(FederatedRoundSpec.model_json_schema(by_alias=True))
    return {
        "fedma.io_federatedtrainings.yaml": _crd(
            "FederatedTraining", "federatedtrainings", ["fedtrain", "ft"], training, [
                _col("Round", ".status.currentRound", "integer"),
                _col("Rounds", ".spec.rounds", "integer"),
                _col("Phase", ".status.phase"),
                _col("Loss", ".status.loss", "number"),
                AGE,
            ]),
        "fedma.io_federatedrounds.yaml": _crd(
            "FederatedRound", "federatedrounds", ["fedround", "fr"], rnd, [
                _col("Training", ".spec.trainingName", priority=1),
                _col("Round", ".spec.round", "integer"),
                _col("Phase", ".status.phase"),
                _col("Silos", ".status.silosDone", description="silos done / total"),
                _col("Loss", ".status.loss", "number"),
                AGE,
            ]),
    }


def render(crd: dict[str, Any]) -> str:
    return ("# Generated by `python -m fedma_operator.crds` from fedma/spec.py: do not edit.\n"
            + yaml.safe_dump(crd, sort_keys=False, width=100))


def write(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, crd in build_crds().items():
        path = folder / name
        path.write_text(render(crd))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write(Path(sys.argv[1] if len(sys.argv) > 1 else "crds")):
        print(p)
