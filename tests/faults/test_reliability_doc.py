"""docs/reliability.md matches the tests: every row names a collected `faults` test, and every
`faults` test has a row."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import jsonschema

from fedma_operator.crds import build_crds
from tests.faults.test_operator_faults import ADVERSARIAL, adversarial_body

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"


def _collected_faults() -> set[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "faults",
                          "-p", "no:cacheprovider", "tests"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    return {line.strip() for line in out.splitlines() if "::" in line}


def test_every_row_names_a_faults_test_and_every_faults_test_has_a_row():
    rows = [line for line in DOC.read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| fault")]
    named = {m for line in rows for m in re.findall(r"`(tests/[^`]+::[^`]+)`", line)}
    assert len(rows) >= 40 and named
    collected = _collected_faults()
    assert not named - collected, f"rows naming no collected faults test: {named - collected}"
    assert not collected - named, f"faults tests without a row: {collected - named}"


SCHEMA_REFUSES = {"huge-round-number", "negative-deadline", "negative-batch-size",
                  "too-many-silos", "digest-not-sha256", "traversal-in-the-training-name"}


def test_the_crd_schema_refuses_what_this_page_says():
    crd = build_crds()["fedma.io_federatedrounds.yaml"]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    refused = set()
    for case in ADVERSARIAL:
        try:
            jsonschema.validate(adversarial_body(case), schema)
        except jsonschema.ValidationError:
            refused.add(case)
    assert refused == SCHEMA_REFUSES
