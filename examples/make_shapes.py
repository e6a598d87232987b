"""Draw a small image–caption dataset for trying fedma on "your own" data.

    python examples/make_shapes.py shapes/

writes one folder per silo (``shapes/<silo>/data.jsonl`` + ``images/``), in the format
``fedma init`` expects (docs/data.md), and a held-out set (``shapes/heldout.jsonl``, whose
lines carry ``choices``: the 9 colour × shape captions, for retrieval accuracy). Each silo
favours some colours (non-IID, as real silos are). Pillow only; deterministic for a seed.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220)}
SHAPES = ("circle", "square", "triangle")
CAPTIONS = [f"a {c} {s}" for c in COLOURS for s in SHAPES]


def draw(colour: str, shape: str, rng: random.Random, size: int = 64) -> Image.Image:
    img = Image.new("RGB", (size, size), (245, 245, 240))
    d = ImageDraw.Draw(img)
    r = rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def write_set(folder: Path, manifest: Path, n: int, rng: random.Random,
              colour_weights: list[float], choices: bool) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        colour = rng.choices(list(COLOURS), colour_weights)[0]
        shape = rng.choice(SHAPES)
        rel = folder.relative_to(manifest.parent) / "images" / f"{i:05d}.png"
        draw(colour, shape, rng).save(manifest.parent / rel)
        rec = {"image": str(rel), "caption": f"a {colour} {shape}"}
        if choices:
            rec["choices"] = CAPTIONS
        lines.append(json.dumps(rec))
    manifest.write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="folder to write (one sub-folder per silo)")
    p.add_argument("--silos", type=int, default=3)
    p.add_argument("--per-silo", type=int, default=320, help="images per silo")
    p.add_argument("--heldout", type=int, default=45, help="held-out images")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = random.Random(args.seed)
    for k in range(args.silos):
        # Silo k draws mostly colour k mod 3: label skew, as in real federations.
        weights = [4.0 if j == k % 3 else 1.0 for j in range(len(COLOURS))]
        folder = args.out / f"clinic-{chr(ord('a') + k)}"
        write_set(folder, folder / "data.jsonl", args.per_silo, rng, weights, choices=False)
    write_set(args.out / "heldout", args.out / "heldout.jsonl", args.heldout, rng,
              [1.0] * len(COLOURS), choices=True)
    print(f"wrote {args.silos} silos x {args.per_silo} images and {args.heldout} held-out "
          f"images under {args.out}")


if __name__ == "__main__":
    main()
