"""Silo data never leaves the silo's Job: after a real round, the store — the only place a
silo writes that others read — holds projector weights and their manifests, nothing else."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from tests.conftest import training_manifest, write_yaml
from tests.faults.conftest import fedma

pytestmark = pytest.mark.e2e
PROJECTOR = {"0.weight", "0.bias", "2.weight", "2.bias"}
MANIFEST_KEYS = {"kind", "round", "seed", "projector", "training", "silo", "strategy",
                 "base_digest", "requested", "included", "rejected", "report", "samples",
                 "loss", "steps", "seconds", "server_state", "file", "sha256", "bytes",
                 "tensors", "encoding", "fingerprints", "engine", "device", "precision"}


def test_after_a_round_the_store_holds_only_projector_weights_and_their_manifests(
        tmp_path, tiny_models):
    obj = training_manifest(tmp_path, tiny_models, silos=2, rounds=1)
    proc = fedma("run", str(write_yaml(tmp_path / "t.yaml", obj)), "--out",
                 str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = tmp_path / "store"
    files = [p for p in store.rglob("*") if p.is_file()]
    assert files
    captions, images = set(), []
    for silo in ("silo-1", "silo-2"):
        data = tmp_path / "data" / silo
        captions |= {json.loads(line)["caption"] for line in
                     (data / "data.jsonl").read_text().splitlines()}
        images += [p.read_bytes() for p in (data / "images").iterdir()]
    for p in files:
        raw = p.read_bytes()
        assert not any(c.encode() in raw for c in captions), f"{p}: holds a caption"
        assert b"\x89PNG" not in raw and not any(img[64:128] in raw for img in images), p
        if p.name.endswith(".safetensors"):
            with safe_open(str(p), "pt") as f:
                names = set(f.keys())
            assert names <= PROJECTOR | {"m.0.weight", "m.0.bias", "m.2.weight", "m.2.bias",
                                         "v.0.weight", "v.0.bias", "v.2.weight", "v.2.bias"}, p
        elif p.name.endswith(".manifest.json"):
            extra = set(json.loads(raw)) - MANIFEST_KEYS
            assert not extra, f"{p}: unexpected manifest fields {extra}"
        else:  # the training's spec, kept to refuse a changed resume: paths, never data
            assert p.name == "training.json", p
