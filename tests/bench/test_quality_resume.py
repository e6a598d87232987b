"""A quality run's per-seed records (bench/seeds.py): written as each seed finishes, reused by
``--resume`` only for the same configuration and code, so a run that spans sittings reports
what an uninterrupted one would."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bench import seeds

TINY = ["--rounds", "1", "--local-steps", "2", "--silos", "2", "--eval-samples", "40",
        "--warm-start-samples", "16", "--arms", "central,fedavg", "--settings", "iid",
        "--min-central", "0", "--max-noise-points", "100",
        # Two steps cannot leave the caption-template phase: the gate is tests/bench/
        # test_warm_start.py's; here it would stop every run.
        "--warm-start-max-loss", "100"]


def _run(out, *extra):
    return subprocess.run([sys.executable, "bench/quality.py", *TINY, "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=900)


@pytest.mark.e2e
def test_resume_reuses_finished_seeds_exactly_and_refuses_another_configuration(tmp_path):
    first = _run(tmp_path, "--seeds", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    record = tmp_path / "quality-seeds" / "seed-0.json"
    written = record.read_bytes()
    one = json.loads((tmp_path / "quality.json").read_text())

    second = _run(tmp_path, "--seeds", "2", "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "1 of 2 seeds already measured" in second.stdout
    assert record.read_bytes() == written  # seed 0 was not run again
    assert (tmp_path / "quality-seeds" / "seed-1.json").exists()
    two = json.loads((tmp_path / "quality.json").read_text())
    (loss,) = json.loads(written)["warm_start_loss"]  # one pass, its loss recorded
    assert two["config"]["warm_start_loss"][0] == [loss] and loss > 0
    assert two["config"]["resumed_seeds"] == [0]
    assert two["config"]["seed_wall_seconds"][0] == json.loads(written)["wall_seconds"]
    assert two["config"]["warm_start_sha256"][0] == one["config"]["warm_start_sha256"][0]
    for arm in ("central", "fedavg"):
        a, b = one["settings"]["iid"]["arms"][arm], two["settings"]["iid"]["arms"][arm]
        assert b["retrieval_accuracy"][0] == a["retrieval_accuracy"][0]
        assert b["candidate_nll"][0] == a["candidate_nll"][0]
        assert len(b["candidate_nll"]) == 2

    # Another configuration is refused by name, before any model is loaded.
    third = _run(tmp_path, "--seeds", "2", "--resume", "--rounds", "2")
    assert third.returncode != 0
    assert "rounds (record 1, this run 2)" in third.stderr
    assert record.read_bytes() == written

    # A warm start that stays in the caption-template phase stops the run before its arms,
    # naming the seed and the loss; the seeds already written stay as they were.
    fourth = _run(tmp_path, "--seeds", "2", "--resume", "--warm-start-max-loss", "0.001",
                  "--warm-start-max-passes", "2", "--out", str(tmp_path / "gated"))
    assert fourth.returncode == 1, fourth.stderr[-3000:]
    assert "seed 0: after 2 warm-start passes over 16 images" in fourth.stderr
    assert "--warm-start-max-loss 0.001" in fourth.stderr and "seeds none" in fourth.stderr
    assert not (tmp_path / "gated" / "quality.json").exists()
    assert record.read_bytes() == written


def _record(tmp_path, key, code):
    s = seeds.encode_scores(np.array([1.0, 0.0]), np.array([0.25, 1e-9], dtype=np.float32),
                            0.5, 3.0)
    return seeds.write(tmp_path, 0, {"seed": 0, "config": key, "code_sha256": code,
                                     "commit": "abc", "scores": {"iid": {"fedavg": s}}})


def test_scores_round_trip_exactly_through_a_record(tmp_path):
    nll = np.array([0.1, 1 / 3, 1e-9, 7.25], dtype=np.float32)
    got = seeds.decode_scores(json.loads(json.dumps(
        seeds.encode_scores(np.array([1.0, 0.0, 1.0, 1.0]), nll, 0.5, 2.0))))
    assert got[1].dtype == np.float32 and np.array_equal(got[1], nll)
    assert np.array_equal(got[0], [1.0, 0.0, 1.0, 1.0]) and got[2:] == (0.5, 2.0)


def test_a_record_from_other_code_or_unreadable_is_refused_with_its_path(tmp_path):
    key = seeds.config_key({"seeds": 2, "rounds": 1, "arms": ("fedavg",)})
    assert key == {"rounds": 1, "arms": ["fedavg"]}  # how many seeds is not part of it
    path = _record(tmp_path, key, "code-a")
    assert seeds.load(tmp_path, 0, key, "code-a")["commit"] == "abc"
    assert seeds.load(tmp_path, 1, key, "code-a") is None
    with pytest.raises(ValueError, match=r"made by other code.*commit abc"):
        seeds.load(tmp_path, 0, key, "code-b")
    with pytest.raises(ValueError, match=r"arms \(record \['fedavg'\], this run \['central'\]"):
        seeds.load(tmp_path, 0, {**key, "arms": ["central"]}, "code-a")
    path.write_text('{"seed": 0, "conf')
    with pytest.raises(ValueError, match=r"seed-0\.json: not a readable seed record"):
        seeds.load(tmp_path, 0, key, "code-a")
    assert not list(tmp_path.glob("*.tmp"))


def test_the_code_digest_covers_the_library_and_the_benchmark():
    assert len(seeds.code_sha256()) == 64
    assert (seeds.ROOT / "fedma" / "aggregate").is_dir()
    assert all((seeds.ROOT / s).exists() for s in seeds.SOURCES)
