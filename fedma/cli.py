"""The ``fedma`` command: the local federation, the two Job entrypoints, and helpers.

Heavy imports (torch, transformers) happen inside commands, so ``fedma validate`` and
``--help`` answer instantly. Expected failures (bad spec, bad data, bad artifact) print one
clear message and exit with status 2; only bugs print tracebacks.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from fedma import package_version, roundref
from fedma.console import make_console
from fedma.spec import FederatedRound, FederatedTraining, SpecError, load

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Federated alignment pre-training of multimodal LLM projectors.")
err = make_console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"fedma {package_version()}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="print the version and exit")] = False) -> None:
    """Federated alignment pre-training of multimodal LLM projectors."""


def _fail(msg: str, code: int = 2) -> typer.Exit:
    # Messages of wrapped errors may already say "error: ..." (a child's last line).
    msg = msg.removeprefix("error: ")
    err.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True, markup=True)
    return typer.Exit(code)


INTERRUPTED = 130  # the shell's code for a command stopped by SIGINT


def _expected_errors() -> tuple[type[BaseException], ...]:
    from fedma.aggregate.run import AggregationError
    from fedma.data.manifest import DataError
    from fedma.local.runner import RoundFailed
    from fedma.local.starter import StarterError
    from fedma.model.fingerprint import FingerprintMismatch
    from fedma.store import ArtifactError

    return (SpecError, DataError, ArtifactError, FingerprintMismatch, AggregationError,
            RoundFailed, StarterError, FileNotFoundError, ValueError, FloatingPointError)


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
    data: Annotated[bool, typer.Option(
        help="also read every local silo's data and decode every image")] = True,
) -> None:
    """Check a manifest against the API types (naming the field paths at fault) and the data
    of every silo on this machine (naming file:line of every bad record)."""
    from fedma.data.check import check_data

    try:
        obj = load(manifest)
    except SpecError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"{manifest}: valid {obj.kind} {obj.metadata.name!r}")
    if not data:
        return
    checks = check_data(obj)
    for c in checks:
        typer.echo(f"  {c.line()}")
    bad = [e for c in checks for e in c.errors]
    if bad:
        from fedma.data.manifest import data_error

        raise _fail(str(data_error(bad)))


@app.command()
def fingerprint(
    path: Annotated[Path, typer.Argument(help="a backbone's folder of *.safetensors files")],
    gguf_file: Annotated[str | None, typer.Option(help="a GGUF file in PATH instead")] = None,
) -> None:
    """Print the fingerprint of a backbone's weight files, the value for the spec's
    ``model.vision.fingerprint`` / ``model.languageModel.fingerprint``."""
    from fedma.model.fingerprint import fingerprint_weights

    try:
        typer.echo(fingerprint_weights(path, gguf_file))
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None


def _interrupted(exc: BaseException) -> typer.Exit:
    err.print(str(exc) if str(exc) else "interrupted", highlight=False, soft_wrap=True)
    return typer.Exit(INTERRUPTED)


@app.command()
def run(manifest: Annotated[Path, typer.Argument(help="FederatedTraining YAML")],
        out: Annotated[Path | None, typer.Option(
            help="report/log folder (default: <manifest folder>/<name>-run)")] = None,
        parallel: Annotated[int, typer.Option(help="silos trained at once (0 = cores)")] = 0,
        recompute: Annotated[int | None, typer.Option(
            metavar="ROUND", min=0, max=10_000,
            help="run again from this round on (0: the seeded initial projector), e.g. when "
                 "a stored global fails its digest; intact silo updates are reused")] = None,
        ) -> None:
    """Run a FederatedTraining locally; re-running resumes after the last completed round,
    and a raised spec.rounds extends a finished training."""
    from fedma.data.check import require_data, require_models

    try:
        # The spec and the data first: a mistake is reported in a second, before torch loads.
        training = _load_kind(manifest, FederatedTraining)
        require_models(training)
        require_data(training)
    except _cheap_errors() as exc:
        raise _fail(str(exc)) from None
    _offline()
    try:
        from fedma.local.runner import Interrupted, LocalRunner

        workdir = out or manifest.parent / f"{training.metadata.name}-run"
        report = LocalRunner(training, workdir, parallel=parallel,  # type: ignore[arg-type]
                             recompute=recompute).run()
    except KeyboardInterrupt:  # outside a round (in one, or its evaluation: Interrupted)
        raise _interrupted(Exception(
            "interrupted; every completed round is kept in the store: run the same command "
            "to resume")) from None
    except Interrupted as exc:
        raise _interrupted(exc) from None
    except _expected_errors() as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"report: {workdir / 'report.json'} ({len(report['rounds'])} rows)")


def _cheap_errors() -> tuple[type[BaseException], ...]:
    from fedma.data.manifest import DataError

    return (SpecError, DataError)


@app.command()
def init(
    silos: Annotated[Path, typer.Argument(
        help="folder with one sub-folder per silo, each holding a data.jsonl")],
    out: Annotated[Path | None, typer.Option(
        help="manifest to write (default: <name>.yaml in the current folder)")] = None,
    name: Annotated[str | None, typer.Option(
        help="the training's name (default: the silos folder's name)")] = None,
    rounds: Annotated[int, typer.Option(min=1, max=10_000)] = 5,
    evaluation: Annotated[Path | None, typer.Option(
        "--eval", help="held-out data.jsonl, scored every round")] = None,
    store: Annotated[Path | None, typer.Option(
        help="local store folder (default: <name>-store beside the manifest)")] = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing manifest")] = False,
) -> None:
    """Write a starter FederatedTraining for your own silos, on the bundled backbones."""
    import re

    from fedma.data.check import check_one, require
    from fedma.local.starter import StarterError, find_silos, starter_manifest

    try:
        found = find_silos(silos)
        name = name or re.sub(r"[^a-z0-9-]+", "-", silos.resolve().name.lower()).strip("-")
        name = name[:63].strip("-") or "training"
        path = out or Path(f"{name}.yaml")
        if path.exists() and not force:
            raise StarterError(f"{path}: exists (give --force to overwrite, or --out FILE)")
        checks = [check_one(f"silo {n}", p) for n, p in found.items()]
        if evaluation is not None:
            checks.append(check_one("evaluation", evaluation))
        for c in checks:
            err.print(f"  {c.line()}", highlight=False)
        require(checks)
    except (*_cheap_errors(), StarterError) as exc:
        raise _fail(str(exc)) from None
    _offline()
    from fedma.model.bundled import efficientnet_lite0, smollm2_135m

    with err.status("preparing the bundled backbones (the first time converts them, ~1 min)"):
        vision, lm = efficientnet_lite0(), smollm2_135m()
    where = (store or path.parent / f"{name}-store")
    text = starter_manifest(name, found, vision, lm, where, rounds, evaluation)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    load(path)  # what was written is what validate and run accept
    typer.echo(f"wrote {path}: {len(found)} silos, {rounds} rounds; next: fedma run {path}")


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
        from fedma.local.runner import Interrupted, LocalRunner

        with err.status("preparing demo data and the bundled backbones (first run converts them)"):
            manifest = prepare_demo(out, n_silos=silos, alpha=alpha, rounds=rounds,
                                    n_train=train_samples, n_eval=eval_samples)
        training = _load_kind(manifest, FederatedTraining)
        err.print(f"manifest: {manifest}")
        report = LocalRunner(training, out, parallel=parallel).run()  # type: ignore[arg-type]
    except KeyboardInterrupt:
        raise _interrupted(Exception("interrupted; run the same command to go on")) from None
    except Interrupted as exc:
        raise _interrupted(exc) from None
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
        from fedma.data.manifest import DataError

        failed: dict[str, object] = {"silo": silo, "status": "Failed",
                                     "reason": f"{type(exc).__name__}: {exc}"[:2000]}
        if isinstance(exc, DataError):
            failed["retry"] = False  # the same data fails the same way: fedma.rounds
        write_termination(termination_log, failed, first=True)
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
                                            "reason": f"{type(exc).__name__}: {exc}"[:2000]},
                          first=True)
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
    # Ctrl-C is answered by each long command (what was kept, how to go on); click turns one
    # that arrives anywhere else into "Aborted!" and exit status 1.
    app()


if __name__ == "__main__":
    main()
