"""Load: several FederatedTrainings of 100 silos each, at once, through one operator, on a real
control plane.

Everything but the containers is real: etcd, kube-apiserver and kube-controller-manager (the
Job controller, garbage collector) built by tests/kube/build.sh; the hub chart installed by
the real helm; ``fedma-operator`` in its own process with the Deployment's arguments and the
chart's ServiceAccount token. The process kubelet (tests/kube/kubelet.py) runs in ``--fast``
mode: it binds each pod and completes it at once with the termination message a trainer or
aggregator would leave (:func:`message`), so the operator's work, not training, is what runs.

Measured on the operator's process alone (/proc/<pid>): CPU seconds (user + system) over the
run, divided by the rounds completed; resident memory sampled each time a round completes.
Requests: the apiserver's audit log, every request made with the operator's identity while
the trainings ran, per round and by verb and resource (Events apart: informational, and left
out of bench/operator.py's minimum too).

Checked, and the run fails (exit 1) if any does not hold:
- every round of every training completes (each training Succeeded with all its rounds);
- no Job is lost or duplicated: exactly trainings × rounds × (silos + 1) Jobs exist, each
  attempt 1, and the audit log shows each created once with a 201 and no create answered 409;
- every request the operator made was allowed (no 403).

    python bench/load.py [--trainings 3] [--silos 100] [--rounds 5] [--out bench/results]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedma import termination  # noqa: E402
from fedma_operator.jobs import LABEL  # noqa: E402
from tests.kube.deployed import NAMESPACE, OPERATOR_USER  # noqa: E402
from tests.operator.test_lifecycle import round_body, silo_summary  # noqa: E402


def minimum_requests(silos: int) -> int:
    """What one round of ``silos`` silos needs at least (Events left out: informational):
    N silo Job creates and 1 aggregation Job create; the round's file created and removed
    (one ConfigMap, all silos in one namespace); one Job list and one pod list to see the
    silos finish and the same for the aggregation; 3 status writes (Training, Aggregating,
    Succeeded)."""
    return silos + 10


def requested(pod: dict[str, Any]) -> list[str]:
    """The silos an aggregation pod was asked for (its ``--include SILO=SHA256`` arguments)."""
    cmd = pod["spec"]["containers"][0]["command"]
    return sorted(cmd[i + 1].partition("=")[0] for i, a in enumerate(cmd) if a == "--include")


def rejected_by_aggregator(silos: list[str]) -> dict[str, str]:
    """Every 10th requested silo: what a robust rule rejecting many updates reports."""
    return {s: f"update norm {100 + i}.0 exceeds maxUpdateNorm 10.0; the update is dropped"
            for i, s in enumerate(silos) if i % 10 == 9}


def message(pod: dict[str, Any]) -> str:
    """The termination message the fast kubelet leaves for ``pod``: a silo's summary (update
    URI + sha256) or the aggregator's (global projector URI + sha256, every 10th silo
    rejected with a reason, every 4th noted), from the pod's labels and command, bounded by
    fedma.termination as the real aggregator's is."""
    lbl = pod["metadata"]["labels"]
    training, rnd = lbl[f"{LABEL}/training"], int(lbl[f"{LABEL}/round"])
    if lbl[f"{LABEL}/role"] == "silo":
        return json.dumps(silo_summary(lbl[f"{LABEL}/silo"], rnd))
    silos = requested(pod)
    rejected = rejected_by_aggregator(silos)
    return termination.encode({
        "round": rnd, "status": "Succeeded", "loss": 1.0, "samples": 64,
        "server_state": None, "included": [s for s in silos if s not in rejected],
        "rejected": rejected, "notes": {s: "clipped to the median norm"
                                        for i, s in enumerate(silos) if i % 4 == 0},
        "output": {"uri": f"s3://fedma/runs/{training}/round-{rnd:04d}/global.safetensors",
                   "digest": f"{rnd:064x}"}}, silos)


