"""DeepSpeed ZeRO-3 on CPU: frozen-backbone bytes each rank holds, 1 rank against 2.

Runs the silo Job entrypoint (``fedma train-silo``) for real with the bundled backbones
(EfficientNet-Lite0 and SmolLM2-135M) and ``engine: deepspeed, zeroStage: 3``, once as one
process and once under ``torchrun --nproc_per_node 2`` (gloo). Each rank reports the elements
of the frozen towers it holds (``param.ds_tensor``, what ZeRO-3 leaves resident between
gathers), the summary carries them, and they are turned into bytes at the towers' dtype.

    python bench/zero.py [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(work: Path, nproc: int) -> dict:
    from fedma.data.demo import build_demo_data
    from fedma.local.demo import demo_manifest
    from fedma.model.bundled import efficientnet_lite0, smollm2_135m
    from fedma.spec import dump, parse, round_spec

    paths = build_demo_data(work / "data", n_silos=1, n_train=64, n_eval=16)
    m = demo_manifest(work, {"silo-1": paths["silo-1"]}, paths["eval"], efficientnet_lite0(),
                      smollm2_135m(), rounds=1, batch_size=8, learning_rate=5e-3)
    m["spec"]["training"].update(engine="deepspeed", deepspeed={"zeroStage": 3},
                                 maxStepsPerRound=2)
    rnd = round_spec(parse(m), 1, None)
    round_file = work / "round.json"
    round_file.write_text(json.dumps(dump(rnd)))
    term = work / f"term-{nproc}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
           "PYTHONPATH": str(ROOT)}
    args = ["-m", "fedma.cli", "train-silo", "--round", str(round_file), "--silo", "silo-1",
            "--termination-log", str(term)]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port()), *args] if nproc > 1 else [sys.executable, *args])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"train-silo on {nproc} rank(s) failed:\n{proc.stderr[-3000:]}")
    out = json.loads(term.read_text())["zero"]
    out["seconds"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench/results")
    args = p.parse_args(argv)
    bytes_per = 4  # the towers load in float32 on CPU
    res = {}
    for n in (1, 2):
        with tempfile.TemporaryDirectory(prefix="fedma-bench-zero-") as work:
            res[n] = run(Path(work), n)
        print(f"{n} rank(s): frozen elements per rank {res[n]['frozen_elements_per_rank']} "
              f"of {res[n]['frozen_elements_total']}")
    one = res[1]["frozen_elements_per_rank"][0] * bytes_per
    two = max(res[2]["frozen_elements_per_rank"]) * bytes_per
    results = [{"metric": "zero3.frozen_bytes_per_rank_2_ranks", "ours": two, "reference": one,
                "reference_is": "baseline", "ratio": two / one, "target": None,
                "better": "lower"}]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "zero.json").write_text(json.dumps(results, indent=1) + "\n")
    (Path(args.out) / "zero-detail.json").write_text(json.dumps(res, indent=1) + "\n")
    print(f"| ranks | frozen bytes per rank | × one rank |\n|---|---|---|\n"
          f"| 1 | {one / 2**20:.1f} MiB | 1.00 |\n| 2 | {two / 2**20:.1f} MiB | {two / one:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
