"""The JSON summary a Job leaves in its termination message, bounded so it always parses.

Kubernetes keeps at most 4096 bytes of a container's termination message and cuts the rest,
so a summary that grows with the number of silos (the aggregator's ``rejected``, ``notes``,
``included``) would reach the operator as invalid JSON from about 225 silos, and the round
would fail for a message, not for its work. :func:`encode` therefore never cuts text: it
drops what the operator does not act on, then replaces the per-silo maps by bit masks over
the silos the operator asked to aggregate (``requested``: it recorded that set in the round's
status, so it decodes the masks without the names), and shortens reasons to fit. The full
summary, every reason included, is always in the store (the output's manifest), which the
shortened message names. :func:`silo_flags` is the operator's side of the same format.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

LIMIT = 4096  # bytes Kubernetes keeps of a termination message
# What the operator acts on; anything else (reports, partition details) is left out first.
ESSENTIAL = ("silo", "round", "status", "reason", "update", "output", "server_state",
             "samples", "steps", "loss", "rejected", "notes", "privacy", "robust", "reused",
             "seconds", "retry")
REASON_MIN = 40  # a reason is never shortened below this many characters


def _text(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def _fits(obj: dict[str, Any], limit: int) -> bool:
    return len(_text(obj).encode()) <= limit


def mask(names: Iterable[str], order: Sequence[str]) -> str:
    """Base64 of a bit per name of ``order`` (bit i of byte i // 8, low bit first)."""
    chosen = set(names)
    bits = bytearray((len(order) + 7) // 8)
    for i, name in enumerate(order):
        if name in chosen:
            bits[i // 8] |= 1 << (i % 8)
    return base64.b64encode(bytes(bits)).decode()


def unmask(value: str, order: Sequence[str]) -> list[str]:
    bits = base64.b64decode(value)
    return [name for i, name in enumerate(order)
            if i // 8 < len(bits) and bits[i // 8] >> (i % 8) & 1]


def _shorten(reasons: dict[str, str], width: int) -> dict[str, str]:
    return {k: (v if len(v) <= width else v[: width - 1] + "…") for k, v in reasons.items()}


def encode(summary: dict[str, Any], requested: Sequence[str] = (), limit: int = LIMIT) -> str:
    """``summary`` as JSON of at most ``limit`` bytes, always complete and parseable.

    ``requested``: the silos the aggregation was asked for, in the order both sides use
    (sorted); without it the per-silo maps can only be shortened, not masked."""
    if _fits(summary, limit):
        return _text(summary)
    out = {k: summary[k] for k in ESSENTIAL if k in summary}
    out["truncated"] = True
    order = sorted(requested)
    for key in ("rejected", "notes"):
        reasons = out.get(key)
        if not isinstance(reasons, dict) or not reasons:
            continue
        if order and set(reasons) <= set(order):
            out[f"{key}Mask"] = mask(reasons, order)
        width = max((len(v) for v in reasons.values()), default=0)
        while width > REASON_MIN and not _fits(out, limit):
            width = max(REASON_MIN, width // 2)
            out[key] = _shorten(reasons, width)
        if not _fits(out, limit) and f"{key}Mask" in out:
            out[key] = {}  # the mask names them; the reasons are in the store
    for key in ("privacy", "robust", "seconds", "reused", "rejected", "notes"):
        if _fits(out, limit):
            break
        out.pop(key, None)
    if not _fits(out, limit):  # only a pathological reason gets here: keep the verdict
        out = {k: out[k] for k in ("silo", "round", "status", "update", "output",
                                   "server_state", "samples", "loss", "truncated",
                                   "rejectedMask", "notesMask") if k in out}
        if "reason" in summary:
            room = limit - len(_text({**out, "reason": ""}).encode()) - 8
            out["reason"] = str(summary["reason"])[: max(0, room // 4)]
    return _text(out)


def silo_flags(summary: dict[str, Any], key: str, requested: Sequence[str],
               missing: str) -> dict[str, str]:
    """The operator's side: ``rejected`` or ``notes`` as silo → reason, from the map and/or
    its mask; a silo named only by the mask gets ``missing`` as its reason."""
    out = {str(k): str(v) for k, v in (summary.get(key) or {}).items()}
    flagged = summary.get(f"{key}Mask")
    if isinstance(flagged, str):
        try:
            for name in unmask(flagged, sorted(requested)):
                out.setdefault(name, missing)
        except ValueError:
            pass  # not base64: the map alone stands
    return out


def write(path: str | None, summary: dict[str, Any], requested: Sequence[str] = (), *,
          first: bool = False) -> None:
    """Write the bounded summary to the termination-message path (nothing if ``path`` is
    unset: outside Kubernetes the summary is printed instead).

    Every rank of a torchrun Job shares one termination-message file, and torchrun stops the
    other ranks as soon as one fails. ``Path.write_text`` truncates at open, so a rank stopped
    between its open and its write left the file empty, and Kubernetes showed the log tail
    instead of the failing rank's summary. Here the file is never truncated before the whole
    message is written (one ``pwrite``; the length is cut after it), the ranks take turns under
    ``flock``, and with ``first`` (a failure) a message already there is kept: the first rank
    to fail names the cause, and a rank stopped later cannot erase it."""
    if not path:
        return
    data = encode(summary, requested).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if first and os.fstat(fd).st_size > 0:
            return
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)  # also releases the lock
