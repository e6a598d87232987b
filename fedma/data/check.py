"""Check a training's data before any compute is spent on it.

Every local silo's manifest is read and every image decoded, and all bad lines are reported
at once with ``file:line``: the silo operator fixes their data in one pass instead of one
failed round per bad image. Used by ``fedma validate`` (a manifest may name paths that exist
only inside the silos' pods: those are listed as not checked here) and at the start of
``fedma run`` (where every path must exist).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fedma.data.manifest import DataError, data_error, decode_errors, scan_manifest
from fedma.spec import FederatedRound, FederatedTraining


@dataclass
class DataCheck:
    """What was found for one manifest: ``missing`` when it is not on this machine."""

    what: str  # "silo hospital-a", "evaluation"
    path: Path
    records: int = 0
    errors: list[str] = field(default_factory=list)
    missing: bool = False

    def line(self) -> str:
        if self.missing:
            return f"{self.what}: {self.path} is not on this machine (not checked)"
        if self.errors:
            return f"{self.what}: {len(self.errors)} bad line(s) of {self.path}"
        return f"{self.what}: {self.records} records, every image decoded ({self.path})"


def check_one(what: str, path: str | Path, decode: bool = True) -> DataCheck:
    p = Path(path)
    if not p.is_file():
        return DataCheck(what, p, missing=True)
    try:
        records, errors = scan_manifest(p)
    except (OSError, UnicodeDecodeError) as exc:
        return DataCheck(what, p, errors=[f"{p}: cannot read ({exc})"])
    if decode:
        errors += decode_errors(records, p)
        errors.sort(key=_line_of)
    return DataCheck(what, p, len(records), errors)


def _line_of(message: str) -> int:
    head = message.split(": ", 1)[0]
    tail = head.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def check_data(obj: FederatedTraining | FederatedRound, decode: bool = True) -> list[DataCheck]:
    """One check per silo and for the evaluation set, in the spec's order."""
    spec = obj.spec
    checks = [check_one(f"silo {s.name}", s.data.path, decode) for s in spec.silos]
    if spec.evaluation is not None:
        checks.append(check_one("evaluation", spec.evaluation.data.path, decode))
    return checks


def require(checks: list[DataCheck]) -> list[DataCheck]:
    """For data that must be on this machine: a missing manifest is an error too, and every
    problem of every check is raised together as one DataError."""
    problems: list[str] = []
    for c in checks:
        if c.missing:
            problems.append(f"{c.path}: data manifest of {c.what} not found")
        problems += c.errors
    if problems:
        raise data_error(problems)
    return checks


def require_data(obj: FederatedTraining | FederatedRound, decode: bool = True) -> list[DataCheck]:
    """As :func:`check_data`, for a run on this machine (:func:`require`)."""
    return require(check_data(obj, decode))


def require_models(obj: FederatedTraining | FederatedRound) -> None:
    """A local run loads the backbones from these folders: say at once, naming the field,
    when one is not there (rather than after the store and the first silo started)."""
    model = obj.spec.model
    missing = [(f"spec.model.{field}.path", path) for field, path in
               (("vision", model.vision.path), ("languageModel", model.language_model.path))
               if not Path(path).exists()]
    if missing:
        raise DataError("\n".join(
            f"{where}: {path} not found on this machine (a model folder; `fedma init` writes "
            "the bundled backbones' paths)" for where, path in missing))


__all__ = ["DataCheck", "DataError", "check_data", "check_one", "require", "require_data",
           "require_models"]
