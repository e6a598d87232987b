"""Soak: many consecutive small rounds of one training, locally, with real training.

``fedma run`` (the local backend: each silo and each aggregation a real process, real torch
training of the projector on the tiny random-weight CLIP and Llama backbones the tests use,
a file store) runs --rounds rounds of --silos silos. While it runs, its resident set is sampled
every 0.5 s. Checked afterwards, and the run fails (exit 1) if any does not hold:

- every round completed and the report has a row per round;
- the store holds exactly one committed global projector per round and one update per silo
  per round, nothing else (no temporary, no file without its manifest);
- the chain is intact: each round's aggregate names the previous round's output digest as
  its base, and every stored file's sha256 is the one its manifest records;
- no process outlives the run;
- the runner's memory stays flat: its resident set in the last tenth of the rounds against
  the second tenth (the first holds start-up and the first evaluations), within --max-growth-mib;
- rounds do not slow down: the median round time of the last tenth against the second.

    python bench/soak.py [--rounds 50] [--silos 2] [--out bench/results]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def leftovers(work: Path) -> list[str]:
    """Processes still running whose command line names the soak's folder (its silos and
    aggregators are started with a round file from there)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmd = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(work) in cmd and int(cmdline.parent.name) != os.getpid():
            found.append(f"{cmdline.parent.name}: {cmd[:200]}")
    return found


