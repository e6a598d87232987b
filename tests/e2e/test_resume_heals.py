"""Resume that heals, locally: a training extended by raising spec.rounds, one started from an
earlier projector (spec.initialProjector), and a tampered global projector named with the
round to recompute and recomputed by ``--recompute`` (issue 17, item 4)."""

import json
from pathlib import Path

import pytest

from tests.conftest import training_manifest, write_yaml
from tests.e2e.test_local_run import fedma

pytestmark = pytest.mark.e2e


def _manifest(path: Path) -> dict:
    return json.loads(path.with_name(path.name + ".manifest.json").read_text())


def _rows(out: Path) -> list[dict]:
    return json.loads((out / "report.json").read_text())["rounds"]


@pytest.mark.faults
def test_extend_then_tampered_global_names_the_round_and_recompute_heals(tmp_path, tiny_models):
    obj = training_manifest(tmp_path, tiny_models, rounds=2, n=24)
    out = tmp_path / "out"
    first = fedma("run", str(write_yaml(tmp_path / "t.yaml", obj)), "--out", str(out))
    assert first.returncode == 0, first.stderr[-3000:]
    store = tmp_path / "store" / "tiny"
    g1, g2 = (store / f"round-000{r}" / "global.safetensors" for r in (1, 2))
    d1, d2 = _manifest(g1)["sha256"], _manifest(g2)["sha256"]

    # Lowering the rounds of a started training is refused, naming the field.
    obj["spec"]["rounds"] = 1
    low = fedma("run", str(write_yaml(tmp_path / "t.yaml", obj)), "--out", str(out))
    assert low.returncode == 2
    assert "spec.rounds: 1 is below the 2 training 'tiny' was run with" in low.stderr

    # A global modified after it was committed: the next run says which round and how.
    data = bytearray(g2.read_bytes())
    data[-8] ^= 0xFF
    g2.write_bytes(bytes(data))
    obj["spec"]["rounds"] = 3
    tampered = fedma("run", str(write_yaml(tmp_path / "t.yaml", obj)), "--out", str(out))
    assert tampered.returncode == 2
    err = " ".join(tampered.stderr.split())
    assert "round-0002/global.safetensors: sha256 mismatch" in err
    assert "round 2's global projector: recompute it with the same command and --recompute 2" in err
    assert "round 1 is kept" in err
    assert not (store / "round-0003").exists()  # nothing was trained on the tampered bytes
    assert "extending tiny: 2 → 3 rounds" in tampered.stdout  # the raise itself is accepted

    healed = fedma("run", str(tmp_path / "t.yaml"), "--out", str(out), "--recompute", "2")
    assert healed.returncode == 0, healed.stderr[-3000:]
    assert "recomputing tiny from round 2" in healed.stdout
    # Round 1 untouched; round 2 recomputed from its reused, intact updates is the same
    # projector it was before the bytes were changed; the discarded manifest is kept.
    assert _manifest(g1)["sha256"] == d1
    assert _manifest(g2)["sha256"] == d2
    assert (store / "round-0002" / "global.safetensors.discarded.json").exists()
    assert _manifest(store / "round-0003" / "global.safetensors")["base_digest"] == d2
    assert [r["round"] for r in _rows(out)] == [0, 1, 2, 3]
    # Round 3 is the first of a second pass over the data: a fresh shard, logged.
    round3 = (out / "rounds" / "round-0003" / "round.yaml").read_text()
    assert "passRounds: 2" in round3 and "totalRounds: 3" in round3


def test_initial_projector_starts_a_training_from_an_earlier_one(tmp_path, tiny_models):
    base = training_manifest(tmp_path, tiny_models, rounds=1, n=16)
    out = tmp_path / "out"
    proc = fedma("run", str(write_yaml(tmp_path / "a.yaml", base)), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    g1 = tmp_path / "store" / "tiny" / "round-0001" / "global.safetensors"
    ref = {"uri": f"file://{g1}", "digest": _manifest(g1)["sha256"]}

    # A wrong digest is refused before anything trains, naming the field.
    nxt = json.loads(json.dumps(base))
    nxt["metadata"]["name"] = "tiny-next"
    nxt["spec"]["initialProjector"] = {**ref, "digest": "0" * 64}
    bad = fedma("run", str(write_yaml(tmp_path / "b.yaml", nxt)), "--out", str(tmp_path / "o2"))
    assert bad.returncode == 2
    assert "spec.initialProjector: " in bad.stderr and "sha256 mismatch" in bad.stderr
    assert not (tmp_path / "store" / "tiny-next" / "round-0001").exists()

    nxt["spec"]["initialProjector"] = ref
    good = fedma("run", str(write_yaml(tmp_path / "b.yaml", nxt)), "--out", str(tmp_path / "o2"))
    assert good.returncode == 0, good.stderr[-3000:]
    # Round 0 of the new training is the earlier training's round 1: the same held-out loss.
    assert _rows(tmp_path / "o2")[0]["heldout_loss"] == pytest.approx(_rows(out)[1]["heldout_loss"])
    assert not (tmp_path / "store" / "tiny-next" / "round-0000").exists()  # no seeded init
    assert _manifest(tmp_path / "store" / "tiny-next" / "round-0001" /
                     "global.safetensors")["base_digest"] == ref["digest"]
