"""The fast tier over the heterogeneity × silo-count grid: where does a strategy differ from FedAvg?

Each cell is one ``bench/quality.py --tier fast`` run (its own seeds, paired statistics and
noise control) with the pool held at the headline's 2,048 images: K silos of 2,048 / K images,
8 rounds of 32 / K local steps of batch 8, so every cell trains on the same samples for the same
number of rounds and only how they are split changes. Settings: Dirichlet label skew at each α,
and IID (run once per K, with the first α). A finding here is a lead for the headline tier,
not a claim (docs/quality.md).

    python bench/sweep.py --out bench/results      # writes sweep.json and the cells' results

Prints, per cell, each arm's paired Δ candidate NLL against FedAvg with its t interval and
verdict.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import quality

POOL_STEPS = 32  # K × local steps per round, so K × 8 rounds × steps × batch 8 = 2,048


def cell_args(k: int, alpha: float, settings: str, seeds: int, out: Path) -> list[str]:
    if POOL_STEPS % k:
        raise SystemExit(f"--silos: {k} does not divide the pool's {POOL_STEPS} steps a round")
    return ["--tier", "fast", "--seeds", str(seeds), "--silos", str(k), "--local-steps",
            str(POOL_STEPS // k), "--alpha", str(alpha), "--settings", settings, "--out",
            str(out)]


def rows(result: dict[str, Any], k: int, label: str) -> list[dict[str, Any]]:
    out = []
    for setting, s in result["settings"].items():
        name = label if setting == "dirichlet" else "IID"
        for arm, p in s["paired_vs_fedavg"].items():
            c = p["candidate_nll"]
            out.append({"silos": k, "setting": name, "arm": arm,
                        "delta_candidate_nll": c["mean_difference"],
                        "t_interval": c["t_interval"], "verdict": c["verdict"],
                        "fedavg_retrieval": sum(s["arms"]["fedavg"]["retrieval_accuracy"])
                        / len(s["arms"]["fedavg"]["retrieval_accuracy"])})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--silos", default="2,4,8")
    p.add_argument("--alphas", default="0.1,1.0")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    a = p.parse_args(argv)
    t0 = time.perf_counter()
    table: list[dict[str, Any]] = []
    failed: list[str] = []
    for k in (int(x) for x in a.silos.split(",")):
        for i, alpha in enumerate(float(x) for x in a.alphas.split(",")):
            out = a.out / "sweep" / f"k{k}-alpha{alpha:g}"
            code = quality.main(cell_args(k, alpha, "dirichlet,iid" if i == 0 else "dirichlet",
                                          a.seeds, out))
            result = json.loads((out / "quality-fast.json").read_text())
            table += rows(result, k, f"Dirichlet α={alpha:g}")
            if code:
                failed += [f"K={k}, α={alpha:g}: {r}" for r in result["checks_failed"]]
    summary = {"cells": table, "checks_failed": failed, "seeds": a.seeds,
               "wall_seconds": round(time.perf_counter() - t0, 1),
               "command": "python bench/sweep.py " + " ".join(sys.argv[1:] if argv is None
                                                          else argv)}
    (a.out / "sweep.json").write_text(json.dumps(summary, indent=1))
    print("\n| K | setting | arm | Δ candidate NLL vs FedAvg [t 95 %] | verdict |")
    print("|---|---|---|---|---|")
    for r in table:
        lo, hi = r["t_interval"]
        print(f"| {r['silos']} | {r['setting']} | {r['arm']} | {r['delta_candidate_nll']:+.3f} "
              f"[{lo:+.3f}, {hi:+.3f}] | {r['verdict']} |")
    print(f"\nwall {summary['wall_seconds']:.0f} s; wrote {a.out / 'sweep.json'}")
    for reason in failed:
        print(f"FAILED: {reason}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
