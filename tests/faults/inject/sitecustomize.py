"""Fault injection (and a pickle guard) for the processes a round runs (``fedma run``,
``fedma train-silo``, ``fedma aggregate``).

Tests put this folder on ``PYTHONPATH`` and set ``FEDMA_FAULT=<point>:<silo>:<marker>``;
Python imports this module at start-up in every child process. The fault fires once — the
marker file records that it did — so the retry the round logic launches runs clean. The process
dies by SIGKILL, as under the OOM killer or a lost node: no handler, no cleanup, no
termination message.

Points: ``start`` (a silo process dies before doing anything), ``slow`` (it sleeps
``$FEDMA_FAULT_SLOW_S`` seconds, 20 by default, then trains), ``hang`` (it never finishes:
a straggler, until something kills it), ``mid-training`` (after its
second optimiser step), ``after-upload`` (right after its update is committed to the store,
before it reports), ``aggregate-mid-write`` (the aggregator dies halfway through writing the
global projector's bytes).

``<silo>`` may name a round, ``silo-1@2``: the fault then fires in that round's silo process
only (the round file the process was given is ``round-0002/round.yaml``).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def _die(marker: Path) -> None:
    marker.write_text(" ".join(sys.argv))
    os.kill(os.getpid(), signal.SIGKILL)


def _install() -> None:
    """``FEDMA_FAULT`` may list several faults separated by ``;``: the first whose marker is
    absent fires, so ``start:s:m1;hang:s:m2`` kills attempt 1 and hangs attempt 2."""
    for spec in filter(None, os.environ.get("FEDMA_FAULT", "").split(";")):
        point, silo, marker_path = spec.split(":", 2)
        if not Path(marker_path).exists():
            _install_one(point, silo, Path(marker_path))
            return


def _install_one(point: str, silo: str, marker: Path) -> None:
    argv = sys.argv
    silo, _, in_round = silo.partition("@")
    is_silo = "--silo" in argv and argv[argv.index("--silo") + 1] == silo and (
        not in_round or f"round-{int(in_round):04d}" in argv[argv.index("--round") + 1])
    if point == "start" and is_silo:
        _die(marker)
    elif point == "slow" and is_silo:  # takes its time, then trains as usual
        import time

        marker.write_text(" ".join(argv))
        time.sleep(float(os.environ.get("FEDMA_FAULT_SLOW_S", "20")))
    elif point == "hang" and is_silo:  # a straggler: alive, never done, until it is killed
        import time

        marker.write_text(" ".join(argv))
        while True:
            time.sleep(3600)
    elif point == "mid-training" and is_silo:
        from fedma.telemetry import TrainerMetrics

        real_step = TrainerMetrics.step
        steps = [0]

        def step(self, batch_size, loss):  # type: ignore[no-untyped-def]
            real_step(self, batch_size, loss)
            steps[0] += 1
            if steps[0] == 2:
                _die(marker)

        TrainerMetrics.step = step  # type: ignore[method-assign]
    elif point == "after-upload" and is_silo:
        from fedma.store import Store

        real_put = Store.put_tensors

        def put_tensors(self, rel, tensors, manifest=None):  # type: ignore[no-untyped-def]
            ref = real_put(self, rel, tensors, manifest)
            if rel.endswith("/update.safetensors"):
                _die(marker)
            return ref

        Store.put_tensors = put_tensors  # type: ignore[method-assign]
    elif point == "aggregate-mid-write" and "aggregate" in argv:
        import tempfile

        import fedma.store as store

        real_write = store._atomic_local_write

        def write(path: str, data: bytes) -> None:
            if not path.endswith("/global.safetensors"):
                return real_write(path, data)
            target = Path(path)  # as the real writer: a temporary beside the target …
            fd, _ = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                     suffix=".tmp")
            os.write(fd, data[: len(data) // 2])  # … half written, then the process dies
            os.fsync(fd)
            _die(marker)

        store._atomic_local_write = write


def _guard_pickle() -> None:
    """``FEDMA_GUARD_PICKLE=<log>``: every unpickling in this process (``pickle.load[s]``,
    ``pickle.Unpickler``, ``torch.load``) is written to the log with where it came from. It
    records rather than raises, so a test sees every call, not only the first."""
    log = os.environ.get("FEDMA_GUARD_PICKLE")
    if not log:
        return
    import pickle
    import traceback

    def record(what: str) -> None:
        with open(log, "a") as f:
            f.write(f"{what} in {' '.join(sys.argv)}\n{''.join(traceback.format_stack())}\n")

    def wrap(name: str, fn):  # type: ignore[no-untyped-def]
        def guarded(*args, **kwargs):  # type: ignore[no-untyped-def]
            record(name)
            return fn(*args, **kwargs)
        return guarded

    pickle.load = wrap("pickle.load", pickle.load)
    pickle.loads = wrap("pickle.loads", pickle.loads)
    real_unpickler = pickle.Unpickler

    class Unpickler(real_unpickler):  # type: ignore[misc, valid-type]
        def load(self):  # type: ignore[no-untyped-def]
            record("pickle.Unpickler.load")
            return super().load()

    pickle.Unpickler = Unpickler  # type: ignore[misc]
    import torch

    torch.load = wrap("torch.load", torch.load)


_guard_pickle()
_install()