def training_body(name: str, silos: int, rounds: int) -> dict[str, Any]:
    spec = {k: v for k, v in round_body(silos=silos)["spec"].items()
            if k not in ("trainingName", "round", "totalRounds")}
    return {"apiVersion": "fedma.io/v1alpha1", "kind": "FederatedTraining",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {**spec, "rounds": rounds}}


class ProcStat:
    """CPU seconds and resident memory of one process, from /proc."""

    def __init__(self, pid: int):
        self.pid = pid
        self.tick = os.sysconf("SC_CLK_TCK")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.tick  # utime + stime

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no VmRSS for {self.pid}")


def requests_by_operator(cp: Any, since: float, until: float) -> list[dict[str, Any]]:
    from datetime import datetime

    out = []
    for e in cp.audit():
        if e.get("user", {}).get("username") != OPERATOR_USER or e.get("stage") != \
                "ResponseComplete":
            continue
        at = datetime.fromisoformat(e["requestReceivedTimestamp"].replace("Z", "+00:00"))
        if since <= at.timestamp() <= until:
            out.append(e)
    return out


def big_round(cp: Any, stat: ProcStat, silos: int, timeout: float) -> dict[str, Any]:
    """One round at the schema's limit (``silos`` = spec.silos maxItems), after the load: every
    limit on the way (Job creation, each container's environment, the aggregator's
    termination message, the round object's size in etcd) is met by a real apiserver."""
    from tests.kube.waiting import fedma_path, items

    name = "load-max"
    t0, cpu0 = time.time(), stat.cpu_s()
    status, body = cp.request("POST", fedma_path(NAMESPACE, "federatedtrainings"),
                              training_body(name, silos, 1))
    if status != 201:
        raise SystemExit(f"load: creating training {name}: {status} {body}")
    while True:
        obj = cp.request("GET", fedma_path(NAMESPACE, "federatedtrainings", name))[1]
        phase = (obj.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            break
        if time.time() - t0 > timeout:
            raise SystemExit(f"load: {name} not done after {timeout:.0f} s: {phase}")
        time.sleep(0.5)
    wall, cpu = time.time() - t0, stat.cpu_s() - cpu0
    time.sleep(1.0)  # the audit log is written as responses complete
    lists = [e for e in requests_by_operator(cp, t0, time.time()) if e.get("verb") == "list"
             and (e.get("objectRef") or {}).get("resource") in ("jobs", "pods")]
    code, raw = cp.request("GET", fedma_path(NAMESPACE, "federatedrounds", f"{name}-r0001"))
    rnd = raw if code == 200 else {}
    entries = (rnd.get("status") or {}).get("silos") or {}
    flagged = sorted(s for s, e in entries.items()
                     if str(e.get("reason", "")).startswith("rejected by the aggregator"))
    jobs = items(cp, f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs?labelSelector="
                     f"{LABEL}/training={name}")
    pods = items(cp, f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector="
                     f"{LABEL}/training={name},{LABEL}/role=aggregate")
    messages = [cs["state"]["terminated"].get("message", "") for p in pods
                for cs in (p.get("status") or {}).get("containerStatuses") or []
                if (cs.get("state") or {}).get("terminated")]
    silo_names = [f"silo-{i + 1}" for i in range(silos)]
    def size(value: Any) -> int:
        return len(json.dumps(value).encode())

    st, meta = rnd.get("status") or {}, rnd.get("metadata") or {}
    return {"silos": silos, "phase": phase, "message": (obj.get("status") or {}).get("message"),
            "wall_s": wall, "operator_cpu_s": cpu, "jobs": len(jobs),
            # Job and pod lists: answers after the first page, and lists asked without a limit.
            "list_continued": sum("continue=" in e.get("requestURI", "") for e in lists),
            "list_unlimited": sum("limit=" not in e.get("requestURI", "") for e in lists),
            "round_object_bytes": size(rnd),
            "round_object_parts_bytes": {
                "spec": size(rnd.get("spec")), "status.silos": size(st.get("silos")),
                "status.aggregation": size(st.get("aggregation")),
                "status.acceptedSpec": size(st.get("acceptedSpec")),
                "status.other": size({k: v for k, v in st.items() if k not in (
                    "silos", "aggregation", "acceptedSpec")}),
                "metadata.managedFields": size(meta.get("managedFields")),
                "metadata.annotations": size(meta.get("annotations"))},
            "largest_job_bytes": max((len(json.dumps(j).encode()) for j in jobs), default=0),
            "largest_env_bytes": max((sum(len(e.get("name", "")) + len(e.get("value", ""))
                                          for e in j["spec"]["template"]["spec"]["containers"]
                                          [0].get("env", [])) for j in jobs), default=0),
            "aggregator_message_bytes": max((len(m.encode()) for m in messages), default=0),
            "rejected_reported": len(flagged),
            "rejected_expected": len(rejected_by_aggregator(sorted(silo_names))),
            "rejected_match": flagged == sorted(rejected_by_aggregator(sorted(silo_names)))}


def drive(folder: Path, trainings: int, silos: int, rounds: int, interval: float,
          timeout: float, big: int = 0) -> dict[str, Any]:
    from tests.kube.cluster import ControlPlane, start_kubelet
    from tests.kube.deployed import (
        OperatorProcess,
        deployment_args,
        install_hub,
        service_account_kubeconfig,
    )
    from tests.kube.waiting import fedma_path, items

    cp = ControlPlane("load", folder / "cluster").start()
    op = None
    try:
        start_kubelet(cp, "load-node", fast_message="bench.load:message")
        install_hub(cp, {"role": "hub", "operator": {"interval": interval},
                         "trainer": {"metricsPort": 0}})
        kubeconfig = service_account_kubeconfig(cp, NAMESPACE, "fedma-operator",
                                                folder / "operator.kubeconfig")
        op = OperatorProcess(deployment_args(cp), kubeconfig, folder).start()
        assert op.proc is not None
        stat = ProcStat(op.proc.popen.pid)
        time.sleep(3.0)  # kopf's start-up: its watches open before the work arrives
        names = [f"load-{i + 1}" for i in range(trainings)]
        t0, cpu0, rss_start = time.time(), stat.cpu_s(), stat.rss_mib()
        for n in names:
            status, body = cp.request("POST", fedma_path(NAMESPACE, "federatedtrainings"),
                                      training_body(n, silos, rounds))
            if status != 201:
                raise SystemExit(f"load: creating training {n}: {status} {body}")
        samples: list[tuple[int, float, float]] = []  # (rounds completed, CPU s, RSS MiB)
        done_rounds, last_report = 0, t0
        while True:
            objs = [cp.request("GET", fedma_path(NAMESPACE, "federatedtrainings", n))[1]
                    for n in names]
            completed = sum(int((o.get("status") or {}).get("completedRounds") or 0)
                            for o in objs)
            if completed > done_rounds:
                done_rounds = completed
                samples.append((completed, stat.cpu_s() - cpu0, stat.rss_mib()))
            phases = [(o.get("status") or {}).get("phase") for o in objs]
            if all(p in ("Succeeded", "Failed") for p in phases):
                break
            if not op.alive():
                raise SystemExit(f"load: the operator exited:\n{op.tail()}")
            now = time.time()
            if now - t0 > timeout:
                raise SystemExit(f"load: not done after {timeout:.0f} s: {phases}, "
                                 f"{completed} rounds completed\n{op.tail()}")
            if now - last_report > 30:
                print(f"load: {now - t0:.0f} s, {completed} of {trainings * rounds} rounds",
                      file=sys.stderr, flush=True)
                last_report = now
            time.sleep(0.5)
        t1 = time.time()
        cpu = stat.cpu_s() - cpu0
        rss_end = stat.rss_mib()
        jobs = items(cp, f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs")
        time.sleep(1.0)  # the audit log is written as responses complete
        reqs = requests_by_operator(cp, t0, t1)
        apiserver = ProcStat(cp.procs["kube-apiserver"].popen.pid).cpu_s()
        largest = big_round(cp, stat, big, timeout) if big else None
    finally:
        if op is not None:
            op.stop()
        cp.stop()
    return {"phases": phases, "completed_rounds": done_rounds, "wall_s": t1 - t0,
            "operator_cpu_s": cpu, "rss_start_mib": rss_start, "rss_end_mib": rss_end,
            "samples": samples, "apiserver_cpu_s_total": apiserver,
            "jobs": [(j["metadata"]["name"], j["metadata"]["labels"]) for j in jobs],
            "requests": [(e["verb"], (e.get("objectRef") or {}).get("resource", ""),
                          (e.get("objectRef") or {}).get("subresource", ""),
                          (e.get("objectRef") or {}).get("name", ""),
                          (e.get("responseStatus") or {}).get("code", 0)) for e in reqs],
            "trainings": names, "big": largest}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trainings", type=int, default=3)
    p.add_argument("--silos", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--interval", type=float, default=2.0,
                   help="the operator's reconcile interval (chart value operator.interval)")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--max-silos", type=int, default=0,
                   help="then one round of this many silos (the schema's maxItems: 1000)")
    p.add_argument("--out", default="bench/results")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fedma-load-") as tmp:
        run = drive(Path(tmp), args.trainings, args.silos, args.rounds, args.interval,
                    args.timeout, args.max_silos)
    return report(args, run)


def report(args: argparse.Namespace, run: dict[str, Any]) -> int:
    expected = {f"{t}-r{r:04d}-{s}" for t in run["trainings"] for r in range(1, args.rounds + 1)
                for s in [f"silo-{i + 1}-a1" for i in range(args.silos)] + ["aggregate"]}
    names = [n for n, _ in run["jobs"]]
    lost = sorted(expected - set(names))
    extra = sorted(set(names) - expected)
    duplicates = len(names) - len(set(names))
    creates = collections.Counter(
        (name, code) for verb, res, sub, name, code in run["requests"]
        if verb == "create" and res == "jobs")
    created = sum(n for (_, code), n in creates.items() if code == 201)
    conflicts = sum(n for (_, code), n in creates.items() if code == 409)
    twice = sorted(name for (name, code), n in creates.items() if code == 201 and n > 1)
    forbidden = sorted({f"{v} {r}/{s}" for v, r, s, _, code in run["requests"] if code == 403})
    by_kind = collections.Counter(f"{v} {r}{'/' + s if s else ''}"
                                  for v, r, s, _, _ in run["requests"])
    rounds_total = args.trainings * args.rounds
    rounds_done = max(1, run["completed_rounds"])
    minimum = minimum_requests(args.silos)  # Events are counted apart
    events = sum(1 for _, res, _, _, _ in run["requests"] if res == "events")
    per_round = (len(run["requests"]) - events) / rounds_done
    rss = [m for _, _, m in run["samples"]]
    cpu_steps = [(b[1] - a[1]) / max(1, b[0] - a[0])
                 for a, b in zip(run["samples"], run["samples"][1:], strict=False)]
    row = {"trainings": args.trainings, "silos": args.silos, "rounds": args.rounds,
           "interval_s": args.interval, "phases": run["phases"],
           "completed_rounds": run["completed_rounds"], "rounds_expected": rounds_total,
           "jobs": len(names), "jobs_expected": len(expected), "lost": lost[:10],
           "unexpected": extra[:10], "duplicate_names": duplicates, "job_creates": created,
           "create_conflicts": conflicts, "created_twice": twice[:10],
           "forbidden": forbidden, "wall_s": run["wall_s"],
           "operator_cpu_s": run["operator_cpu_s"],
           "operator_cpu_s_per_round": run["operator_cpu_s"] / rounds_done,
           "operator_cpu_s_per_round_median": statistics.median(cpu_steps or [0.0]),
           "apiserver_cpu_s_total": run["apiserver_cpu_s_total"],
           "requests": len(run["requests"]), "requests_per_round": per_round,
           "events_per_round": events / rounds_done,
           "requests_minimum_per_round": minimum,
           "requests_by_kind": dict(by_kind.most_common()),
           "rss_start_mib": run["rss_start_mib"], "rss_end_mib": run["rss_end_mib"],
           "rss_first_round_mib": rss[0] if rss else None,
           "rss_last_round_mib": rss[-1] if rss else None,
           "rss_growth_mib": (rss[-1] - rss[0]) if rss else None,
           "samples": run["samples"]}
    ok = (all(p == "Succeeded" for p in run["phases"]) and run["completed_rounds"] == rounds_total
          and not lost and not extra and duplicates == 0 and conflicts == 0 and not twice
          and created == len(expected) and not forbidden)
    big = run.get("big")
    if big:
        row["max_round"] = big
        # etcd's default object limit is 1.5 MiB; a container's environment, the kernel's
        # 128 KiB per string; a termination message, Kubernetes' 4096 bytes.
        ok = ok and (big["phase"] == "Succeeded" and big["jobs"] == big["silos"] + 1
                     and big["rejected_match"] and big["round_object_bytes"] < 1536 * 1024
                     and big["aggregator_message_bytes"] <= termination.LIMIT)
    row["ok"] = ok
    print(json.dumps({k: v for k, v in row.items() if k != "samples"}))
    print("\n".join([
        "| what | measured |", "|---|---|",
        f"| trainings × silos × rounds | {args.trainings} × {args.silos} × {args.rounds} |",
        f"| rounds completed | {run['completed_rounds']} of {rounds_total} |",
        f"| Jobs (expected) | {len(names)} ({len(expected)}); lost {len(lost)}, "
        f"created twice {len(twice)}, 409s {conflicts} |",
        f"| wall time | {run['wall_s']:.0f} s |",
        f"| operator CPU per round | {row['operator_cpu_s_per_round']:.2f} s |",
        f"| operator requests per round | {per_round:.0f} (minimum {minimum}, "
        f"{per_round / minimum:.2f}×), plus {events / rounds_done:.0f} Events |",
        f"| operator RSS, first → last completed round | {row['rss_first_round_mib']:.0f} → "
        f"{row['rss_last_round_mib']:.0f} MiB |", *([
            f"| one round of {big['silos']} silos (the schema's maximum) | {big['phase']} in "
            f"{big['wall_s']:.0f} s, operator CPU {big['operator_cpu_s']:.1f} s; round object "
            f"{big['round_object_bytes'] / 1024:.0f} KiB, largest Job "
            f"{big['largest_job_bytes'] / 1024:.1f} KiB (env {big['largest_env_bytes']} B), "
            f"aggregator's message {big['aggregator_message_bytes']} B with "
            f"{big['rejected_reported']}/{big['rejected_expected']} rejected silos reported |"]
            if big else [])]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "load-detail.json").write_text(json.dumps(row, indent=1) + "\n")
    (out / "load.json").write_text(json.dumps([
        {"metric": "load.rounds_completed", "ours": run["completed_rounds"],
         "reference": rounds_total, "reference_is": "bound",
         "ratio": run["completed_rounds"] / rounds_total, "target": 1.0, "better": "higher"},
        {"metric": "load.jobs_created", "ours": created, "reference": len(expected),
         "reference_is": "bound", "ratio": created / len(expected), "target": 1.0,
         "better": "lower"},
        {"metric": "load.requests_per_round", "ours": per_round, "reference": minimum,
         "reference_is": "bound", "ratio": per_round / minimum, "target": None,
         "better": "lower"},
    ], indent=1) + "\n")
    if not ok:
        print("load: FAILED (see above)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
