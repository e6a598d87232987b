"""Load: several FederatedTrainings of 100 silos each, at once, through one operator.

The operator runs for real (kopf, kubernetes_asyncio) in this process, alone; the API server
(kmock, with the counting emulator of bench/operator.py) and the Job controller of
tests/operator run in a child process, so this process's memory is the operator's. The
controller finishes every Job it sees (every 100 ms) with a valid termination message; the
trainings chain their rounds through the operator as in production.

Checked, and the run fails (exit 1) if any does not hold:
- every round of every training completes (each training Succeeded with all its rounds);
- no Job is lost or duplicated: exactly trainings × rounds × (silos + 1) Jobs exist, each
  attempt 1, each name created once (no create answered 409);
- the operator's memory stays flat: each time a round completes, the Python heap the
  operator holds (tracemalloc's traced size: every object it retains) and its resident set
  (after malloc_trim) are sampled; the heap's growth from the first completed round to the
  last must stay under --max-growth-mib. The resident set is reported beside it: it also
  counts what the allocators keep after objects are freed, which grows with the size of the
  largest responses parsed (the Job watch's lists grow with the Jobs in the cluster).

    python bench/load.py [--trainings 3] [--silos 100] [--rounds 5] [--out bench/results]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mib() -> float:
    """Resident set after handing freed heap back to the OS (glibc's malloc_trim): what the
    process holds, not the high-water mark of transient buffers the allocator kept."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


# -- the child: API server + Job controller ----------------------------------------------------
async def serve(port_file: Path, stats_file: Path) -> None:
    import kmock

    from bench.operator import CountingEmulator
    from tests.operator.conftest import Api, JobController, declare
    from tests.operator.test_lifecycle import silo_summary

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with CountingEmulator() as k, kmock.Server(k):
        declare(k)
        ctl = JobController(Api(k))
        port_file.write_text(str(k.url))
        finished: set[str] = set()
        while not stop.is_set():
            for job in await ctl.jobs():
                name = job["metadata"]["name"]
                if name in finished or (job.get("status") or {}).get("conditions"):
                    continue
                lbl = job["metadata"]["labels"]
                training, rnd = lbl["fedma.io/training"], int(lbl["fedma.io/round"])
                if lbl["fedma.io/role"] == "silo":
                    summary = silo_summary(lbl["fedma.io/silo"], rnd)
                else:
                    summary = {"round": rnd, "status": "Succeeded", "loss": 1.0,
                               "samples": 64, "server_state": None, "rejected": {},
                               "output": {"uri": f"s3://fedma/runs/{training}/round-"
                                                 f"{rnd:04d}/global.safetensors",
                                          "digest": f"{rnd:064x}"}}
                await ctl.finish(job, True, summary)
                finished.add(name)
            await asyncio.sleep(0.1)
        by_kind = dict(CountingEmulator.by_kind)
        stats_file.write_text(json.dumps({"served": CountingEmulator.served,
                                          "by_kind": by_kind}))


# -- the parent: the operator ------------------------------------------------------------------
def training_body(name: str, silos: int, rounds: int) -> dict[str, Any]:
    from tests.operator.test_lifecycle import round_body

    spec = {k: v for k, v in round_body(silos=silos)["spec"].items()
            if k not in ("trainingName", "round", "totalRounds")}
    return {"apiVersion": "fedma.io/v1alpha1", "kind": "FederatedTraining",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {**spec, "rounds": rounds}}


class _Url:
    def __init__(self, url: str):
        self.url = url


async def drive(url: str, trainings: int, silos: int, rounds: int, interval: float,
                timeout: float, trace: bool = False) -> dict[str, Any]:
    from fedma_operator.jobs import JobSettings
    from tests.operator.conftest import Api, OperatorHandle, trainings_path

    handle = OperatorHandle(_Url(url), interval=interval,
                            settings=JobSettings(trainer_image="fedma-trainer:load"))
    api = Api(_Url(url))
    import tracemalloc

    tracemalloc.start(8 if trace else 1)
    first_snapshot = None
    await handle.start()
    names = [f"load-{i + 1}" for i in range(trainings)]
    # (rounds completed in all, operator RSS MiB, traced Python heap MiB)
    samples: list[tuple[int, float, float]] = []
    t0 = time.perf_counter()
    c0 = os.times()
    try:
        await asyncio.sleep(1.0)
        rss_start = rss_mib()
        for n in names:
            await api.create(trainings_path(), training_body(n, silos, rounds))
        done_rounds = 0
        while True:
            objs = [await api.get(f"{trainings_path()}/{n}") for n in names]
            completed = sum(int((o.get("status") or {}).get("completedRounds") or 0)
                            for o in objs)
            if completed > done_rounds:
                done_rounds = completed
                samples.append((completed, rss_mib(),
                                tracemalloc.get_traced_memory()[0] / 2**20))
                if trace and first_snapshot is None:
                    first_snapshot = tracemalloc.take_snapshot()
            phases = [(o.get("status") or {}).get("phase") for o in objs]
            if all(p in ("Succeeded", "Failed") for p in phases):
                break
            if time.perf_counter() - t0 > timeout:
                raise SystemExit(f"load: not done after {timeout:.0f} s: {phases}, "
                                 f"{completed} rounds completed")
            await asyncio.sleep(0.25)
        wall = time.perf_counter() - t0
        c1 = os.times()
        if trace and first_snapshot is not None:
            diff = tracemalloc.take_snapshot().compare_to(first_snapshot, "traceback")
            total = sum(stat.size_diff for stat in diff)
            print(f"traced Python heap growth since the first round: {total / 2**20:+.1f} MiB")
            for stat in diff[:8]:
                print(f"{stat.size_diff / 2**20:+.1f} MiB in {stat.count_diff:+d} blocks:")
                print("    " + "\n    ".join(stat.traceback.format()[-8:]))
        jobs = await api.items("/apis/batch/v1/jobs")
    finally:
        await handle.stop()
        tracemalloc.stop()
    return {"phases": phases, "completed_rounds": done_rounds, "wall_s": wall,
            "operator_cpu_s": (c1.user - c0.user) + (c1.system - c0.system),
            "rss_start_mib": rss_start, "rss_samples": samples,
            "jobs": [(j["metadata"]["name"], j["metadata"]["labels"]) for j in jobs],
            "trainings": names}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trainings", type=int, default=3)
    p.add_argument("--silos", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--max-growth-mib", type=float, default=5.0,
                   help="largest growth of the operator's Python heap that counts as flat")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--trace", action="store_true",
                   help="print where the operator's memory grew (tracemalloc; slow)")
    p.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)
    if args.serve:
        asyncio.run(serve(Path(args.serve[0]), Path(args.serve[1])))
        return 0

    import tempfile

    with tempfile.TemporaryDirectory(prefix="fedma-load-") as tmp:
        port_file, stats_file = Path(tmp) / "url", Path(tmp) / "stats.json"
        child = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file),
                                  str(stats_file)], cwd=ROOT)
        try:
            for _ in range(300):
                if port_file.exists() and port_file.read_text():
                    break
                time.sleep(0.1)
            else:
                raise SystemExit("load: the API server did not start")
            run = asyncio.run(drive(port_file.read_text().rstrip("/"), args.trainings,
                                    args.silos, args.rounds, args.interval, args.timeout,
                                    args.trace))
        finally:
            child.send_signal(signal.SIGTERM)
            child.wait(timeout=60)
        stats = json.loads(stats_file.read_text())
    return report(args, run, stats)


