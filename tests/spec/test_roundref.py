"""A Job's round by reference: the file must have the sha256 the Job was given."""

from __future__ import annotations

import pytest

from fedma import roundref
from fedma.spec import SpecError, parse
from tests.operator.test_lifecycle import round_body


def test_the_round_file_round_trips_and_its_digest_is_checked(tmp_path):
    rnd = parse(round_body(silos=3))
    text, digest = roundref.payload(rnd)
    path = tmp_path / "round.json"
    path.write_text(text)
    assert roundref.load(path, digest) == rnd
    path.write_text(text.replace('"round":1', '"round":2'))
    with pytest.raises(SpecError, match=r"sha256 .* differs from \$FEDMA_ROUND_SHA256"):
        roundref.load(path, digest)


def test_a_missing_round_file_names_the_path(tmp_path):
    with pytest.raises(SpecError, match=r"(?s)round\.json.*cannot read"):
        roundref.load(tmp_path / "round.json", None)
