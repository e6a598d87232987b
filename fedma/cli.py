"""The ``fedma`` command: the local federation, the two Job entrypoints, and helpers.

Heavy imports (torch, transformers) happen inside commands, so ``fedma validate`` and
``--help`` answer instantly. Expected failures (bad spec, bad data, bad artifact) print one
clear message and exit with status 2; only bugs print tracebacks.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedma import roundref
from fedma.spec import FederatedRound, FederatedTraining, SpecError, load

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Federated alignment pre-training of multimodal LLM projectors.")
err = Console(stderr=True)


def _fail(msg: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _expected_errors() -> tuple[type[BaseException], ...]:
    from fedma.aggregate.run import AggregationError
    from fedma.data.manifest import DataError
    from fedma.local.runner import RoundFailed
    from fedma.model.fingerprint import FingerprintMismatch
    from fedma.store import ArtifactError

    return (SpecError, DataError, ArtifactError, FingerprintMismatch, AggregationError,
            RoundFailed, FileNotFoundError, ValueError, FloatingPointError)


def _load_kind(path: Path, kind: type) -> FederatedTraining | FederatedRound:
    obj = load(path)
    if not isinstance(obj, kind):
        raise SpecError(str(path), [("kind", f"expected {kind.__name__}, got {obj.kind}")])
    return obj


def _load_round(path: Path | None) -> FederatedRound:
    """From ``--round FILE`` (YAML), else the file the operator mounts into a Job
    (``$FEDMA_ROUND_FILE``, checked against ``$FEDMA_ROUND_SHA256``; fedma.roundref)."""
    if path is not None:
        return _load_kind(path, FederatedRound)  # type: ignore[return-value]
    rnd = roundref.from_environment()
    if rnd is None:
        raise SpecError("--round", [("(option)", f"give --round FILE or set "
                                                 f"${roundref.FILE_ENV}")])
    return rnd


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    # Per-tensor loading bars are noise for projector-sized work; our own progress is shown.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        pass


@app.command()
def validate(
    manifest: Annotated[Path, typer.Argument(help="FederatedTraining/Round YAML")],
) -> None:
    """Check a manifest against the API types; print the field paths at fault."""
    try:
        obj = load(manifest)
    except SpecError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"{manifest}: valid {obj.kind} {obj.metadata.name!r}")


@app.command()
def run(manifest: Annotated[Path, typer.Argument(help="FederatedTraining YAML")],
        out: Annotated[Path | None, typer.Option(help="report/log folder")] = None,
        parallel: Annotated[int, typer.Option(help="silos trained at once (0 = cores)")] = 0,
        ) -> None:
    """Run a FederatedTraining locally; re-running resumes after the last completed round."""
    _offline()
    try:
        training = _load_kind(manifest, FederatedTraining)
        from fedma.local.runner import LocalRunner

        workdir = out or manifest.parent / f"{training.metadata.name}-run"
        report = LocalRunner(training, workdir, parallel=parallel).run()  # type: ignore[arg-type]
    except _expected_errors() as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"report: {workdir / 'report.json'} ({len(report['rounds'])} rows)")


@app.command()
def demo(out: Annotated[Path, typer.Option(help="where data, store and report go")] = Path(
             "demo-out"),
         silos: Annotated[int, typer.Option(min=1, max=16)] = 4,
         rounds: Annotated[int, typer.Option(min=1, max=100)] = 5,
         alpha: Annotated[float, typer.Option(help="Dirichlet label skew")] = 0.5,
         train_samples: Annotated[int, typer.Option(min=64)] = 3200,
         eval_samples: Annotated[int, typer.Option(min=10)] = 200,
         parallel: Annotated[int, typer.Option(help="silos trained at once (0 = cores)")] = 0,
         ) -> None:
    """Build the demo data and models, then run a non-IID federation on this CPU."""
    _offline()
    try:
        from fedma.local.demo import prepare_demo
        from fedma.local.runner import LocalRunner

        with err.status("preparing demo data and the bundled backbones (first run converts them)"):
            manifest = prepare_demo(out, n_silos=silos, alpha=alpha, rounds=rounds,
                                    n_train=train_samples, n_eval=eval_samples)
        training = _load_kind(manifest, FederatedTraining)
        err.print(f"manifest: {manifest}")
        report = LocalRunner(training, out, parallel=parallel).run()  # type: ignore[arg-type]
    except _expected_errors() as exc:
        raise _fail(str(exc)) from None
    first, last = report["rounds"][0], report["rounds"][-1]
    typer.echo(
        f"held-out loss {first['heldout_loss']:.3f} → {last['heldout_loss']:.3f}, retrieval "
        f"accuracy {first['retrieval_accuracy']:.1%} → {last['retrieval_accuracy']:.1%}; "
        f"report: {Path(out) / 'report.json'}, plot: {Path(out) / 'curves.png'}")


@app.command("train-silo")
def train_silo(
    silo: Annotated[str, typer.Option(help="the silo this Job trains for")],
    round_file: Annotated[Path | None, typer.Option(
        "--round", help="FederatedRound YAML (default: $FEDMA_ROUND_FILE)")] = None,
    termination_log: Annotated[str | None, typer.Option(
        envvar="FEDMA_TERMINATION_LOG", help="where to write the JSON summary "
        "(Kubernetes: /dev/termination-log)")] = None,
    engine: Annotated[str | None, typer.Option(help="override spec.training.engine")] = None,
) -> None:
    """Job entrypoint: train one silo's projector update for one round."""
    _offline()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from fedma.train.silo import train_silo as _train
    from fedma.train.silo import write_termination

    try:
        rnd = _load_round(round_file)
        summary = _train(rnd, silo, termination_log=termination_log, engine=engine,  # type: ignore[arg-type]
                         progress=True)
    except _expected_errors() as exc:
        write_termination(termination_log, {"silo": silo, "status": "Failed",
                                            "reason": f"{type(exc).__name__}: {exc}"[:2000]})
        raise _fail(str(exc)) from None
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(json.dumps(summary, sort_keys=True))


