"""The adversarial specs of docs/reliability.md: each a change to a valid FederatedRound and
the field path its refusal must name (by the operator on kmock, tests/faults; at admission or
by the operator on the real apiserver, tests/kube/test_admission.py)."""

from __future__ import annotations

from typing import Any

ADVERSARIAL: dict[str, tuple[Any, str]] = {
    # name: (change to a valid round body, what the refusal must name)
    "huge-round-number": ({"round": 10**12, "totalRounds": 10**12}, "spec.round"),
    "negative-deadline": ({"aggregation": {"deadlineSeconds": -5}},
                          "spec.aggregation.deadlineSeconds"),
    "negative-batch-size": ({"training": {"batchSize": -1}}, "spec.training.batchSize"),
    "path-traversal-in-the-store-URI": ({"artifacts": {"uri": "s3://fedma/runs/../../etc"}},
                                        "spec.artifacts.uri"),
    "path-traversal-in-the-input-URI": (
        {"input": {"uri": "s3://fedma/runs/../other/global.safetensors", "digest": "ab" * 32}},
        "spec.input.uri"),
    "traversal-in-the-training-name": ({"trainingName": "../../evil"}, "spec.trainingName"),
    "foreign-store-scheme": ({"artifacts": {"uri": "http://attacker.example/x"}},
                             "spec.artifacts.uri"),
    "unknown-field": ({"sneaky": True}, "spec.sneaky"),
    "too-many-silos": ({"silos": [{"name": f"s{i}", "data": {"path": "/d.jsonl"}}
                                  for i in range(1001)]}, "spec.silos"),
    "digest-not-sha256": ({"input": {"uri": "s3://fedma/runs/x", "digest": "zz"}},
                          "spec.input.digest"),
}


def adversarial_body(body: dict[str, Any], case: str) -> dict[str, Any]:
    """The valid round ``body`` with ``ADVERSARIAL[case]``'s change merged into its spec."""
    change = ADVERSARIAL[case][0]
    body["spec"] = {**body["spec"], **{k: ({**body["spec"].get(k, {}), **v}
                                           if isinstance(v, dict) and k != "input" else v)
                                       for k, v in change.items()}}
    return body
