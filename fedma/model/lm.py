"""The frozen causal LM: a Hugging Face folder, or a GGUF file read through transformers."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def load_language_model(path: str, gguf_file: str | None = None,
                        dtype: torch.dtype = torch.float32):
    """Returns ``(model, tokenizer)`` from local files only, the weights in ``dtype``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not Path(path).is_dir():
        raise FileNotFoundError(f"language model folder {path} does not exist")
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tok = AutoTokenizer.from_pretrained(path, **kwargs)
    # Weights from safetensors (or GGUF) only: a pytorch_model.bin is a pickle, and is refused.
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, **(kwargs or {"use_safetensors": True}))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


def convert_gguf(src_dir: str, gguf_file: str, out_dir: str) -> Path:
    """Dequantise a GGUF LM once into a safetensors folder (reloads in well under a second,
    where reading the GGUF costs tens of seconds every time)."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    # transformers draws its conversion bar whatever stderr is; off a terminal (a log, a pipe,
    # CI) that is hundreds of carriage-return frames. tqdm's own rule: a bar only on a TTY.
    bar = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(bar, disable=None)
    try:
        model, tok = load_language_model(src_dir, gguf_file)
    finally:
        gguf_utils.tqdm = bar
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_model_name_or_path", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    tied = bool(cfg.get("tie_word_embeddings"))
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not (tied and k == "lm_head.weight")}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(out)
    return out