@app.command()
def aggregate(
    include: Annotated[list[str], typer.Option(help="SILO=SHA256 of an accepted update")],
    round_file: Annotated[Path | None, typer.Option(
        "--round", help="FederatedRound YAML (default: $FEDMA_ROUND_FILE)")] = None,
    summary_out: Annotated[Path | None, typer.Option(help="also write the summary here")] = None,
    termination_log: Annotated[str | None, typer.Option(
        envvar="FEDMA_TERMINATION_LOG", help="where to write the JSON summary "
        "(Kubernetes: /dev/termination-log)")] = None,
    max_update_norm: Annotated[float | None, typer.Option(
        help="reject larger updates (0 = off; default: spec.aggregation.robust.maxUpdateNorm)")
    ] = None,
) -> None:
    """Job entrypoint: aggregate the accepted silo updates into the next global projector."""
    _offline()
    from fedma.aggregate.run import aggregate_round

    try:
        rnd = _load_round(round_file)
        included: dict[str, str | None] = {}
        for item in include:
            silo, _, digest = item.partition("=")
            included[silo] = digest or None
        summary = aggregate_round(rnd, included, max_update_norm)
    except _expected_errors() as exc:
        from fedma.train.silo import write_termination

        write_termination(termination_log, {"status": "Failed",
                                            "reason": f"{type(exc).__name__}: {exc}"[:2000]})
        raise _fail(str(exc)) from None
    text = json.dumps(summary, sort_keys=True)
    if termination_log:
        from fedma.train.silo import write_termination

        write_termination(termination_log, summary, sorted(included))
    if summary_out:
        tmp = summary_out.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(summary_out)
    typer.echo(text)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted; completed rounds are kept, run the same command to resume")
        sys.exit(130)


if __name__ == "__main__":
    main()
