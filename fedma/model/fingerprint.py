"""Backbone fingerprints: a sha256 over the frozen weights, so silos prove they share them.

Federated averaging of projectors is meaningful only if every silo maps into the *same* LLM
embedding space from the *same* vision features. A silo with a different checkpoint (another
revision, a fine-tuned copy, a corrupted download) would train a projector for a different
model and quietly poison the average; the fingerprint makes that a refusal instead.

The hash covers parameter and buffer names, dtypes, shapes and values in name order, so it is
independent of the file format the weights were loaded from.
"""

from __future__ import annotations

import hashlib

import torch


def fingerprint(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    seen: set[int] = set()
    items = list(module.named_parameters(remove_duplicate=False)) + list(module.named_buffers())
    for name, t in sorted(items, key=lambda kv: kv[0]):
        if t.data_ptr() in seen and t.numel():
            continue  # tied weights (embeddings == lm_head) are hashed once
        seen.add(t.data_ptr())
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype!s}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class FingerprintMismatch(RuntimeError):
    """A silo's backbone differs from the one the round expects."""
