"""Write docs/benchmarks.md from bench/results/*.json (the last step of ``make bench``).

Every figure in the page comes from a results file a benchmark wrote in the same ``make bench``
run; the page says which command produced which table. Nothing here measures anything.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def load(name: str) -> Any:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def verdict(r: dict[str, Any]) -> str:
    t = r.get("target")
    if t is None:
        return ""
    ok = r["ratio"] <= t if r["better"] == "lower" else r["ratio"] >= t
    return f"{'met' if ok else 'missed'} ({'≤' if r['better'] == 'lower' else '≥'} {t})"


def fmt(v: float) -> str:
    if abs(v) >= 1e9:
        return f"{v / 1e9:.2f} G"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.1f} M"
    return f"{v:.3g}"


def rows_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| what | ours | reference | is | ratio | target |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| `{r['metric']}` | {fmt(r['ours'])} | {fmt(r['reference'])} | "
                   f"{r['reference_is']} | {r['ratio']:.2f} | {verdict(r)} |")
    return out


def train_section(lines: list[str]) -> None:
    res, det = load("train.json"), load("train-detail.json")
    lines += ["## Silo training step (`bench/train.py`)", ""]
    if not res:
        lines += ["Not run.", ""]
        return
    grad = next(r["ours"] for r in res if r["metric"] == "train.gradient_relative_difference")
    ours_rates = ", ".join(f"{x:.2f}" for x in det["ours_samples_per_s"])
    base_rates = ", ".join(f"{x:.2f}" for x in det["baseline_samples_per_s"])
    lines += [f"fedma's trainer against transformers' `LlavaForConditionalGeneration` with the "
              "same weights (CLIP ViT-B/32-size tower at 224 px, SmolLM2-135M, LLaVA's "
              f"2-layer GELU projector), batch {det['batch']}, {det['blocks']} alternating "
              f"blocks of {det['steps_per_block']} steps, {det['threads']} threads, float32.", "",
              *rows_table(res), "",
              f"- samples/s per block: fedma {ours_rates}; transformers {base_rates}.",
              f"- Same computation: projector gradients on one batch differ by {grad:.1e} "
              f"(relative); step losses agree to {det['first_block_loss_gap']:.1e} over the first "
              f"block, then AdamW amplifies float rounding (gap {det['max_step_loss_gap']:.2f} "
              f"after {len(det['ours_loss'])} steps).",
              "- FLOPs per sample (matmuls and attention, from the shapes): " + ", ".join(
                  f"{k.replace('_', ' ')} {v / 1e9:.2f} G" for k, v in
                  det["flops_per_sample"].items()) + f"; dense float32 matmul here: "
              f"{det['matmul_flops'] / 1e9:.0f} GFLOP/s.", "",
              "Our step by phase (best of 3, one batch):", "",
              "| phase | ms | share |", "|---|---|---|"]
    total = sum(det["profile_seconds"].values())
    for k, v in det["profile_seconds"].items():
        lines.append(f"| {k} | {v * 1000:.0f} | {v / total:.0%} |")
    lines.append("")


def aggregate_section(lines: list[str]) -> None:
    det = load("aggregate-detail.json")
    lines += ["## Aggregation (`bench/aggregate.py`)", ""]
    if not det:
        lines += ["Not run.", ""]
        return
    bw = det["copy_bandwidth_bytes_per_s"]
    lines += [f"Every strategy over K memory-mapped silo updates of LLaVA-1.5's projector "
              f"(7B: 1024→4096→4096, 13B: 1024→5120→5120, float32). Bound: (K + 2) × model "
              f"bytes at this machine's copy bandwidth, {bw / 1e9:.1f} GB/s (read + write of a "
              f"512 MiB tensor copy, same run). Memory: peak anonymous memory above the level "
              f"before the call, in model sizes.", "",
              "| shape | K | strategy | seconds | × bound | × FedAvg | memory × model |",
              "|---|---|---|---|---|---|---|"]
    fedavg = {(r["shape"], r["k"]): r["seconds"] for r in det["runs"]
              if r["strategy"] == "fedavg"}
    for r in det["runs"]:
        bound = (r["k"] + 2) * r["model_bytes"] / bw
        lines.append(f"| {r['shape']} | {r['k']} | {r['strategy']} | {r['seconds']:.3f} | "
                     f"{r['seconds'] / bound:.2f} | "
                     f"{r['seconds'] / fedavg[(r['shape'], r['k'])]:.2f} | "
                     f"{r['peak_extra_bytes'] / r['model_bytes']:.1f} |")
    touch = [r for r in det["runs"] if r["strategy"] == "fedavg"
             and "output_first_touch_seconds" in r]
    if touch:
        lines += ["", "FedAvg's time split: the fresh output's first touch (the kernel maps and "
                  "zeroes each page of a new model-sized tensor before it is written; fresh "
                  "fill minus resident fill, same run) and the rest (the pass itself):", "",
                  "| shape | K | FedAvg s | first touch s | rest s | bound s | rest × bound |",
                  "|---|---|---|---|---|---|---|"]
        for r in touch:
            bound = (r["k"] + 2) * r["model_bytes"] / bw
            t = r["output_first_touch_seconds"]
            lines.append(f"| {r['shape']} | {r['k']} | {r['seconds']:.3f} | {t:.3f} | "
                         f"{r['seconds'] - t:.3f} | {bound:.3f} | "
                         f"{(r['seconds'] - t) / bound:.2f} |")
    prof = det.get("fedcmp_profile_7b_k16")
    if prof:
        lines += ["", "Fed-CMP's time, 7B shape, K = 16 (cProfile, warm call):", "",
                  "| where | seconds | share |", "|---|---|---|"]
        for k, v in prof.items():
            if k != "total":
                lines.append(f"| {k} | {v:.2f} | {v / prof['total']:.0%} |")
        lines.append(f"| total | {prof['total']:.2f} | |")
    sha = sorted({(r["shape"], r["k"], r["sha256_seconds"], r["model_bytes"])
                  for r in det["runs"]})
    lines += ["", "Digest checking, per Job (sha256 of every update byte, one core): " + "; ".join(
        f"{s} K={k}: {t:.2f} s ({k * mb / t / 1e9:.2f} GB/s)" for s, k, t, mb in sha), ""]


def operator_section(lines: list[str]) -> None:
    det = load("operator-detail.json")
    lines += ["## Operator (`bench/operator.py`)", ""]
    if not det:
        lines += ["Not run.", ""]
        return
    lines += ["The operator (kopf, real client) against kmock with the test Job controller, "
              "which finishes each Job as soon as it sees it. Minimum requests: N silo Job "
              "creates, 1 aggregation Job create, a Job list and a pod list for the silos and "
              "the same for the aggregation, 3 status writes = N + 8 (Events not counted). "
              "Latency: from the controller marking Jobs Complete to the operator's next action "
              "(aggregation Job created; round Succeeded). CPU: this process minus the "
              "controller's share; it includes the in-process API emulator's own work, so it "
              "is an upper bound on the operator's.", "",
              "| silos | reconcile interval | requests/round | minimum | × minimum | p50 | p95 | "
              "CPU s/round | wall s/round |", "|---|---|---|---|---|---|---|---|---|"]
    for r in det:
        lines.append(f"| {r['silos']} | {r['interval_s']:g} s | {r['requests_per_round']:.0f} | "
                     f"{r['minimum']} | {r['requests_per_round'] / r['minimum']:.2f} | "
                     f"{r['latency_p50_s']:.2f} s | {r['latency_p95_s']:.2f} s | "
                     f"{r['operator_cpu_s_per_round']:.2f} | {r['wall_s_per_round']:.1f} |")
    lines.append("")


def zero_section(lines: list[str]) -> None:
    det = load("zero-detail.json")
    lines += ["## DeepSpeed ZeRO-3 on 2 CPU ranks (`bench/zero.py`)", ""]
    if not det:
        lines += ["Not run.", ""]
        return
    one = det["1"]["frozen_elements_per_rank"][0] * 4
    lines += ["`fedma train-silo` with the bundled backbones (EfficientNet-Lite0, SmolLM2-135M) "
              "and `zeroStage: 3`, as one process and under `torchrun --nproc_per_node 2` "
              "(gloo). Frozen-backbone bytes each rank holds between gathers (float32):", "",
              "| ranks | per rank | × one rank |", "|---|---|---|"]
    for n in ("1", "2"):
        per = det[n]["frozen_elements_per_rank"]
        lines.append(f"| {n} | " + ", ".join(f"{e * 4 / 2**20:.1f} MiB" for e in per)
                     + f" | {max(per) * 4 / one:.2f} |")
    lines.append("")


def gpu_section(lines: list[str]) -> None:
    """From a lent GPU's run of bench/gpu.py (its own date, device and versions: it is not
    part of the CPU run the rest of this page comes from)."""
    res = load("gpu.json")
    lines += ["## On a GPU (`bench/gpu.py`)", ""]
    if not res:
        lines += ["Not run: no GPU has been lent to this project's sessions yet. `python "
                  "bench/gpu.py` is the prepared check (what it measures and how to run it on "
                  "a lent machine: [gpu.md](gpu.md)); CI runs it at tiny shapes on the CPU "
                  "(`--device cpu --tiny`), which times nothing worth reporting.", ""]
        return
    v, lv = res["versions"], res["llava"]
    lines += [f"Run {res['date']} on {v.get('gpu', res['device'])} (torch {v['torch']}, CUDA "
              f"{v.get('cuda')}, transformers {v.get('transformers')}, DeepSpeed "
              f"{v.get('deepspeed', 'absent')}); a separate run from the CPU figures above.",
              "", "| smoke: `fedma train-silo` | device | precision | steps | loss | s |",
              "|---|---|---|---|---|---|"]
    for r in res.get("smoke", []):
        lines.append(f"| {r['engine']} ({r['vision']} + {r['lm']}) | {r.get('device')} | "
                     f"{r.get('precision')} | {r.get('steps')} | {r.get('loss')} | "
                     f"{r['seconds']} |" if "error" not in r else
                     f"| {r['engine']} | failed | | | | {r['seconds']} |")
    med, mem = lv["median_samples_per_s"], lv["peak_memory_bytes"]
    lines += ["", f"{lv['shapes']}, {lv['dtype']}, batch {lv['batch']}, {lv['image_tokens']} "
              f"image + {lv['caption_tokens']} caption tokens, {lv['blocks']} alternating "
              f"blocks of {lv['steps_per_block']} steps:", "",
              "| | fedma | transformers |", "|---|---|---|",
              f"| samples/s (median) | {med['fedma']:.2f} | {med['transformers']:.2f} |",
              f"| peak GPU memory | {fmt(mem['fedma'] or 0)}B | {fmt(mem['transformers'] or 0)}B |",
              "", f"Speed-up {lv['speedup']:.2f}× (target 1.5×). bf16 matmul peak measured in "
              f"the run: {res['bf16_matmul_peak_flops'] / 1e12:.0f} TFLOP/s; the whole step "
              f"{lv['achieved_flops'] / 1e12:.0f} TFLOP/s ({lv['step_fraction_of_peak']:.0%}); "
              f"the LM's forward and input-gradient backward alone "
              f"{lv['lm_achieved_flops'] / 1e12:.0f} TFLOP/s ({lv['lm_fraction_of_peak']:.0%}, "
              f"target 40 %).", ""]


def comm_section(lines: list[str]) -> None:
    res = load("comm.json")
    lines += ["## Wire (`bench/comm.py`)", ""]
    if not res:
        lines += ["Not run.", ""]
        return
    det = load("comm-detail.json") or {}
    lines += [det.get("summary", ""), "", *rows_table(res), ""]


def load_section(lines: list[str]) -> None:
    det, soak = load("load-detail.json"), load("soak-detail.json")
    lines += ["## Load and soak (`make bench-load`)", ""]
    if det:
        rss = f"{det['rss_first_round_mib']:.0f} → {det['rss_last_round_mib']:.0f} MiB"
        kinds = ", ".join(f"{k} {n / max(1, det['completed_rounds']):.0f}"
                          for k, n in list(det["requests_by_kind"].items())[:6])
        lines += [f"{det['trainings']} FederatedTrainings × {det['silos']} silos × "
                  f"{det['rounds']} rounds at once through one operator (reconcile interval "
                  f"{det['interval_s']:g} s) on a real control plane: etcd, kube-apiserver, "
                  "kube-controller-manager (Job controller, garbage collector), the hub chart "
                  "installed by helm, `fedma-operator` in its own process with the chart's "
                  "ServiceAccount. Only the containers stand in: the process kubelet's fast "
                  "mode completes each pod at once with a trainer's or aggregator's "
                  "termination message. CPU and memory are the operator process's own "
                  "(/proc); requests are the apiserver's audit log for the operator's "
                  "identity.", "",
                  "| what | measured |", "|---|---|",
                  f"| rounds completed | {det['completed_rounds']} of {det['rounds_expected']} "
                  f"({', '.join(det['phases'])}) |",
                  f"| Jobs | {det['jobs']} of {det['jobs_expected']} expected; "
                  f"{det['job_creates']} created (201), {det['create_conflicts']} conflicts "
                  f"(409), {len(det['lost'])} lost |",
                  f"| wall time | {det['wall_s']:.0f} s |",
                  f"| operator CPU per round | {det['operator_cpu_s_per_round']:.2f} s "
                  f"(median between completions {det['operator_cpu_s_per_round_median']:.2f} s)"
                  " |",
                  f"| operator requests per round | {det['requests_per_round']:.0f} (minimum "
                  f"{det['requests_minimum_per_round']}, "
                  f"{det['requests_per_round'] / det['requests_minimum_per_round']:.2f}×) "
                  f"and {det['events_per_round']:.0f} Events; per round: {kinds} |",
                  f"| operator RSS, first → last completed round | {rss} "
                  f"({det['rss_growth_mib']:+.1f} MiB) |",
                  f"| apiserver CPU, whole run incl. start-up | "
                  f"{det['apiserver_cpu_s_total']:.0f} s |"]
        big = det.get("max_round")
        if big:
            parts = ", ".join(f"{k} {v / 1024:.0f}" for k, v in
                              big["round_object_parts_bytes"].items() if v > 1024)
            lines += [
                f"| then one round of {big['silos']} silos (spec.silos maxItems) | "
                f"{big['phase']} in {big['wall_s']:.0f} s, operator CPU "
                f"{big['operator_cpu_s']:.1f} s, {big['jobs']} Jobs |",
                f"| its round object in etcd (limit 1536 KiB) | "
                f"{big['round_object_bytes'] / 1024:.0f} KiB ({parts} KiB) |",
                f"| its largest Job; a container's environment | "
                f"{big['largest_job_bytes'] / 1024:.1f} KiB (the aggregator's `--include` "
                f"list); {big['largest_env_bytes']} B |",
                f"| the aggregator's termination message (limit 4096 B) | "
                f"{big['aggregator_message_bytes']} B, {big['rejected_reported']} of "
                f"{big['rejected_expected']} rejected silos marked in status |"]
        lines += [""]
    else:
        lines += ["`bench/load.py`: not run.", ""]
    if soak:
        lines += [f"{soak['rounds']} consecutive rounds of {soak['silos']} silos with the local "
                  "backend (`fedma run`: real processes, real torch training on the tiny "
                  "backbones the tests use, a file store, evaluation each round).", "",
                  "| what | measured |", "|---|---|",
                  f"| rounds completed | {soak['completed']} of {soak['rounds']} in "
                  f"{soak['wall_s']:.0f} s |",
                  f"| round time, second tenth → last tenth (median) | "
                  f"{soak['round_s_second_tenth']:.2f} → {soak['round_s_last_tenth']:.2f} s "
                  f"({soak['slowdown']:.2f}×) |",
                  f"| runner RSS, second tenth → last tenth (max) | "
                  f"{soak['rss_second_tenth_mib']:.0f} → {soak['rss_last_tenth_mib']:.0f} MiB "
                  f"({soak['rss_growth_mib']:+.1f} MiB) |",
                  f"| held-out loss, round 0 → {soak['rounds']} | "
                  f"{soak['initial_heldout_loss']:.3f} → {soak['final_heldout_loss']:.3f} |",
                  f"| store checks (files, manifests, digest chain, no process left) | "
                  f"{soak['files']} files, {len(soak['problems'])} problems |", ""]
    else:
        lines += ["`bench/soak.py`: not run.", ""]


def main() -> int:
    lines = ["# Benchmarks", "",
             f"Written by `bench/report.py`, the last step of `make bench` and `make bench-load` "
             f"({datetime.now(UTC):%Y-%m-%d %H:%M} UTC), from "
             f"`bench/results/*.json`; every number below was measured by the command named in "
             f"its section, in that run, on: {cpu_model()}, {os.cpu_count()} cores, Python "
             f"{platform.python_version()}. Ratios compare figures taken in the same run.", ""]
    summary: list[dict[str, Any]] = []
    for name in ("train", "aggregate", "operator", "comm", "zero"):
        summary += [r for r in (load(f"{name}.json") or []) if r.get("target") is not None]
    lines += ["## Targets", "", *rows_table(summary), ""]
    train_section(lines)
    aggregate_section(lines)
    zero_section(lines)
    gpu_section(lines)
    operator_section(lines)
    comm_section(lines)
    load_section(lines)
    notes = ROOT / "bench" / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    out = ROOT / "docs" / "benchmarks.md"
    out.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