def report(args: argparse.Namespace, run: dict[str, Any], stats: dict[str, Any]) -> int:
    expected = {f"{t}-r{r:04d}-{s}" for t in run["trainings"] for r in range(1, args.rounds + 1)
                for s in [f"silo-{i + 1}-a1" for i in range(args.silos)] + ["aggregate"]}
    names = [n for n, _ in run["jobs"]]
    lost = sorted(expected - set(names))
    extra = sorted(set(names) - expected)
    duplicates = len(names) - len(set(names))
    creates = stats["by_kind"].get("CREATE jobs", 0)
    conflicts = creates - len(set(names))  # a create answered 409 is a second create
    rss = [m for _, m, _ in run["rss_samples"]]
    heap = [h for _, _, h in run["rss_samples"]]
    growth = heap[-1] - heap[0] if heap else float("nan")
    rss_growth = rss[-1] - rss[0] if rss else float("nan")
    per_round = statistics.median(
        [(b[2] - a[2]) / max(1, b[0] - a[0]) for a, b in zip(run["rss_samples"],
                                                              run["rss_samples"][1:],
                                                              strict=False)] or [0.0])
    rounds_total = args.trainings * args.rounds
    row = {"trainings": args.trainings, "silos": args.silos, "rounds": args.rounds,
           "interval_s": args.interval, "phases": run["phases"],
           "completed_rounds": run["completed_rounds"], "rounds_expected": rounds_total,
           "jobs": len(names), "jobs_expected": len(expected), "lost": lost[:10],
           "unexpected": extra[:10], "duplicate_names": duplicates, "job_creates": creates,
           "create_conflicts": conflicts, "wall_s": run["wall_s"],
           "operator_cpu_s": run["operator_cpu_s"],
           "operator_cpu_s_per_round": run["operator_cpu_s"] / rounds_total,
           "rss_start_mib": run["rss_start_mib"],
           "rss_first_round_mib": rss[0] if rss else None,
           "rss_last_round_mib": rss[-1] if rss else None,
           "rss_growth_mib": rss_growth, "heap_first_round_mib": heap[0] if heap else None,
           "heap_last_round_mib": heap[-1] if heap else None, "heap_growth_mib": growth,
           "heap_growth_mib_per_round": per_round,
           "rss_samples": run["rss_samples"], "api_requests": stats["served"]}
    ok = (all(p == "Succeeded" for p in run["phases"]) and run["completed_rounds"] == rounds_total
          and not lost and not extra and duplicates == 0 and conflicts == 0
          and growth < args.max_growth_mib)
    row["ok"] = ok
    print(json.dumps({k: v for k, v in row.items() if k != "rss_samples"}))
    lines = ["| what | measured |", "|---|---|",
             f"| trainings × silos × rounds | {args.trainings} × {args.silos} × {args.rounds} |",
             f"| rounds completed | {run['completed_rounds']} of {rounds_total} |",
             f"| Jobs (expected) | {len(names)} ({len(expected)}); lost {len(lost)}, "
             f"duplicated {duplicates + conflicts} |",
             f"| wall time | {run['wall_s']:.0f} s |",
             f"| operator CPU per round | {row['operator_cpu_s_per_round']:.2f} s |",
             f"| operator Python heap, first → last completed round | "
             f"{row['heap_first_round_mib']:.1f} → {row['heap_last_round_mib']:.1f} MiB "
             f"({growth:+.1f} MiB; {per_round:+.2f} MiB/round median) |",
             f"| operator RSS (after malloc_trim), first → last completed round | "
             f"{row['rss_first_round_mib']:.0f} → {row['rss_last_round_mib']:.0f} MiB "
             f"({rss_growth:+.1f} MiB) |"]
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "load-detail.json").write_text(json.dumps(row, indent=1) + "\n")
    (out / "load.json").write_text(json.dumps([
        {"metric": "load.rounds_completed", "ours": run["completed_rounds"],
         "reference": rounds_total, "reference_is": "bound",
         "ratio": run["completed_rounds"] / rounds_total, "target": 1.0, "better": "higher"},
        {"metric": "load.jobs_created", "ours": creates, "reference": len(expected),
         "reference_is": "bound", "ratio": creates / len(expected), "target": 1.0,
         "better": "lower"},
        {"metric": "load.operator_heap_growth_mib", "ours": growth,
         "reference": heap[0] if heap else 0.0, "reference_is": "baseline",
         "ratio": growth / heap[0] if heap else 0.0, "target": None, "better": "lower"},
        {"metric": "load.operator_rss_growth_mib", "ours": rss_growth,
         "reference": rss[0] if rss else 0.0, "reference_is": "baseline",
         "ratio": rss_growth / rss[0] if rss else 0.0, "target": None, "better": "lower"},
    ], indent=1) + "\n")
    if not ok:
        print("load: FAILED (see above)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
