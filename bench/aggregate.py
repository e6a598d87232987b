"""Aggregation benchmark: every strategy on LLaVA-1.5 projector shapes, against the memory-
bandwidth bound measured in the same run.

What is timed is what the aggregation Job runs: ``strategy.aggregate`` over K silo updates that
are safetensors files memory-mapped from a local directory (fedma.aggregate.mapped), warm in
the page cache, as after the Job's verified copy. Digest checking (sha256 of every byte) is a
separate row: it is CPU-bound, not part of a strategy.

The bound: a strategy must read K updates and the global projector and write one projector,
(K + 2) × model bytes, and this machine's copy bandwidth (measured here: bytes read plus
written by a large tensor copy, per second) is the fastest that traffic can go. FedAvg's
target is 1.5× that bound; Fed-CMP's is 3× FedAvg's time. Memory is the peak of the
process's anonymous resident memory above its level before the call (file-backed pages of the
mapped updates are page cache, not the process's); O(model) means a few model sizes whatever K.

    python bench/aggregate.py [--ks 4,16,64] [--shapes 7b,13b] [--out bench/results]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SHAPES = {"7b": (1024, 4096, 4096), "13b": (1024, 5120, 5120)}  # LLaVA-1.5 mlp2x_gelu
STRATEGIES = ("fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "fedcmp",
              "fedcmp-snapshots")
# A row name beyond a strategy's own: the strategy with these options.
VARIANTS = {"fedcmp-snapshots": ("fedcmp", {"snapshots": 1})}


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


class PeakMemory:
    """Samples anonymous RSS every 2 ms on a thread; torch allocations bypass tracemalloc."""

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = rss_anon()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_anon())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon())

    @property
    def extra(self) -> int:
        return self.peak - self.start


def copy_bandwidth(nbytes: int = 1 << 29, repeats: int = 5) -> float:
    """Bytes moved (read + written) per second by a large tensor copy: the machine's limit."""
    import torch

    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def projector(shape: tuple[int, int, int], gen: Any) -> dict[str, Any]:
    import torch

    i, h, o = shape
    return {"0.weight": torch.randn(h, i, generator=gen) * 0.02, "0.bias": torch.zeros(h),
            "2.weight": torch.randn(o, h, generator=gen) * 0.02, "2.bias": torch.zeros(o)}


def write_updates(work: Path, base: dict[str, Any], k: int, gen: Any) -> list[Path]:
    """K silo updates near ``base`` as safetensors files, as the Job's verified copies."""
    import torch
    from safetensors.torch import save_file

    files = []
    for i in range(k):
        path = work / f"silo-{i:03d}.safetensors"
        save_file({n: t + 1e-3 * torch.randn(t.shape, generator=gen) for n, t in base.items()},
                  path)
        files.append(path)
    return files


def first_touch_seconds(base: dict[str, Any], repeats: int = 5) -> float:
    """What a fresh model-sized output costs before a byte of it is computed: the kernel maps
    and zeroes every page on first write. Timed as filling fresh tensors minus filling the same
    sizes already resident (best of ``repeats`` each)."""
    import torch

    def best(fn: Any) -> float:
        b = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            b = min(b, time.perf_counter() - t0)
        return b

    warm = {k: torch.zeros_like(t) for k, t in base.items()}
    fresh = best(lambda: [torch.empty_like(t).fill_(1) for t in base.values()])
    resident = best(lambda: [t.fill_(1) for t in warm.values()])
    return max(fresh - resident, 0.0)


def worker(shape_name: str, k: int, strategies: list[str], repeats: int) -> list[dict]:
    """One (shape, K): write K updates, then time each strategy on them (best of repeats)."""
    import torch

    from fedma.aggregate import SiloUpdate, get_strategy
    from fedma.aggregate.mapped import MappedTensors

    torch.set_num_threads(torch.get_num_threads())
    gen = torch.Generator().manual_seed(0)
    base = projector(SHAPES[shape_name], gen)
    model_bytes = sum(t.numel() * 4 for t in base.values())
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedma-bench-agg-") as work:
        files = write_updates(Path(work), base, k, gen)
        t0 = time.perf_counter()
        for path in files:  # what the Job's verified copy costs per update, per byte
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(8 << 20):
                    h.update(block)
        sha_s = time.perf_counter() - t0
        updates = [SiloUpdate(f"silo-{i:03d}", MappedTensors(p), 100 + i)
                   for i, p in enumerate(files)]
        touch = first_touch_seconds(base)
        for name in strategies:
            strategy = get_strategy(*VARIANTS.get(name, (name, {})))
            best, peak = float("inf"), 0
            for _ in range(repeats):
                with PeakMemory() as mem:
                    t0 = time.perf_counter()
                    out = strategy.aggregate(base, updates, {})
                    elapsed = time.perf_counter() - t0
                best = min(best, elapsed)
                peak = max(peak, mem.extra)
                del out
            rows.append({"shape": shape_name, "k": k, "strategy": name, "seconds": best,
                         "peak_extra_bytes": peak, "model_bytes": model_bytes,
                         "sha256_seconds": sha_s, "output_first_touch_seconds": touch})
    return rows


