"""The local backend: a FederatedTraining run as subprocesses over a local (or S3) store.

Each silo's training and each aggregation run as the very same commands a Kubernetes Job runs
(``fedma train-silo``, ``fedma aggregate``), so the local runner exercises the container
contract end to end. Decisions (launch, retry, exclude a straggler, aggregate, fail) come from
the shared pure state machine in :mod:`fedma.rounds`, exactly as in the operator.

Progress lives in the store: a round is complete when its global projector's manifest is
committed. Running the same manifest again resumes after the last completed round, after
checking the projector it resumes from against its digest; raising ``spec.rounds`` extends a
finished training (the only spec change allowed once it started), and ``recompute`` un-commits
the rounds from one on so that they run again (their intact silo updates are reused).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedma.console import make_console
from fedma.rounds import JobState, Observation, Policy, RoundPhase, SiloObservation, decide
from fedma.spec import FederatedTraining, ProjectorRef, dump, round_spec
from fedma.store import ArtifactError, Store, global_rel, server_state_rel


class RoundFailed(RuntimeError):
    pass


class Interrupted(Exception):
    """Ctrl-C during a run; the message says what is kept and how to go on."""


@dataclass
class _Attempt:
    proc: subprocess.Popen[bytes]
    attempt: int
    summary_path: Path
    log_path: Path
    started: float = field(default_factory=time.monotonic)


def _cli() -> list[str]:
    return [sys.executable, "-m", "fedma.cli"]


def _tail(path: Path, n: int = 400) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else "")[-n:]


class LocalRunner:
    def __init__(self, training: FederatedTraining, workdir: Path, parallel: int = 0,
                 console: Console | None = None, evaluate: bool = True,
                 recompute: int | None = None):
        self.training = training
        self.spec = training.spec
        self.workdir = Path(workdir)
        self.console = console or make_console()
        self.store = Store(self.spec.artifacts.uri)
        cpus = os.cpu_count() or 1
        self.parallel = parallel or max(1, min(len(self.spec.silos), cpus))
        self.threads = self.spec.training.threads or max(1, cpus // self.parallel)
        self.do_evaluate = evaluate and self.spec.evaluation is not None
        self.report_path = self.workdir / "report.json"
        self.recompute = recompute
        self.pass_rounds = self.spec.rounds  # the rounds it started with (_check_spec)
        self._model = None
        self._evaluator = None

    # -- model / evaluation (in-process: features are cached across rounds) ----------------
    def _load_model(self):
        if self._model is None:
            from fedma.model.llava import load_alignment_model

            self._model = load_alignment_model(self.spec.model, self.spec.training.seed)
        return self._model

    def _evaluate(self, rel: str) -> dict[str, float]:
        if not self.do_evaluate:
            return {}
        if self._evaluator is None:
            from fedma.evaluate import Evaluator

            self._evaluator = Evaluator.from_spec(self._load_model(), self.spec.evaluation)  # type: ignore[arg-type]
        return self._evaluator.evaluate(self.store.get_tensors(rel), self.store.uri(rel))

    # -- report -----------------------------------------------------------------------------
    def _load_report(self) -> dict[str, Any]:
        if self.report_path.exists():
            report = json.loads(self.report_path.read_text())
            if report.get("training") == self.training.metadata.name:
                return report
        return {"training": self.training.metadata.name, "rounds": []}

    def _save_report(self, report: dict[str, Any]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        tmp = self.report_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(self.report_path)
        if self.do_evaluate and report["rounds"]:
            from fedma.local.report import plot_curves

            plot_curves(report, self.workdir / "curves.png")

    # -- rounds -----------------------------------------------------------------------------
    def _check_spec(self) -> None:
        """Resuming with a different spec would mix runs (other silos, other shards): refuse,
        except a raised ``spec.rounds``, which extends the training. The spec the training
        started with, and its rounds then (the rounds of one pass over the data), live in
        ``<name>/training.json`` in the store."""
        name = self.training.metadata.name
        rel = self._training_rel()
        current = dump(self.training)["spec"]
        if not self.store.exists(rel):
            return  # not started: recorded once round 1's input has passed its checks
        saved = self.store.get_json(rel)
        if "passRounds" not in saved:  # written by a version without extension: the spec
            saved = {"spec": saved, "passRounds": saved.get("rounds")}
        started = saved["spec"]
        self.pass_rounds = int(saved["passRounds"])
        changed = sorted(k for k in set(started) | set(current)
                         if k != "rounds" and started.get(k) != current.get(k))
        if changed:
            raise RoundFailed(
                f"spec.{', spec.'.join(changed)} changed since training {name!r} started in "
                f"{self.store.uri('')}; a started training's spec is immutable except "
                "spec.rounds, which may be raised to extend it: restore the rest, or use a "
                "new metadata.name (spec.initialProjector can start it from this one's "
                "projector)")
        if current["rounds"] < started["rounds"]:
            raise RoundFailed(
                f"spec.rounds: {current['rounds']} is below the {started['rounds']} training "
                f"{name!r} was run with in {self.store.uri('')}; rounds can only be raised "
                "(to extend it)")
        if current["rounds"] > started["rounds"]:
            self.store.put_json(rel, {"spec": current, "passRounds": self.pass_rounds})
            self.console.print(f"[bold]extending[/] {name}: {started['rounds']} → "
                               f"{current['rounds']} rounds")

    def _training_rel(self) -> str:
        return f"{self.training.metadata.name}/training.json"

    def _record_start(self) -> None:
        if not self.store.exists(self._training_rel()):
            self.store.put_json(self._training_rel(), {"spec": dump(self.training)["spec"],
                                                       "passRounds": self.spec.rounds})

    def _round0_rel(self) -> str:
        """Where the projector round 1 starts from lives: spec.initialProjector, else the
        seeded initialisation committed as global round 0."""
        ref = self.spec.initial_projector
        return self.store.rel(ref.uri) if ref else global_rel(self.training.metadata.name, 0)

    def _initial(self) -> ProjectorRef:
        ref = self.spec.initial_projector
        if ref is not None:
            from fedma.model.projector import load_projector_state

            try:
                state = self.store.get_tensors(self.store.rel(ref.uri), ref.digest)
                load_projector_state(self._load_model().projector, state, source=ref.uri)
            except (ArtifactError, ValueError) as exc:
                raise RoundFailed(f"spec.initialProjector: {exc}") from None
            return ref
        rel = global_rel(self.training.metadata.name, 0)
        if not self.store.committed(rel):
            from fedma.model.projector import projector_state

            self.store.put_tensors(rel, projector_state(self._load_model().projector), {
                "kind": "global-projector", "round": 0, "seed": self.spec.training.seed,
                "projector": self.spec.model.projector.type})
        return ProjectorRef(uri=self.store.uri(rel), digest=self.store.get_manifest(rel)["sha256"])

    def _discard_from(self, first: int) -> None:
        """``--recompute``: rounds ``first``… are un-committed (Store.discard), so they run
        again; their silo updates are reused where they pass their digests and were trained
        on the same input."""
        name = self.training.metadata.name
        if first == 0 and self.spec.initial_projector is not None:
            raise RoundFailed("recompute 0: this training starts from spec.initialProjector, "
                              "which it did not compute; recompute from round 1 or later")
        r = first
        while r <= self.spec.rounds:
            self.store.discard(server_state_rel(name, r))
            if not self.store.discard(global_rel(name, r)):
                break  # rounds commit in order: none after this one is committed either
            r += 1
        self.console.print(f"[bold]recomputing[/] {name} from round {first}")

    def _check_intact(self, r: int, ref: ProjectorRef, what: str) -> None:
        """The artifact the next round starts from, read back against its digest: a modified
        or truncated one would fail every silo of that round, each retried."""
        try:
            self.store.get_bytes(self.store.rel(ref.uri), ref.digest)
        except ArtifactError as exc:
            if r == 0 and self.spec.initial_projector is not None:
                raise RoundFailed(f"spec.initialProjector: {exc}") from None
            kept = ("no round is kept" if r <= 1 else "round 1 is kept" if r == 2
                    else f"rounds 1–{r - 1} are kept")
            made = "the seeded initial projector" if r == 0 else f"round {r}'s {what}"
            raise RoundFailed(
                f"{exc}. It is {made}: recompute it with the same command and "
                f"--recompute {r} ({kept}; silo updates that pass their digests are "
                "reused)") from None

    def _completed(self, r: int) -> tuple[ProjectorRef, ProjectorRef | None] | None:
        rel = global_rel(self.training.metadata.name, r)
        if not self.store.committed(rel):
            return None
        m = self.store.get_manifest(rel)
        state = m.get("server_state")
        return (ProjectorRef(uri=self.store.uri(rel), digest=m["sha256"]),
                ProjectorRef(**state) if state else None)

    def run(self) -> dict[str, Any]:
        name = self.training.metadata.name
        report = self._load_report()
        rows = {row["round"]: row for row in report["rounds"]}
        self._check_spec()
        if self.recompute is not None:
            self._discard_from(self.recompute)
            rows = {r: row for r, row in rows.items() if r < self.recompute}
        current = self._initial()
        state: ProjectorRef | None = None
        start = 1
        while start <= self.spec.rounds and (done := self._completed(start)):
            current, state = done
            start += 1
        self._check_intact(start - 1, current, "global projector")
        if state is not None:
            self._check_intact(start - 1, state, "server state")
        self._record_start()
        if start > 1:
            self.console.print(f"[bold]resuming[/] {name}: rounds 1–{start - 1} already complete")
        self._print_header()
        for r in range(0, start):  # completed rounds: evaluate those the report lacks, show all
            if r not in rows:
                rel = self._round0_rel() if r == 0 else global_rel(name, r)
                rows[r] = {"round": r, **self._evaluate(rel), "silos": 0, "seconds": 0.0}
            self._print_row(rows[r])
        report["rounds"] = [rows[k] for k in sorted(rows)]
        if self._evaluator is not None:
            report["retrieval_chance"] = self._evaluator.chance
        self._save_report(report)

        # Ctrl-C anywhere in a round (training, evaluation, the report) says what the store
        # holds; a round whose global projector is committed is kept.
        try:
            for r in range(start, self.spec.rounds + 1):
                t0 = time.perf_counter()
                rnd = round_spec(self.training, r, current, state, self.pass_rounds)
                result = self.run_round(rnd)
                current = ProjectorRef(**result["output"])
                server = result.get("server_state")
                state = ProjectorRef(**server) if server else None
                row = {"round": r, **self._evaluate(self.store.rel(current.uri)),
                       "silos": len(result["included"]), "train_loss": result["loss"],
                       "seconds": round(time.perf_counter() - t0, 2),
                       "excluded": result["excluded"], "notes": result.get("notes") or {}}
                if result.get("privacy"):
                    row["epsilon"] = result["privacy"]["epsilon"]
                rows[r] = row
                report["rounds"] = [rows[k] for k in sorted(rows)]
                report["latest"] = current.model_dump()
                self._save_report(report)
                self._print_row(row)
        except KeyboardInterrupt:
            raise self._interrupted() from None
        return report

    def _interrupted(self) -> Interrupted:
        """What Ctrl-C leaves: the rounds whose global projector is committed (a round
        interrupted while it was being evaluated is kept; its row is added on resume)."""
        done = 0
        while done < self.spec.rounds and self._completed(done + 1):
            done += 1
        kept = ("no round had completed" if done == 0 else "round 1 is kept" if done == 1
                else f"rounds 1–{done} are kept")
        where = f"in {self.store.uri(self.training.metadata.name)}"
        if done == self.spec.rounds:
            return Interrupted(f"interrupted after the last round; every round is kept {where}; "
                               "run the same command to finish the report")
        return Interrupted(f"interrupted in round {done + 1} of {self.spec.rounds}; {kept} "
                           f"{where}; run the same command to resume")

    def run_round(self, rnd) -> dict[str, Any]:
        spec = rnd.spec
        rdir = self.workdir / "rounds" / f"round-{spec.round:04d}"
        rdir.mkdir(parents=True, exist_ok=True)
        round_file = rdir / "round.yaml"
        round_file.write_text(yaml.safe_dump(dump(rnd), sort_keys=False))
        policy = Policy(tuple(s.name for s in spec.silos), spec.quorum,
                        spec.aggregation.deadline_seconds, spec.aggregation.backoff_limit)
        running: dict[str, _Attempt] = {}
        observed: dict[str, SiloObservation] = {s: SiloObservation() for s in policy.silos}
        summaries: dict[str, dict[str, Any]] = {}
        t_start = time.monotonic()
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}

        try:
            with Progress(TextColumn("round {task.fields[r]}"), BarColumn(),
                          TextColumn("{task.completed}/{task.total} silos · {task.description}"),
                          TimeElapsedColumn(), console=self.console, transient=True,
                          disable=not self.console.is_terminal) as bar:
                task = bar.add_task("training", total=len(policy.silos), r=spec.round)
                while True:
                    self._observe(running, observed, summaries)
                    elapsed = time.monotonic() - t_start
                    decision = decide(policy, Observation(observed, elapsed_s=elapsed))
                    bar.update(task, completed=len(decision.included),
                               description=f"{len(running)} running")
                    for launch in decision.launch:
                        if len(running) >= self.parallel:
                            break
                        running[launch.silo] = self._launch_silo(round_file, rdir, launch.silo,
                                                                 launch.attempt, env)
                        observed[launch.silo] = SiloObservation(launch.attempt, JobState.ACTIVE)
                    if decision.phase == RoundPhase.FAILED:
                        raise RoundFailed(f"round {spec.round}: {decision.message}")
                    if decision.aggregate is not None:
                        self._stop(running)  # stragglers past the deadline
                        bar.update(task, description="aggregating")
                        included = decision.aggregate.included
                        accepted = {s: summaries[s] for s in included}
                        result = self._aggregate(round_file, rdir, accepted)
                        result["excluded"] = {**decision.reasons, **result.get("rejected", {})}
                        return result
                    time.sleep(0.1)
        finally:
            # Whatever ends the round (success, failure, Ctrl-C), no silo process outlives it.
            self._stop(running)

    @staticmethod
    def _observe(running: dict[str, _Attempt], observed: dict[str, SiloObservation],
                 summaries: dict[str, dict[str, Any]]) -> None:
        """Turn finished silo processes into observations (their summary or failure reason)."""
        for silo, att in list(running.items()):
            rc = att.proc.poll()
            if rc is None:
                continue
            del running[silo]
            summary: dict[str, Any] = {}
            if att.summary_path.exists():
                try:
                    summary = json.loads(att.summary_path.read_text())
                except json.JSONDecodeError:
                    summary = {}
            if rc == 0 and summary.get("status") == "Succeeded":
                summaries[silo] = summary
                observed[silo] = SiloObservation(att.attempt, JobState.SUCCEEDED)
            else:
                reason = summary.get("reason") or _tail(att.log_path) or f"exit code {rc}"
                observed[silo] = SiloObservation(att.attempt, JobState.FAILED, reason,
                                                 permanent=summary.get("retry") is False)

    def _launch_silo(self, round_file: Path, rdir: Path, silo: str, attempt: int,
                     env: dict[str, str]) -> _Attempt:
        summary = rdir / f"{silo}.attempt-{attempt}.json"
        log = rdir / f"{silo}.attempt-{attempt}.log"
        summary.unlink(missing_ok=True)
        cmd = [*_cli(), "train-silo", "--round", str(round_file), "--silo", silo,
               "--termination-log", str(summary)]
        with log.open("wb") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        return _Attempt(proc, attempt, summary, log)

    def _aggregate(self, round_file: Path, rdir: Path,
                   summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
        out = rdir / "aggregate.json"
        log = rdir / "aggregate.log"
        cmd = [*_cli(), "aggregate", "--round", str(round_file), "--summary-out", str(out)]
        for silo, s in sorted(summaries.items()):
            cmd += ["--include", f"{silo}={s['update']['digest']}"]
        with log.open("wb") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
        if rc != 0 or not out.exists():
            raise RoundFailed(f"aggregation failed (exit {rc}): {_tail(log)} — log: {log}")
        return json.loads(out.read_text())

    @staticmethod
    def _stop(running: dict[str, _Attempt]) -> None:
        for att in running.values():
            att.proc.terminate()
        for att in running.values():
            try:
                att.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                att.proc.kill()
        running.clear()

    # -- console ----------------------------------------------------------------------------
    def _print_header(self) -> None:
        self.console.print(
            f"[bold]{self.training.metadata.name}[/]: {len(self.spec.silos)} silos, "
            f"{self.spec.rounds} rounds, strategy {self.spec.aggregation.strategy}, "
            f"{self.parallel} silo(s) at a time × {self.threads} thread(s)")

    def _print_row(self, row: dict[str, Any]) -> None:
        table = Table(show_header=row["round"] == 0, box=None, pad_edge=False)
        for col, width in (("round", 5), ("held-out loss", 13), ("retrieval acc", 13),
                           ("silos", 5), ("seconds", 8)):
            table.add_column(col, justify="right", min_width=width)

        def fmt(key: str, spec: str) -> str:
            v = row.get(key)
            return "–" if v is None else format(v, spec)

        table.add_row(str(row["round"]), fmt("heldout_loss", ".4f"),
                      fmt("retrieval_accuracy", ".1%"), str(row.get("silos", 0)),
                      fmt("seconds", ".1f"))
        self.console.print(table)
        for silo, reason in (row.get("excluded") or {}).items():
            self.console.print(f"  [yellow]excluded[/] {silo}: {reason}")
        for silo, note in (row.get("notes") or {}).items():
            self.console.print(f"  [cyan]bounded[/] {silo}: {note}")
