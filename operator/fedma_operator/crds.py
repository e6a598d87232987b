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
from fedma_operator.training import HISTORY_NAMES, HISTORY_ROUNDS

VERSION = API_VERSION.split("/")[1]
_DROP = {"title", "description_", "discriminator"}


def _free_form(node: dict[str, Any]) -> dict[str, Any]:
    """A free-form object (``dict[str, Any]``) keeps unknown fields; ``additionalProperties:
    true`` beside that says nothing more, and the apiserver's structural check refuses it."""
    if node.get("x-kubernetes-preserve-unknown-fields") and node.get(
            "additionalProperties") is True:
        node.pop("additionalProperties")
    return node


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
                return _free_form(merged)
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
        return _free_form(out)

    return conv({k: v for k, v in schema.items() if k != "$defs"})


def _f(kind: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "description": description, **extra}


def _atomic(description: str) -> dict[str, Any]:
    """An object written whole by the operator: one entry in managedFields, not one per
    leaf (a round's silos at 1,000 silos made managedFields a third of the object)."""
    return {"type": "object", "description": description, "x-kubernetes-map-type": "atomic",
            "x-kubernetes-preserve-unknown-fields": True}


_REF = _f("object", "an artifact in the store: its URI and sha256", properties={
    "uri": _f("string", "fsspec URI"), "digest": _f("string", "sha256, hex")})
_CONDITIONS = _f(
    "array", "Succeeded, InvalidSpec, SpecChangeRefused (status True/False, reason, message)",
    items=_f("object", "a condition", required=["type", "status"], properties={
        "type": _f("string", "the condition"),
        "status": _f("string", "True or False", enum=["True", "False", "Unknown"]),
        "reason": _f("string", "CamelCase reason"),
        "message": _f("string", "what happened, for a person"),
        "lastTransitionTime": _f("string", "when status last changed (RFC 3339)"),
        "observedGeneration": _f("integer", "the generation it was set at")}),
    **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
_COMMON = {
    "phase": _f("string", "where the object is"),
    "message": _f("string", "the latest progress or failure, for a person"),
    "observedGeneration": _f("integer", "the generation the operator last acted on"),
    "startTime": _f("string", "first reconcile (RFC 3339)"),
    "completionTime": _f("string", "Succeeded or Failed at (RFC 3339)"),
    "loss": _f("number", "mean training loss of the latest round"),
    "serverState": _REF,
    "conditions": _CONDITIONS,
    "acceptedSpec": _atomic("the spec as accepted at the first reconcile: later edits are "
                            "refused (SpecChangeRefused) and the object goes on with this"),
}


def _status(description: str, **fields: dict[str, Any]) -> dict[str, Any]:
    # Unknown fields are kept: a newer operator's status survives a downgrade of the CRDs.
    return {"type": "object", "description": description,
            "x-kubernetes-preserve-unknown-fields": True, "properties": {**_COMMON, **fields}}


_ROUND_STATUS = _status(
    "what the operator observed and did for this round",
    phase=_f("string", "Pending, Training, Aggregating, Succeeded or Failed"),
    phaseSince=_f("string", "when phase last changed (RFC 3339)"),
    silosDone=_f("string", "silos succeeded / silos listed"),
    output=_REF,
    silos=_atomic("per silo: phase (Pending, Running, Succeeded, Excluded), reason, attempts, "
                  "job, jobState, cluster, namespace, update {uri, digest}, samples, loss, "
                  "steps, seconds, note, unreachableSince"),
    aggregation=_atomic("the aggregation: job, phase, included (silo → update sha256, fixed "
                        "when it starts), excluded, summary, reason"),
    roundFile=_f("object", "the ConfigMap its Jobs read the round from: name, sha256, and "
                 "where it was created (placed; emptied when the round ends)",
                 **{"x-kubernetes-preserve-unknown-fields": True}),
)
_TRAINING_STATUS = _status(
    "what the operator observed and did for this training",
    phase=_f("string", "Running, Suspended (spec.suspend, between rounds), Succeeded or Failed"),
    currentRound=_f("integer", "the round now running (or the last one)"),
    completedRounds=_f("integer", "rounds succeeded"),
    passRounds=_f("integer", "rounds per pass over the silos' data: spec.rounds when the "
                             "training started (raising spec.rounds adds further passes)"),
    latest=_REF,
    history=_f("array", f"the newest {HISTORY_ROUNDS} completed rounds: round, name, phase, "
               "loss, output, silosIncluded, silosExcluded, excluded (the first "
               f"{HISTORY_NAMES} names), completionTime", maxItems=HISTORY_ROUNDS, items=_f(
                   "object", "one round", **{"x-kubernetes-preserve-unknown-fields": True})),
)


def _crd(kind: str, plural: str, short: list[str], spec_schema: dict[str, Any],
         columns: list[dict[str, Any]], status: dict[str, Any]) -> dict[str, Any]:
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
                        "status": status,
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
            ], _TRAINING_STATUS),
        "fedma.io_federatedrounds.yaml": _crd(
            "FederatedRound", "federatedrounds", ["fedround", "fr"], rnd, [
                _col("Training", ".spec.trainingName", priority=1),
                _col("Round", ".spec.round", "integer"),
                _col("Phase", ".status.phase"),
                _col("Silos", ".status.silosDone", description="silos done / total"),
                _col("Loss", ".status.loss", "number"),
                AGE,
            ], _ROUND_STATUS),
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
