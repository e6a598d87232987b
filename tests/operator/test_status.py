"""The operator's own view of a status it wrote (status.merge_patch) is what the apiserver
stores: checked against the real apiserver's merge patch in tests/kube (every round there
reconciles from that view), here against RFC 7386's own examples."""

from __future__ import annotations

import pytest

from fedma_operator.status import merge_patch

# RFC 7386, appendix A (the cases on objects; a patch that is not an object replaces).
RFC_7386 = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize("target, patch, result", RFC_7386)
def test_merge_patch_follows_rfc_7386(target, patch, result):
    assert merge_patch(target, patch) == result


def test_merge_patch_leaves_its_inputs_alone():
    target = {"silos": {"a": {"waiting": "ImagePullBackOff", "phase": "Running"}}}
    merge_patch(target, {"silos": {"a": {"waiting": None, "phase": "Succeeded"}}})
    assert target == {"silos": {"a": {"waiting": "ImagePullBackOff", "phase": "Running"}}}


def test_a_silo_key_the_reconcile_removed_reaches_the_apiserver_as_null():
    """A silo's ``waiting`` (its last attempt's pod trouble) is dropped at the next launch;
    a merge patch without the key would leave it stored."""
    from fedma_operator.report import _dropping

    old = {"silos": {"a": {"phase": "Running", "waiting": "ImagePullBackOff: x"}}}
    entries = {"a": {"phase": "Running", "attempts": 2}}
    patch = _dropping(old, entries)
    assert patch == {"a": {"phase": "Running", "attempts": 2, "waiting": None}}
    assert merge_patch(old, {"silos": patch}) == {"silos": {"a": {"phase": "Running",
                                                                  "attempts": 2}}}
