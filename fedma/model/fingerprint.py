"""Backbone fingerprints: a sha256 over the frozen weights' files, so silos prove they share them.

Federated averaging of projectors is meaningful only if every silo maps into the *same* LLM
embedding space from the *same* vision features. A silo with a different checkpoint (another
revision, a fine-tuned copy, a corrupted download) would train a projector for a different
model and quietly poison the average; the fingerprint makes that a refusal instead.

It is computed from the files, before anything is loaded: under ZeRO-3 the weights go
straight into partitions and no rank ever holds them whole, and a silo loading them in
bfloat16 and one loading them in float32 hold different values of the same checkpoint. For a
folder of safetensors files the hash covers every tensor's name, dtype, shape and bytes in
name order across all files (so re-sharding a checkpoint does not change it), read one tensor
at a time; a GGUF file is hashed as bytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def fingerprint_weights(path: str | Path, gguf_file: str | None = None) -> str:
    """sha256 of the weights under ``path`` (a folder of ``*.safetensors``, or ``gguf_file``
    in it)."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"backbone folder {folder} does not exist")
    if gguf_file:
        return _file_sha256(folder / gguf_file)
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights to fingerprint (fedma "
                                "loads safetensors only: a pytorch_model.bin is a pickle)")
    where: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                if name in where:
                    raise ValueError(f"{f}: tensor {name!r} is also in {where[name]}")
                where[name] = f
    h = hashlib.sha256()
    handles: dict[Path, object] = {}
    try:
        for name in sorted(where):
            f = where[name]
            if f not in handles:
                handles[f] = safe_open(str(f), framework="pt").__enter__()
            t = handles[f].get_tensor(name).contiguous()  # type: ignore[attr-defined]
            h.update(f"{name}|{t.dtype!s}|{tuple(t.shape)}\n".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    finally:
        for st in handles.values():
            st.__exit__(None, None, None)  # type: ignore[attr-defined]
    return h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class FingerprintMismatch(RuntimeError):
    """A silo's backbone differs from the one the round expects."""
