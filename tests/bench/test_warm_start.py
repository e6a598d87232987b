"""The quality benchmark's warm start goes on until it is past the caption-template phase, and
stops the run, naming the seed and the loss, when it cannot get there (bench/quality.py)."""

import pytest

from bench import quality
from bench.quality import Bench, Config, Split, WarmStartError


class _Scored:
    def __init__(self, loss: float):
        self.heldout_loss = loss


def _bench(losses: list[float], **cfg) -> tuple[Bench, list[list[int]]]:
    """A Bench whose training records the order of each pass and whose scoring returns the
    given caption loss after each pass (no model: the pass logic alone)."""
    bench = Bench(Config(batch_size=2, **cfg), model=None, data=None)
    orders: list[list[int]] = []
    bench.batches = lambda order, first, steps: [order[2 * s : 2 * s + 2] for s in range(steps)]
    bench.train = lambda starts, steps: (orders.append([i for b in steps[0] for i in b])
                                         or [({"w": len(orders)}, 0.0)])
    it = iter(losses)
    bench.score = lambda weights, idx, source: _Scored(next(it))
    return bench, orders


SPLIT = Split(held_out=[], warm=list(range(10, 18)), pool=[], silos={})


def test_one_pass_is_enough_when_it_leaves_the_template_phase():
    bench, orders = _bench([1.5], warm_start_max_loss=2.0)
    weights, losses = bench.warm_start({"w": 0}, SPLIT, seed=3)
    assert losses == [1.5] and weights == {"w": 1}
    assert orders == [SPLIT.warm]  # the first pass in the split's order: earlier runs' start


def test_more_passes_in_new_orders_until_the_loss_is_under_the_bound():
    bench, orders = _bench([6.3, 2.4, 1.9, 0.5], warm_start_max_loss=2.0,
                           warm_start_max_passes=4)
    weights, losses = bench.warm_start({"w": 0}, SPLIT, seed=3)
    assert losses == [6.3, 2.4, 1.9] and weights == {"w": 3}
    assert all(sorted(o) == SPLIT.warm for o in orders) and orders[1] != orders[0]
    again, orders_again = _bench([6.3, 2.4, 1.9], warm_start_max_loss=2.0,
                                 warm_start_max_passes=4)
    again.warm_start({"w": 0}, SPLIT, seed=3)
    # Seeded: the same seed gives the same passes (the warm start is the same for every arm).
    assert orders_again == orders


def test_a_warm_start_still_in_the_template_phase_stops_the_run_naming_seed_and_loss():
    bench, orders = _bench([6.3, 5.0], warm_start_max_loss=2.0, warm_start_max_passes=2)
    with pytest.raises(WarmStartError, match=r"seed 3: after 2 warm-start passes over 8 images "
                                             r"their caption loss is 5\.000.*6\.300, 5\.000.*"
                                             r"--warm-start-max-loss 2"):
        bench.warm_start({"w": 0}, SPLIT, seed=3)
    assert len(orders) == 2


def test_the_defaults_bound_the_loss_and_the_passes():
    cfg = Config()
    assert 0 < cfg.warm_start_max_loss < 6.3 and cfg.warm_start_max_passes >= 2
    assert quality.parse_args(["--warm-start-max-loss", "1.5", "--warm-start-max-passes",
                               "4"])[0].warm_start_max_passes == 4
