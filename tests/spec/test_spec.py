import copy

import pytest

from fedma.spec import FederatedRound, FederatedTraining, SpecError, dump, load, parse, round_spec

BASE = {
    "apiVersion": "fedma.io/v1alpha1",
    "kind": "FederatedTraining",
    "metadata": {"name": "t1"},
    "spec": {
        "rounds": 3,
        "model": {"vision": {"path": "/m/v"}, "languageModel": {"path": "/m/lm"}},
        "silos": [{"name": "a", "data": {"path": "/d/a.jsonl"}},
                  {"name": "b", "data": {"path": "/d/b.jsonl"}}],
        "artifacts": {"uri": "s3://bucket/fedma"},
    },
}


def with_change(path: str, value):
    obj = copy.deepcopy(BASE)
    node = obj
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if k.isdigit() else node[k]
    last = keys[-1]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return obj


def error_for(obj) -> str:
    with pytest.raises(SpecError) as info:
        parse(obj)
    return str(info.value)


def test_valid_manifest_gets_defaults():
    t = parse(BASE)
    assert isinstance(t, FederatedTraining)
    assert t.spec.training.engine == "torch"
    assert t.spec.model.projector.type == "mlp2x_gelu"
    assert t.spec.quorum == 2


def test_unknown_field_names_its_path():
    msg = error_for(with_change("spec.training", {"learnignRate": 0.1}))
    assert "spec.training.learnignRate: unknown field" in msg


def test_snake_case_is_refused_with_the_api_spelling():
    """A manifest is read as the cluster's schema reads it: ``batch_size`` was accepted
    locally (pydantic's field name) while the CRD knows only ``batchSize``."""
    msg = error_for(with_change("spec.training", {"batch_size": 3}))
    assert "spec.training.batch_size: unknown field; the API spells it 'batchSize'" in msg
    msg = error_for(with_change("spec.model", {"vision": {"path": "/v"},
                                                "language_model": {"path": "/l"}}))
    assert "spec.model.languageModel: Field required" in msg
    assert "spec.model.language_model: unknown field; the API spells it 'languageModel'" in msg
    obj = with_change("spec.training", {"batchSize": 3})
    assert parse(obj).spec.training.batch_size == 3


def test_type_and_range_errors_name_the_field_and_rule():
    msg = error_for(with_change("spec.rounds", -1))
    assert "spec.rounds" in msg and "greater than or equal to 1" in msg
    msg = error_for(with_change("spec.training", {"batchSize": "many"}))
    assert "spec.training.batchSize" in msg and "integer" in msg


def test_missing_required_field():
    obj = copy.deepcopy(BASE)
    del obj["spec"]["silos"][1]["data"]
    assert "spec.silos[1].data: Field required" in error_for(obj)


def test_silo_rules():
    obj = copy.deepcopy(BASE)
    obj["spec"]["silos"][1]["name"] = "a"
    assert "names must be unique, repeated: a" in error_for(obj)
    obj["spec"]["silos"][1]["name"] = "Bad_Name"
    assert "spec.silos[1].name" in error_for(obj)
    obj = with_change("spec.aggregation", {"minSilos": 5})
    assert "minSilos: 5 exceeds the 2 silos" in error_for(obj)


@pytest.mark.parametrize("uri,rule", [("http://evil/x", "scheme 'http' is not allowed"),
                                      ("file:///data/../etc", "must not contain '..'")])
def test_artifact_uri_rules(uri, rule):
    assert rule in error_for(with_change("spec.artifacts", {"uri": uri}))


def test_api_version_and_kind_checked():
    assert "apiVersion: must be 'fedma.io/v1alpha1'" in error_for(
        with_change("apiVersion", "v1"))
    assert "kind: must be one of" in error_for(with_change("kind", "Job"))


def test_load_reports_yaml_errors_with_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed\n")
    with pytest.raises(SpecError) as info:
        load(bad)
    assert str(bad) in str(info.value) and "(yaml)" in str(info.value)


