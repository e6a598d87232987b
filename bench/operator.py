"""Operator benchmark: Kubernetes API requests, reaction latency and CPU per round, for rounds of
10 and 100 silos, against kmock with the test suite's Job controller.

The operator runs for real (kopf, kubernetes_asyncio) in this process against kmock, an
emulated API server; the Job controller of tests/operator finishes each silo Job as soon as
it sees it (every 50 ms). What is counted:

- requests: every request the operator sent while the round ran (kmock's request log, minus
  the benchmark's own), against the minimum this design needs (bench/load.py's
  ``minimum_requests``; Events are left out of both: they are informational).
- latency: from the controller marking a Job Complete to the operator's next action on the
  round (the aggregation Job created after the last silo Job; the round Succeeded after the
  aggregation Job), p50/p95 over rounds.
- CPU: process CPU seconds per round (the operator is the only work in the process besides
  the controller's polling, which is measured alone first and subtracted).

    python bench/operator.py [--silos 10,100] [--rounds 5] [--interval 1] [--out bench/results]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kmock  # noqa: E402

from bench.load import minimum_requests  # noqa: E402
from fedma_operator.jobs import JobSettings  # noqa: E402
from tests.operator.conftest import (  # noqa: E402
    TEST_AGENT,
    Api,
    Emulator,
    JobController,
    OperatorHandle,
    declare,
    rounds_path,
)
from tests.operator.test_lifecycle import agg_summary, round_body, silo_summary  # noqa: E402


class CountingEmulator(Emulator):
    """Counts the operator's requests as they are served and keeps only the latest in kmock's
    log: kmock matches each request against its whole log (O(n²) over a run), which at 100
    silos made the emulator, not the operator, the bottleneck (55 of 58 CPU seconds)."""

    served = 0
    by_kind: ClassVar[collections.Counter[str]] = collections.Counter()

    async def _handle(self, request: Any) -> Any:
        try:
            return await super()._handle(request)
        finally:
            res = getattr(request, "resource", None)
            agent = str((getattr(request, "headers", None) or {}).get("User-Agent", ""))
            if res is not None and TEST_AGENT not in agent and res.plural != "events":
                type(self).served += 1
                action = getattr(getattr(request, "action", None), "value", "?")
                sub = f"/{request.subresource}" if getattr(request, "subresource", None) else ""
                type(self).by_kind[f"{action} {res.plural}{sub}"] += 1
            del self._requests[:-32]


def operator_requests(k: Any) -> int:
    return type(k).served


async def one_round(api: Api, ctl: JobController, name: str, silos: int,
                    latencies: list[float]) -> None:
    body = round_body(name=name, silos=silos)
    await api.create(rounds_path(), body)
    finished: set[str] = set()
    done_at: float | None = None
    agg_done_at: float | None = None
    while True:
        for job in await ctl.jobs():
            lbl = job["metadata"]["labels"]
            if lbl.get("fedma.io/round-name") != name or job["metadata"]["name"] in finished:
                continue
            if lbl["fedma.io/role"] == "silo":
                await ctl.finish(job, True, silo_summary(lbl["fedma.io/silo"]))
                finished.add(job["metadata"]["name"])
                if len([f for f in finished if not f.endswith("-aggregate")]) == silos:
                    done_at = time.perf_counter()
            else:
                if done_at is not None:
                    latencies.append(time.perf_counter() - done_at)
                await ctl.finish(job, True, agg_summary())
                finished.add(job["metadata"]["name"])
                agg_done_at = time.perf_counter()
        if agg_done_at is not None:
            obj = await api.get(f"{rounds_path()}/{name}")
            if (obj.get("status") or {}).get("phase") == "Succeeded":
                latencies.append(time.perf_counter() - agg_done_at)
                return
        await asyncio.sleep(0.05)


async def bench(silos: int, rounds: int, interval: float) -> dict[str, Any]:
    async with CountingEmulator() as k, kmock.Server(k):
        declare(k)
        handle = OperatorHandle(k, interval=interval,
                                settings=JobSettings(trainer_image="fedma-trainer:bench"))
        api, ctl = Api(k), JobController(Api(k))
        await handle.start()
        try:
            await asyncio.sleep(1.0)  # kopf's startup: discovery, watches
            latencies: list[float] = []
            requests, cpu, wall = [], [], []
            for r in range(rounds):
                before = operator_requests(k)
                c0, t0 = os.times(), time.perf_counter()
                await asyncio.wait_for(one_round(api, ctl, f"bench-{silos}-r{r}", silos,
                                                 latencies), timeout=300)
                c1 = os.times()
                wall.append(time.perf_counter() - t0)
                cpu.append((c1.user - c0.user) + (c1.system - c0.system))
                requests.append(operator_requests(k) - before)
        finally:
            await handle.stop()
    by_kind = dict(type(k).by_kind)
    type(k).by_kind.clear()
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    return {"silos": silos, "rounds": rounds, "interval_s": interval,
            "requests_per_round": statistics.median(requests), "minimum": minimum_requests(silos),
            "latency_p50_s": statistics.median(latencies), "latency_p95_s": p95,
            "cpu_s_per_round": statistics.median(cpu), "wall_s_per_round": statistics.median(wall),
            "requests_by_kind_all_rounds": by_kind}


async def controller_cpu(silos: int) -> float:
    """CPU of the benchmark's own side for one round (the controller and its API calls),
    measured with no operator: it lists Jobs at the same pace for the same wall time."""
    async with CountingEmulator() as k, kmock.Server(k):
        declare(k)
        ctl = JobController(Api(k))
        c0 = os.times()
        for _ in range(20):
            await ctl.jobs()
            await asyncio.sleep(0.05)
        c1 = os.times()
    return ((c1.user - c0.user) + (c1.system - c0.system)) / (20 * 0.05)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--silos", default="10,100")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--interval", type=float, default=1.0,
                   help="the operator's reconcile interval (production default: 10 s)")
    p.add_argument("--out", default="bench/results")
    args = p.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)
    rows = []
    for n in (int(x) for x in args.silos.split(",")):
        row = asyncio.run(bench(n, args.rounds, args.interval))
        idle = asyncio.run(controller_cpu(n))  # controller CPU per wall second
        row["controller_cpu_s_per_round"] = idle * row["wall_s_per_round"]
        row["operator_cpu_s_per_round"] = max(0.0, row["cpu_s_per_round"]
                                              - row["controller_cpu_s_per_round"])
        rows.append(row)
        print(json.dumps(row))
    results = []
    lines = ["| silos | requests/round | minimum | × minimum | p50 latency | p95 latency | "
             "operator CPU s/round | wall s/round |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["requests_per_round"] / r["minimum"]
        lines.append(f'| {r["silos"]} | {r["requests_per_round"]:.0f} | {r["minimum"]} | '
                     f'{ratio:.2f} | {r["latency_p50_s"]:.2f} s | {r["latency_p95_s"]:.2f} s | '
                     f'{r["operator_cpu_s_per_round"]:.2f} | {r["wall_s_per_round"]:.1f} |')
        n = r["silos"]
        results += [
            {"metric": f"operator.silos{n}.requests_per_round", "ours": r["requests_per_round"],
             "reference": r["minimum"], "reference_is": "bound", "ratio": ratio,
             "target": 1.5, "better": "lower"},
            {"metric": f"operator.silos{n}.latency_p95_s", "ours": r["latency_p95_s"],
             "reference": 1.0, "reference_is": "bound", "ratio": r["latency_p95_s"],
             "target": 1.0, "better": "lower"},
            {"metric": f"operator.silos{n}.cpu_s_per_round", "ours": r["operator_cpu_s_per_round"],
             "reference": r["wall_s_per_round"], "reference_is": "bound",
             "ratio": r["operator_cpu_s_per_round"] / r["wall_s_per_round"], "target": None,
             "better": "lower"},
        ]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "operator.json").write_text(json.dumps(results, indent=1) + "\n")
    (Path(args.out) / "operator-detail.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
