"""How a Job receives its round: a file (a mounted ConfigMap) plus the sha256 it must have.

The round used to travel inline as ``$FEDMA_ROUND``: every Job and pod then carried the whole
spec (about 30 KiB at 100 silos, past the kernel's 128 KiB limit for one variable at about 445,
so the container could not start), and every list of Jobs or pods the operator read grew with
it. By reference, a Job carries a name and a digest; the file is the round's one ConfigMap per
namespace, and the Job refuses a file whose sha256 differs (edited, or left over from another
run of the same name), like every other artifact it reads.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from fedma.spec import FederatedRound, SpecError, dump, parse

FILE_ENV = "FEDMA_ROUND_FILE"
SHA256_ENV = "FEDMA_ROUND_SHA256"
KEY = "round.json"  # the ConfigMap's key, and the file's name where it is mounted


def payload(rnd: FederatedRound) -> tuple[str, str]:
    """The round as the Job reads it (canonical JSON) and that text's sha256."""
    text = json.dumps(dump(rnd), sort_keys=True, separators=(",", ":"))
    return text, hashlib.sha256(text.encode()).hexdigest()


def load(path: Path, digest: str | None) -> FederatedRound:
    """The round in ``path``, refused unless its bytes have ``digest`` (when one is given)."""
    source = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(source, [("(file)", f"cannot read: {exc.strerror}")]) from None
    got = hashlib.sha256(data).hexdigest()
    if digest and got != digest:
        raise SpecError(source, [("(file)", f"sha256 {got} differs from ${SHA256_ENV} "
                                            f"{digest}: the round file was changed or is "
                                            "another round's; not training on it")])
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise SpecError(source, [("(json)", str(exc))]) from None
    rnd = parse(obj, source=source)
    if not isinstance(rnd, FederatedRound):
        raise SpecError(source, [("kind", f"expected FederatedRound, got {rnd.kind}")])
    return rnd


def from_environment() -> FederatedRound | None:
    """The round the operator gave this Job, or None outside a Job."""
    path = os.environ.get(FILE_ENV)
    return load(Path(path), os.environ.get(SHA256_ENV)) if path else None
