import numpy as np
import pytest

from fedma.data.partition import label_skew_equal


@pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0])
def test_equal_sizes_every_sample_once(alpha):
    y = np.repeat(np.arange(10), 37)  # 370 samples: sizes 37 each
    parts = label_skew_equal(y, 10, alpha, seed=3)
    assert sorted(i for p in parts for i in p) == list(range(len(y)))
    assert {len(p) for p in parts} == {37}


def test_small_alpha_skews_labels_large_alpha_does_not():
    y = np.repeat(np.arange(10), 50)

    def top_share(alpha):
        parts = label_skew_equal(y, 10, alpha, seed=0)
        return np.mean([np.bincount(y[p], minlength=10).max() / len(p) for p in parts])

    assert top_share(0.1) > 0.45  # a silo is dominated by one or two digits
    assert top_share(100.0) < 0.25  # near the IID 10 %
    assert label_skew_equal(y, 10, 0.1, seed=0) == label_skew_equal(y, 10, 0.1, seed=0)


def test_uneven_total_and_bad_arguments():
    y = np.repeat(np.arange(3), 7)  # 21 samples over 4 silos: 6,5,5,5
    assert sorted(len(p) for p in label_skew_equal(y, 4, 0.5)) == [5, 5, 5, 6]
    with pytest.raises(ValueError):
        label_skew_equal(y, 0, 0.5)
    with pytest.raises(ValueError):
        label_skew_equal(y, 2, 0.0)