def profile_fedcmp(shape_name: str, k: int) -> dict[str, float]:
    """Where Fed-CMP's time goes (cProfile, second call, warm): seconds by operation."""
    import cProfile
    import pstats

    import torch

    from fedma.aggregate import SiloUpdate, get_strategy
    from fedma.aggregate.mapped import MappedTensors

    gen = torch.Generator().manual_seed(0)
    base = projector(SHAPES[shape_name], gen)
    with tempfile.TemporaryDirectory(prefix="fedma-bench-agg-") as work:
        updates = [SiloUpdate(p.stem, MappedTensors(p), 100 + i)
                   for i, p in enumerate(write_updates(Path(work), base, k, gen))]
        strategy = get_strategy("fedcmp")
        strategy.aggregate(base, updates, {})
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        strategy.aggregate(base, updates, {})
        prof.disable()
        total = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    out: dict[str, float] = {"total": total}
    groups = {"skinny GEMMs of the randomized SVD (addmm)": ("addmm", "addmm_"),
              "blocked mean and energy pass (add_, sub, dot)": ("add_", "sub", "dot"),
              "small dense algebra (qr, eigh, einsum, matmul)": ("qr", "eigh", "einsum",
                                                                 "matmul")}
    for label, names in groups.items():
        out[label] = sum(v[2] for (_, _, fn), v in stats.items()
                         if any(fn == n or fn.endswith(f"'{n}'") or fn.endswith(f".{n}>")
                                or fn == f"<built-in method torch.{n}>"
                                or fn == f"<method '{n}' of 'torch._C.TensorBase' objects>"
                                for n in names))
    out["everything else"] = total - sum(v for k2, v in out.items() if k2 != "total")
    return out


def run_worker(shape: str, k: int, strategies: list[str], repeats: int) -> list[dict]:
    cmd = [sys.executable, __file__, "--worker", f"{shape}:{k}", "--strategies",
           ",".join(strategies), "--repeats", str(repeats)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"worker {shape} K={k} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ks", default="4,16,64")
    p.add_argument("--shapes", default="7b,13b")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="bench/results")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    strategies = args.strategies.split(",")
    if args.worker:
        shape, k = args.worker.split(":")
        if args.strategies == "profile":
            print(json.dumps(profile_fedcmp(shape, int(k))))
        else:
            print(json.dumps(worker(shape, int(k), strategies, args.repeats)))
        return 0

    bw = copy_bandwidth()
    print(f"copy bandwidth (read + write of a 512 MiB tensor copy): {bw / 1e9:.2f} GB/s")
    rows: list[dict] = []
    for shape in args.shapes.split(","):
        for k in (int(x) for x in args.ks.split(",")):
            t0 = time.perf_counter()
            got = run_worker(shape, k, strategies, args.repeats)
            print(f"  {shape} K={k}: {len(got)} strategies in {time.perf_counter() - t0:.0f} s")
            rows += got
    profile = json.loads(subprocess.run(
        [sys.executable, __file__, "--worker", "7b:16", "--strategies", "profile"],
        capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    print("fedcmp 7b K=16 profile: " + ", ".join(f"{k} {v:.2f} s" for k, v in profile.items()))
    results, table = summarise(rows, bw)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "aggregate.json").write_text(json.dumps(results, indent=1) + "\n")
    (Path(args.out) / "aggregate-detail.json").write_text(json.dumps(
        {"copy_bandwidth_bytes_per_s": bw, "runs": rows, "fedcmp_profile_7b_k16": profile},
        indent=1) + "\n")
    print(table)
    return 0


def summarise(rows: list[dict], bw: float) -> tuple[list[dict], str]:
    results: list[dict] = []
    lines = ["| shape | K | strategy | seconds | bound s | × bound | × FedAvg | peak extra "
             "memory | × model |", "|---|---|---|---|---|---|---|---|---|"]
    fedavg = {(r["shape"], r["k"]): r["seconds"] for r in rows if r["strategy"] == "fedavg"}
    for r in rows:
        bound = (r["k"] + 2) * r["model_bytes"] / bw
        key = f'{r["strategy"]}.{r["shape"]}.k{r["k"]}'
        x_bound = r["seconds"] / bound
        x_avg = r["seconds"] / fedavg[(r["shape"], r["k"])]
        mem = r["peak_extra_bytes"] / r["model_bytes"]
        lines.append(f'| {r["shape"]} | {r["k"]} | {r["strategy"]} | {r["seconds"]:.3f} | '
                     f'{bound:.3f} | {x_bound:.2f} | {x_avg:.2f} | '
                     f'{r["peak_extra_bytes"] / 2**20:.0f} MiB | {mem:.1f} |')
        if r["strategy"] == "fedavg":
            results.append({"metric": f"{key}.seconds", "ours": r["seconds"],
                            "reference": bound, "reference_is": "bound", "ratio": x_bound,
                            "target": 1.5, "better": "lower"})
        else:
            results.append({"metric": f"{key}.seconds", "ours": r["seconds"],
                            "reference": fedavg[(r["shape"], r["k"])],
                            "reference_is": "baseline", "ratio": x_avg,
                            "target": 3.0 if r["strategy"].startswith("fedcmp") else None,
                            "better": "lower"})
        results.append({"metric": f"{key}.peak_extra_memory_bytes", "ours": r["peak_extra_bytes"],
                        "reference": r["model_bytes"], "reference_is": "baseline",
                        "ratio": mem, "target": None, "better": "lower"})
    sha = {(r["shape"], r["k"]): r["sha256_seconds"] for r in rows}
    for (shape, k), s in sha.items():
        mb = next(r["model_bytes"] for r in rows if r["shape"] == shape)
        results.append({"metric": f"sha256.{shape}.k{k}.seconds", "ours": s,
                        "reference": k * mb / bw, "reference_is": "bound",
                        "ratio": s / (k * mb / bw), "target": None, "better": "lower"})
    return results, "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
