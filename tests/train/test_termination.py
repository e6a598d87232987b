"""The termination message always parses, at every size the schema admits (1,000 silos)."""

from __future__ import annotations

import json

import pytest

from fedma import termination

SILOS = [f"silo-{i:04d}" for i in range(1000)]  # spec.silos maxItems


def summary(rejected: dict[str, str], notes: dict[str, str], silos: list[str] = SILOS
            ) -> dict:
    return {"round": 3, "status": "Succeeded", "samples": 64_000, "loss": 1.5,
            "output": {"uri": "s3://b/runs/t/round-0003/global.safetensors",
                       "digest": "cd" * 32},
            "server_state": None, "included": [s for s in silos if s not in rejected],
            "rejected": rejected, "notes": notes, "reused": False, "seconds": 12.5,
            "privacy": {"epsilon": 3.2, "delta": 1e-5}}


def test_a_small_summary_is_written_whole():
    s = summary({"silo-0001": "non-finite values"}, {}, SILOS[:3])
    assert json.loads(termination.encode(s, SILOS[:3])) == s


@pytest.mark.faults
@pytest.mark.parametrize("n_rejected,n_notes", [(0, 0), (3, 997), (400, 300), (1000, 0)])
def test_every_rejected_and_noted_silo_survives_the_4096_byte_limit(n_rejected, n_notes):
    rejected = {s: f"update norm {i}.0 exceeds maxUpdateNorm 10.0 (the update is dropped)"
                for i, s in enumerate(SILOS[:n_rejected])}
    notes = {s: "clipped to the median norm" for s in SILOS[n_rejected:n_rejected + n_notes]}
    text = termination.encode(summary(rejected, notes), SILOS)
    assert len(text.encode()) <= termination.LIMIT
    got = json.loads(text)  # never cut mid-way
    assert got["output"]["digest"] == "cd" * 32 and got["status"] == "Succeeded"
    assert got["loss"] == 1.5 and got["samples"] == 64_000
    flags = termination.silo_flags(got, "rejected", SILOS, "see the store")
    assert set(flags) == set(rejected)
    assert all(v == rejected[k] or v == "see the store" or v.endswith("…")
               for k, v in flags.items())
    assert set(termination.silo_flags(got, "notes", SILOS, "see the store")) == set(notes)


def test_a_failure_with_a_huge_reason_keeps_its_verdict():
    text = termination.encode({"silo": "a", "status": "Failed", "reason": "x" * 100_000})
    got = json.loads(text)
    assert len(text.encode()) <= termination.LIMIT
    assert got["status"] == "Failed" and got["silo"] == "a" and got["reason"].startswith("xxx")


def test_masks_are_read_against_the_sorted_request():
    order = ["b", "a", "c"]
    assert termination.unmask(termination.mask({"c", "a"}, sorted(order)), sorted(order)) == \
        ["a", "c"]


def test_the_first_failure_is_kept_when_other_ranks_fail_after_it(tmp_path):
    """Every rank of a torchrun Job writes its failure to the same file; the first names the
    cause (torchrun then stops the others, which may fail differently on the way out)."""
    log = tmp_path / "termination-log"
    log.write_text("")  # Kubernetes creates the file empty
    termination.write(str(log), {"silo": "a", "status": "Failed", "reason": "StoreUnavailable"},
                      first=True)
    termination.write(str(log), {"silo": "a", "status": "Failed", "reason": "SIGTERM"},
                      first=True)
    assert json.loads(log.read_text())["reason"] == "StoreUnavailable"
    termination.write(str(log), {"silo": "a", "status": "Succeeded"})  # a verdict replaces it
    assert json.loads(log.read_text()) == {"silo": "a", "status": "Succeeded"}


def test_a_writer_killed_before_its_write_leaves_the_earlier_message_whole(tmp_path):
    """torchrun kills the remaining ranks mid-way: a rank killed after opening the file and
    before writing must not leave it empty (Kubernetes would fall back to the log tail)."""
    import subprocess
    import sys

    log = tmp_path / "termination-log"
    log.write_text(json.dumps({"silo": "a", "status": "Failed", "reason": "first"}))
    child = ("import os, signal, sys\n"
             "from fedma import termination\n"
             "os.pwrite = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
             "termination.write(sys.argv[1], {'silo': 'a', 'status': 'Failed', "
             "'reason': 'later and longer ' * 20})\n")
    done = subprocess.run([sys.executable, "-c", child, str(log)], check=False)
    assert done.returncode == -9  # it died inside write, after the open
    assert json.loads(log.read_text())["reason"] == "first"
