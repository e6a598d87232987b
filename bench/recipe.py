"""The local learning rate, chosen on centralized training over seeds no table reports.

The quality benchmark's checks need central training to align (≥ 60 % retrieval) on *every*
seed it reports. The rate it shipped with (5·10⁻³) was chosen on seed 0 alone, and the full
5-seed run then failed on seed 3: central reached 33.7 % there, its warm start ended at a
caption loss of 6.3 nats a token (seed 0's: 1.4) and its training loss spiked from 0.8 to 3.9
half-way through the pass (docs/quality.md). A rate is a property of the recipe, not of a
seed, so it is chosen here on ``RECIPE_SEEDS`` — each with its own split, held-out set, warm
start and projector, none ever reported (``bench/quality.py`` refuses seeds from
``TUNING_SEED`` on) — by the rule the checks need: the rate whose *worst* seed's central
retrieval is highest (ties: the higher median).

Each point runs what ``bench/quality.py`` runs for its ``central`` arm — one optimiser over the
pool in batches of 8, scored on the seed's 1,000 held-out images in float32 — from a warm start
of *one* pass at that rate (the sweep predates the benchmark's warm-start bound,
:meth:`Bench.warm_start`; it records the loss that bound would have seen).

    python bench/recipe.py --out bench/results     # 12 points, 2,384 s on 2 cores (2026-12-08)

Writes ``<out>/recipe.json``: every point's warm-start loss, central retrieval, candidate NLL,
held-out caption loss and seconds, and the choice.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.quality import TUNING_SEED, Bench, Config, bundled_model, load_data

# Never reported: bench/quality.py refuses every seed from TUNING_SEED on.
RECIPE_SEEDS = (TUNING_SEED + 1, TUNING_SEED + 2, TUNING_SEED + 3, TUNING_SEED + 4)
RATES = (2e-3, 3e-3, 5e-3)


def choose(results: list[dict[str, Any]]) -> float:
    """The rate whose worst seed's central retrieval is highest; ties by the median."""
    by_rate: dict[float, list[float]] = {}
    for r in results:
        by_rate.setdefault(r["learning_rate"], []).append(r["retrieval_accuracy"])
    return max(by_rate, key=lambda lr: (min(by_rate[lr]), statistics.median(by_rate[lr])))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=Config.threads)
    p.add_argument("--rates", default=",".join(f"{r:g}" for r in RATES))
    p.add_argument("--seeds", default=",".join(map(str, RECIPE_SEEDS)))
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    a = p.parse_args(argv)
    rates = [float(x) for x in a.rates.split(",")]
    seed_list = [int(x) for x in a.seeds.split(",")]
    if any(s < TUNING_SEED for s in seed_list):
        p.error(f"--seeds: the recipe is chosen on seeds ≥ {TUNING_SEED}, which no table "
                "reports")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(a.threads)
    from fedma.model.projector import projector_state

    t_start = time.perf_counter()
    _, model = bundled_model()
    data = load_data(model)
    results: list[dict[str, Any]] = []
    total = len(rates) * len(seed_list)
    for lr in rates:
        cfg = Config(settings=("iid",), threads=a.threads, learning_rate=lr)
        bench = Bench(cfg, model, data)
        for seed in seed_list:
            t0 = time.perf_counter()
            split = bench.split(seed)
            init = projector_state(bench.fresh_projector(seed))
            steps = bench.batches(split.warm, 0, len(split.warm) // cfg.batch_size)
            (start, warm_loss), = bench.train([init], [steps])
            warmed = bench.score(start, split.warm, "warm start")
            scores, _ = bench.run_arm("central", seed, "", split, start, lambda n: None)
            results.append({"learning_rate": lr, "seed": seed,
                            "warm_start_train_loss": round(warm_loss, 4),
                            # After the pass, on its own images: how far past the template.
                            "warm_start_loss": warmed.heldout_loss,
                            "warm_start_retrieval": float(warmed.correct.mean()),
                            "retrieval_accuracy": float(scores.correct.mean()),
                            "candidate_nll": float(scores.candidate_nll.mean()),
                            "heldout_loss": scores.heldout_loss,
                            "seconds": round(time.perf_counter() - t0, 1)})
            print(f"[{len(results)}/{total}] lr {lr:g} seed {seed}: warm-start loss "
                  f"{warmed.heldout_loss:.3f} (retrieval {warmed.correct.mean():.1%}), central "
                  f"retrieval {scores.correct.mean():.1%}, candidate NLL "
                  f"{scores.candidate_nll.mean():.3f} ({time.perf_counter() - t_start:.0f} s in)",
                  flush=True)
    chosen = choose(results)
    cfg = Config()
    out = {"seeds": seed_list, "rates": rates, "arm": "central",
           "rule": "highest worst-seed central retrieval (ties: median)",
           "config": {k: v for k, v in vars(cfg).items()
                      if k in ("rounds", "local_steps", "batch_size", "warmup_steps", "silos",
                               "warm_start_samples", "eval_samples", "bf16")},
           "results": results, "chosen": chosen,
           "chosen_at_grid_edge": chosen in (min(rates), max(rates)),
           "wall_seconds": round(time.perf_counter() - t_start, 1),
           "command": "python bench/recipe.py " + " ".join(sys.argv[1:] if argv is None
                                                           else argv)}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "recipe.json").write_text(json.dumps(out, indent=1))
    for lr in rates:
        got = [r["retrieval_accuracy"] for r in results if r["learning_rate"] == lr]
        print(f"lr {lr:g}: central retrieval per seed "
              + ", ".join(f"{100 * x:.1f}" for x in got)
              + f" % (worst {100 * min(got):.1f})")
    print(f"chosen: {chosen:g}; wall {out['wall_seconds']:.0f} s; wrote {a.out / 'recipe.json'}")
    if out["chosen_at_grid_edge"]:
        print("WARNING: the chosen rate is at the edge of the grid", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
