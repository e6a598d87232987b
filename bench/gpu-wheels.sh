#!/usr/bin/env bash
# Wheels a lent GPU machine needs for bench/gpu.py and does not have (it has Python 3.12,
# torch and transformers, and no package index): DeepSpeed (built here: PyPI has only its
# sdist) and what it and fedma's silo entrypoint import, pinned by constraints.txt, for
# CPython 3.12 on x86-64 Linux. Written to bench/wheels/ (ignored by git; a few MiB, well
# inside the 64 MiB a device call carries). On the device:
#   pip install --no-index --find-links bench/wheels deepspeed accelerate typer rich fsspec \
#       prometheus-client pydantic efficientnet-lite-pytorch && python bench/gpu.py --out "$OUT"
# (transformers' HfDeepSpeedConfig, the ZeRO-3 loader, requires accelerate.)
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench/wheels
rm -rf "$out" && mkdir -p "$out"
pin() { grep -i "^$1==" constraints.txt || { echo "$1: not pinned in constraints.txt" >&2; exit 1; }; }
DS_BUILD_OPS=0 .venv/bin/pip wheel -q --no-deps "$(pin deepspeed)" -w "$out"
pkgs=(einops hjson msgpack ninja psutil py-cpuinfo pydantic pydantic_core annotated-types
      typing-inspection typing_extensions fsspec prometheus-client efficientnet-lite-pytorch
      packaging accelerate typer rich shellingham annotated-doc click markdown-it-py mdurl pygments)
.venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 --platform any -d "$out" \
  $(for p in "${pkgs[@]}"; do pin "$p"; done)
du -sh "$out"
