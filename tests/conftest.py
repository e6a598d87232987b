"""Shared fixtures: tiny real Hugging Face models built offline, tiny image–caption silos.

The tiny CLIP vision tower and Llama LM are real transformers architectures with random
weights (no hub access here); the WordLevel tokenizer is built with ``tokenizers``. They
exercise exactly the loading, freezing, forward and artifact code the bundled backbones use.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = [
    "a", "the", "number", "of", "shape", "red", "green", "blue", "circle", "square", "bright",
    "dark", "small", "large", "zero", "one", "two", "three", "four", "five", "six", "seven",
    "eight", "nine", ":", ",", ".",
]


def _tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   eos_token="<eos>")
    fast.save_pretrained(folder)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Any]:
    return build_tiny_models(tmp_path_factory.mktemp("models"))


def build_tiny_models(root: Path) -> dict[str, Any]:
    """Writes the tiny vision tower and LM under ``root``; returns their paths and
    fingerprints (also used by bench/soak.py)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from fedma.model.fingerprint import fingerprint_weights

    torch.manual_seed(0)
    vision = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=32, patch_size=8))
    vision.save_pretrained(root / "vision")
    lm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(WORDS) + 3, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=0, eos_token_id=2, bos_token_id=2, tie_word_embeddings=False))
    lm.save_pretrained(root / "lm")
    _tokenizer(root / "lm")
    return {"vision": root / "vision", "lm": root / "lm",
            "vision_fp": fingerprint_weights(root / "vision"),
            "lm_fp": fingerprint_weights(root / "lm")}


def make_silo_data(folder: Path, n: int, seed: int = 0, choices: bool = False) -> Path:
    """n small RGB images whose caption names the shape's colour and digit."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    digits = ["zero", "one", "two", "three"]
    lines = []
    for i in range(n):
        cname = list(colours)[int(rng.integers(3))]
        d = int(rng.integers(4))
        arr = np.full((32, 32, 3), 10 * d, dtype=np.uint8)
        arr[8:24, 8:24] = colours[cname]
        Image.fromarray(arr).save(folder / "images" / f"{i:04d}.png")
        cap = f"a {cname} square : the number {digits[d]}"
        row: dict[str, Any] = {"image": f"images/{i:04d}.png", "caption": cap, "label": d}
        if choices:
            row["choices"] = [f"a {cname} square : the number {w}" for w in digits]
        lines.append(json.dumps(row))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "data.jsonl"


def training_manifest(root: Path, tiny: dict[str, Any], silos: int = 2, rounds: int = 2,
                      n: int = 24, store_uri: str | None = None, **training: Any) -> dict:
    silo_specs = []
    for s in range(silos):
        path = make_silo_data(root / "data" / f"silo-{s + 1}", n, seed=s + 1)
        silo_specs.append({"name": f"silo-{s + 1}", "data": {"path": str(path)}})
    eval_path = make_silo_data(root / "data" / "eval", 16, seed=99, choices=True)
    return {
        "apiVersion": "fedma.io/v1alpha1",
        "kind": "FederatedTraining",
        "metadata": {"name": "tiny"},
        "spec": {
            "rounds": rounds,
            "model": {
                "vision": {"kind": "hf", "path": str(tiny["vision"]), "imageSize": 32,
                           "fingerprint": tiny["vision_fp"]},
                "languageModel": {"path": str(tiny["lm"]), "fingerprint": tiny["lm_fp"]},
                "projector": {"type": "mlp2x_gelu"},
            },
            "silos": silo_specs,
            "training": {"batchSize": 4, "learningRate": 1e-2, "threads": 1, **training},
            "aggregation": {"strategy": "fedavg", "deadlineSeconds": 600},
            "artifacts": {"uri": store_uri or f"file://{root / 'store'}"},
            "evaluation": {"data": {"path": str(eval_path)}, "maxSamples": 16, "batchSize": 8},
        },
    }


def write_yaml(path: Path, obj: dict) -> Path:
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def s3():
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="test", aws_secret_access_key="test").create_bucket(
        Bucket="fedma")
    yield endpoint
    server.stop()


@pytest.fixture
def s3_env(s3, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3
