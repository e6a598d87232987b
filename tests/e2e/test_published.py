"""The published-figures policy itself (tests/e2e/published.py): on the published numerics a
stale row fails; on other numerics only what every measured path reached is required."""

import pytest

from tests.e2e.published import Elsewhere, assert_matches_published

PUBLISHED = [(0, 9.5335, 17.8), (1, 5.9068, 0.0), (2, 0.8067, 31.1), (3, 0.3043, 62.2)]
ELSEWHERE = Elsewhere(loss_below=0.1, accuracy_above=33.3)  # stricter than the walkthrough's


def check(got):
    assert_matches_published(got, PUBLISHED, decimals=4, elsewhere=ELSEWHERE)


def test_the_published_run_passes_and_a_stale_row_on_its_numerics_fails():
    check(PUBLISHED)
    with pytest.raises(AssertionError, match="round 3 moved on the published numerics"):
        check([*PUBLISHED[:3], (3, 0.3051, 62.2)])
    with pytest.raises(AssertionError, match="round 2 moved"):
        check([*PUBLISHED[:2], (2, 0.8067, 33.3), *PUBLISHED[3:]])


def test_other_numerics_need_round_zero_and_a_run_that_learnt():
    other_cpu = [(0, 9.5335, 17.8), (1, 7.3913, 0.0), (2, 1.2961, 35.6), (3, 0.4340, 46.7)]
    check(other_cpu)
    with pytest.raises(AssertionError, match="round 0"):
        check([(0, 9.7, 17.8), *other_cpu[1:]])
    with pytest.raises(AssertionError, match="learnt too little"):
        check([*other_cpu[:3], (3, 1.2, 46.7)])
    with pytest.raises(AssertionError, match="reads the image too little"):
        check([*other_cpu[:3], (3, 0.43, 20.0)])