def test_round_spec_copies_training_and_roundtrips():
    t = parse(BASE)
    r = round_spec(t, 2, None)
    assert isinstance(r, FederatedRound)
    assert r.metadata.name == "t1-r0002"
    assert r.spec.round == 2 and r.spec.total_rounds == 3 and r.spec.training_name == "t1"
    again = parse(dump(r))
    assert again == r


def test_round_beyond_total_is_refused():
    r = dump(round_spec(parse(BASE), 1, None))
    r["spec"]["round"] = 9
    assert "exceeds totalRounds 3" in error_for(r)


def test_shipped_examples_validate():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[2] / "examples").glob("*.yaml")):
        if path.name.startswith("values-"):  # Helm values (tests/deploy)
            continue
        assert load(path).kind in {"FederatedTraining", "FederatedRound"}


def test_fedprox_with_zero3_is_refused_naming_the_field():
    msg = error_for(with_change("spec.training", {"engine": "deepspeed", "proximalMu": 0.1}))
    assert "spec.training: training.proximalMu: not supported with deepspeed.zeroStage 3" in msg


def test_several_gpus_need_the_deepspeed_engine_naming_the_silo():
    import copy

    obj = copy.deepcopy(BASE)
    obj["spec"]["silos"][1]["gpus"] = 4
    msg = error_for(obj)
    name = obj["spec"]["silos"][1]["name"]
    assert "silos[1].gpus: 4 GPUs need training.engine deepspeed" in msg, msg
    assert name in msg
    obj["spec"]["training"] = {"engine": "deepspeed"}
    assert parse(obj).spec.silos[1].gpus == 4
    obj["spec"]["training"] = {"engine": "torch"}
    obj["spec"]["silos"][1]["gpus"] = 1
    assert parse(obj).spec.silos[1].gpus == 1


def test_fedprox_strategy_needs_a_proximal_term():
    msg = error_for(with_change("spec.aggregation", {"strategy": "fedprox"}))
    assert "training.proximalMu: must be > 0 with aggregation.strategy fedprox" in msg
    ok = with_change("spec.aggregation", {"strategy": "fedprox"})
    ok["spec"]["training"] = {"proximalMu": 0.01}
    assert parse(ok).spec.aggregation.strategy == "fedprox"


DIGEST = "ab" * 32


def test_initial_projector_is_round_one_input_and_must_live_in_the_store():
    ref = {"uri": "s3://bucket/fedma/earlier/round-0004/global.safetensors", "digest": DIGEST}
    t = parse(with_change("spec.initialProjector", ref))
    r1 = round_spec(t, 1, None)
    assert r1.spec.input is not None and r1.spec.input.uri == ref["uri"]
    assert "initialProjector" not in dump(r1)["spec"]  # the round carries it as its input
    assert round_spec(t, 2, None).spec.input is None  # later rounds start from their input
    outside = {**ref, "uri": "s3://other-bucket/earlier/global.safetensors"}
    assert "initialProjector.uri: s3://other-bucket/earlier/global.safetensors is not inside " \
           "artifacts.uri s3://bucket/fedma" in error_for(with_change("spec.initialProjector",
                                                                     outside))
    # A sibling prefix that merely starts with the same characters is outside too.
    sibling = {**ref, "uri": "s3://bucket/fedma-old/global.safetensors"}
    assert "is not inside" in error_for(with_change("spec.initialProjector", sibling))


def test_pass_rounds_is_carried_only_when_a_training_was_extended():
    t = parse(with_change("spec.rounds", 5))
    assert "passRounds" not in dump(round_spec(t, 4, None, pass_rounds=5))["spec"]
    r = round_spec(t, 4, None, pass_rounds=3)
    assert r.spec.pass_rounds == 3 and r.spec.rounds_per_pass == 3
    assert round_spec(t, 2, None).spec.rounds_per_pass == 5