def run(rounds: int, silos: int, work: Path) -> dict[str, Any]:
    import yaml

    from tests.conftest import build_tiny_models, training_manifest

    tiny = build_tiny_models(work / "models")
    # fedma trains one pass: each round takes a fresh shard (here 4 samples, one step).
    obj = training_manifest(work, tiny, silos=silos, rounds=rounds, n=4 * rounds)
    obj["metadata"]["name"] = "soak"
    obj["spec"]["evaluation"]["maxSamples"] = 8
    manifest = work / "soak.yaml"
    manifest.write_text(yaml.safe_dump(obj, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    out = work / "out"
    samples: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "fedma.cli", "run", str(manifest), "--out",
                             str(out), "--parallel", str(silos)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.5):
            m = rss_mib(proc.pid)
            if m is not None:
                samples.append((time.perf_counter() - t0, m))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    stop.set()
    sampler.join()
    wall = time.perf_counter() - t0
    return {"rc": proc.returncode, "stderr": err[-3000:], "wall_s": wall, "samples": samples,
            "orphans": leftovers(work), "out": out, "store": work / "store"}


def check(rounds: int, silos: int, res: dict[str, Any]) -> dict[str, Any]:
    store = res["store"] / "soak"
    problems: list[str] = []
    report = json.loads((res["out"] / "report.json").read_text())
    rows = {r["round"]: r for r in report["rounds"]}
    if sorted(rows) != list(range(rounds + 1)):
        problems.append(f"report rows {sorted(rows)[:5]}…, expected 0..{rounds}")
    files = sorted(p for p in store.rglob("*") if p.is_file())
    weights = [p for p in files if p.name.endswith(".safetensors")]
    manifests = [p for p in files if p.name.endswith(".manifest.json")]
    others = [p for p in files if p not in weights and p not in manifests
              and p.name != "training.json"]
    globals_ = [p for p in weights if p.name == "global.safetensors"]
    updates = [p for p in weights if p.name == "update.safetensors"]
    if len(globals_) != rounds + 1 or len(updates) != rounds * silos:
        problems.append(f"{len(globals_)} globals (expected {rounds + 1}), {len(updates)} "
                        f"updates (expected {rounds * silos})")
    if others:
        problems.append(f"unexpected files: {[str(p) for p in others[:5]]}")
    previous = None
    for p in weights:
        m_path = Path(str(p) + ".manifest.json")
        if not m_path.exists():
            problems.append(f"{p}: no manifest")
            continue
        m = json.loads(m_path.read_text())
        if hashlib.sha256(p.read_bytes()).hexdigest() != m["sha256"]:
            problems.append(f"{p}: sha256 differs from its manifest")
    for r in range(1, rounds + 1):
        g = store / f"round-{r:04d}" / "global.safetensors.manifest.json"
        prev = store / f"round-{r - 1:04d}" / "global.safetensors.manifest.json"
        if g.exists() and prev.exists():
            previous = json.loads(prev.read_text())["sha256"]
            if json.loads(g.read_text()).get("base_digest") != previous:
                problems.append(f"round {r}: base digest is not round {r - 1}'s output")
    if res["orphans"]:
        problems.append(f"processes left running: {res['orphans']}")
    seconds = [rows[r]["seconds"] for r in range(1, rounds + 1) if r in rows]
    tenth = max(1, rounds // 10)
    early, late = seconds[tenth: 2 * tenth], seconds[-tenth:]
    wall = res["wall_s"]
    rss = res["samples"]
    early_rss = [m for t, m in rss if wall * 0.1 <= t < wall * 0.2]
    late_rss = [m for t, m in rss if t >= wall * 0.9]
    return {"rounds": rounds, "silos": silos, "completed": len(seconds),
            "wall_s": wall, "round_s_median": statistics.median(seconds) if seconds else None,
            "round_s_second_tenth": statistics.median(early) if early else None,
            "round_s_last_tenth": statistics.median(late) if late else None,
            "rss_second_tenth_mib": max(early_rss) if early_rss else None,
            "rss_last_tenth_mib": max(late_rss) if late_rss else None,
            "rss_peak_mib": max((m for _, m in rss), default=None),
            "files": len(files), "problems": problems,
            "final_heldout_loss": rows.get(rounds, {}).get("heldout_loss"),
            "initial_heldout_loss": rows.get(0, {}).get("heldout_loss")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--silos", type=int, default=2)
    p.add_argument("--max-growth-mib", type=float, default=20.0)
    p.add_argument("--max-slowdown", type=float, default=1.5)
    p.add_argument("--out", default="bench/results")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fedma-soak-") as tmp:
        res = run(args.rounds, args.silos, Path(tmp))
        if res["rc"] != 0:
            print(res["stderr"], file=sys.stderr)
            raise SystemExit(f"soak: fedma run exited {res['rc']}")
        row = check(args.rounds, args.silos, res)
    growth = (row["rss_last_tenth_mib"] or 0) - (row["rss_second_tenth_mib"] or 0)
    slowdown = (row["round_s_last_tenth"] or 0) / (row["round_s_second_tenth"] or 1)
    row.update(rss_growth_mib=growth, slowdown=slowdown)
    if growth > args.max_growth_mib:
        row["problems"].append(f"runner memory grew {growth:.1f} MiB")
    if slowdown > args.max_slowdown:
        row["problems"].append(f"rounds slowed down {slowdown:.2f}×")
    row["ok"] = not row["problems"]
    print(json.dumps(row))
    print("\n".join([
        "| what | measured |", "|---|---|",
        f"| rounds × silos | {args.rounds} × {args.silos} (tiny backbones, real training) |",
        f"| rounds completed | {row['completed']} of {args.rounds} in {row['wall_s']:.0f} s |",
        f"| round time, 2nd tenth → last tenth (median) | {row['round_s_second_tenth']:.2f} → "
        f"{row['round_s_last_tenth']:.2f} s ({slowdown:.2f}×) |",
        f"| runner RSS, 2nd tenth → last tenth (max) | {row['rss_second_tenth_mib']:.0f} → "
        f"{row['rss_last_tenth_mib']:.0f} MiB ({growth:+.1f} MiB) |",
        f"| store | {row['files']} files; problems: {len(row['problems'])} |"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak-detail.json").write_text(json.dumps(row, indent=1) + "\n")
    (out / "soak.json").write_text(json.dumps([
        {"metric": "soak.rounds_completed", "ours": row["completed"], "reference": args.rounds,
         "reference_is": "bound", "ratio": row["completed"] / args.rounds, "target": 1.0,
         "better": "higher"},
        {"metric": "soak.round_seconds_last_vs_early", "ours": row["round_s_last_tenth"],
         "reference": row["round_s_second_tenth"], "reference_is": "baseline",
         "ratio": slowdown, "target": args.max_slowdown, "better": "lower"},
        {"metric": "soak.runner_rss_growth_mib", "ours": growth,
         "reference": row["rss_second_tenth_mib"], "reference_is": "baseline",
         "ratio": growth / (row["rss_second_tenth_mib"] or 1), "target": None,
         "better": "lower"},
    ], indent=1) + "\n")
    for problem in row["problems"]:
        print(f"soak: {problem}", file=sys.stderr)
    return 0 if row["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
