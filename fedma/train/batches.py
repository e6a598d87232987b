"""Which samples a silo trains on in a round, and how they become batches.

One-pass collaborative training (the Fed-MA setting): each sample is seen once per run. A
silo's records are shuffled once with a seed derived from the training seed and the silo name,
then cut into ``rounds_per_pass`` contiguous shards; round r trains on shard r. A training
extended past its first pass (more rounds than it started with) shuffles again for every
further pass. The split depends only on the spec, so a retried or restarted Job trains on
exactly the same samples.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from fedma.data.manifest import DataError, Record, load_image, read_manifest
from fedma.model.vision import VisionEncoder
from fedma.spec import DataSpec


def stable_seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:4], "big")


def silo_records(data: DataSpec) -> list[Record]:
    records = read_manifest(data.path)
    if data.indices is not None:
        bad = [i for i in data.indices if i >= len(records)]
        if bad:
            raise DataError(f"{data.path}: indices {bad[:5]} out of range ({len(records)} records)")
        records = [records[i] for i in data.indices]
    return records


def round_shard(n: int, seed: int, silo: str, round_index: int, rounds_per_pass: int
                ) -> list[int]:
    if n < rounds_per_pass:
        raise DataError(
            f"silo {silo!r} holds {n} samples, fewer than the {rounds_per_pass} rounds that "
            "each need a fresh shard"
        )
    passed, index = divmod(round_index - 1, rounds_per_pass)
    # The first pass keeps the seed it always had: extending a training changes no shard
    # an earlier round trained on.
    key = stable_seed(seed, silo) if passed == 0 else stable_seed(seed, silo, "pass", passed)
    perm = np.random.default_rng(key).permutation(n)
    return [int(i) for i in np.array_split(perm, rounds_per_pass)[index]]


def batches(records: Sequence[Record], vision: VisionEncoder, batch_size: int,
            manifest: str | Path) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Preprocessed pixels (on the CPU) and captions, ``batch_size`` samples per step."""
    for pixels, captions, _ in rank_batches(records, vision, batch_size, manifest):
        yield pixels, captions


def rank_batches(records: Sequence[Record], vision: VisionEncoder, batch_size: int,
                 manifest: str | Path, rank: int = 0, world: int = 1
                 ) -> Iterator[tuple[torch.Tensor, list[str], int]]:
    """``(pixels, captions, keep)`` for this rank's slice of each global batch of
    ``batch_size`` samples; the first ``keep`` samples count.

    Every rank yields one item per global batch, so every rank takes the same number of
    steps: a rank that skipped one (a short last batch with fewer samples than ranks) would
    leave the others waiting in its collectives until the NCCL timeout. A rank whose slice is
    empty gets the global batch's first sample with ``keep = 0``: it runs the forward and
    backward, and its loss contributes nothing.
    """
    for start in range(0, len(records), batch_size):
        whole = list(records[start : start + batch_size])
        chunk = whole[rank::world]
        keep = len(chunk)
        if not chunk:
            chunk = whole[:1]
        pixels = torch.stack([vision.preprocess(load_image(r, manifest)) for r in chunk])
        yield pixels, [r.caption for r in chunk], keep
