"""Server hyperparameters tuned once, on a seed the quality benchmark never reports.

The adaptive server optimisers' step η (``server_lr``) sets how far the global projector
moves per weight and round whatever the size of the silos' deltas (m/√v is about ±1), so a
default that is wrong for the model's scale is wrong by orders of magnitude: at η = 0.1 FedAdam
and FedYogi moved weights of size ≈ 0.03 by ≈ 0.1 a round and were the worst arms of the
quality benchmark. Here each one runs the headline recipe (``bench/quality.py``'s defaults,
Dirichlet setting) on ``TUNING_SEED`` — its own split, held-out set, warm start and projector,
never among the seeds a table reports — over a grid of η, and the value with the lowest mean
candidate NLL (the benchmark's primary endpoint) is chosen. The chosen values are the
product's defaults (``fedma/aggregate/fedadaptive.py``), which the quality benchmark then runs
as "the product's defaults"; ``tests/bench/test_tuning.py`` checks the two agree.

    python bench/tune.py --out bench/results     # about 45 min on 2 cores without AMX

Writes ``<out>/tuning.json``: every candidate's retrieval, candidate NLL and seconds, FedAvg's
on the same seed for reference, and the choice per strategy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.quality import TUNING_SEED, Arm, Bench, Config, bundled_model, digest, load_data

# η from the old default down by 300×: with τ = 10⁻³ below the deltas' size, η is about the
# per-weight step of a round.
GRID: dict[str, dict[str, list[float]]] = {
    "fedadam": {"server_lr": [0.1, 0.01, 0.003, 0.001, 0.0003]},
    "fedyogi": {"server_lr": [0.1, 0.01, 0.003, 0.001, 0.0003]},
    "fedadagrad": {"server_lr": [0.1, 0.01, 0.003, 0.001, 0.0003]},
}


def candidates() -> list[tuple[str, str, dict[str, float]]]:
    """(label, strategy, options) for every point of the grid."""
    out = []
    for strategy, grid in GRID.items():
        ((option, values),) = grid.items()
        out += [(f"{strategy} {option}={v:g}", strategy, {option: v}) for v in values]
    return out


def choose(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per strategy, the options of its candidate with the lowest mean candidate NLL."""
    best: dict[str, tuple[float, dict[str, float]]] = {}
    for r in results.values():
        if r["strategy"] == "fedavg":
            continue
        if r["strategy"] not in best or r["candidate_nll"] < best[r["strategy"]][0]:
            best[r["strategy"]] = (r["candidate_nll"], r["options"])
    return {s: opts for s, (_, opts) in best.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=Config.threads)
    p.add_argument("--eval-samples", type=int, default=Config.eval_samples)
    p.add_argument("--rounds", type=int, default=Config.rounds)
    p.add_argument("--local-steps", type=int, default=Config.local_steps)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = Config(settings=("dirichlet",), threads=a.threads, eval_samples=a.eval_samples,
                 rounds=a.rounds, local_steps=a.local_steps)
    torch.set_num_threads(cfg.threads)
    from fedma.model.projector import projector_state

    t_start = time.perf_counter()
    _, model = bundled_model()
    data = load_data(model)
    bench = Bench(cfg, model, data)
    split = bench.split(TUNING_SEED)
    init = projector_state(bench.fresh_projector(TUNING_SEED))
    start, warm_loss = bench.warm_start(init, split, TUNING_SEED)
    warm = digest(start)
    runs = [("fedavg", "fedavg", {}), *candidates()]
    results: dict[str, dict[str, Any]] = {}
    for i, (label, strategy, options) in enumerate(runs, 1):
        if digest(start) != warm:
            raise SystemExit(f"the warm start changed before {label}")
        scores, seconds = bench.run_arm(label, TUNING_SEED, "dirichlet", split, start,
                                        lambda n: None, arm=Arm(strategy, options))
        results[label] = {"strategy": strategy, "options": options,
                          "retrieval_accuracy": float(scores.correct.mean()),
                          "candidate_nll": float(scores.candidate_nll.mean()),
                          "seconds": round(seconds, 1)}
        print(f"[{i}/{len(runs)}] {label}: retrieval {scores.correct.mean():.1%}, candidate "
              f"NLL {scores.candidate_nll.mean():.3f} ({time.perf_counter() - t_start:.0f} s "
              "in)", flush=True)
    chosen = choose(results)
    # A choice at the end of its grid is not a tuned value: say so (the grid should grow).
    at_edge = sorted(s for s, opts in chosen.items()
                     if any(v in (min(GRID[s][k]), max(GRID[s][k])) for k, v in opts.items()))
    out = {"seed": TUNING_SEED, "setting": "dirichlet", "endpoint": "candidate_nll",
           "warm_start_loss": warm_loss,
           "config": {k: v for k, v in vars(cfg).items() if k not in ("arms", "options")},
           "grid": GRID, "results": results, "chosen": chosen, "chosen_at_grid_edge": at_edge,
           "wall_seconds": round(time.perf_counter() - t_start, 1),
           "command": "python bench/tune.py " + " ".join(sys.argv[1:] if argv is None
                                                         else argv)}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "tuning.json").write_text(json.dumps(out, indent=1))
    for strategy, opts in chosen.items():
        print(f"{strategy}: {opts}")
    print(f"wall {out['wall_seconds']:.0f} s; wrote {a.out / 'tuning.json'}")
    for strategy in at_edge:
        print(f"WARNING: {strategy}'s choice is at the edge of its grid", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
