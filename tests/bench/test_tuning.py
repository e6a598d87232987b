"""The server hyperparameters the product ships are the ones bench/tune.py chose on its seed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import quality, tune
from fedma.aggregate import get_strategy

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "tuning.json"


@pytest.mark.parametrize("strategy", sorted(tune.GRID))
def test_the_shipped_defaults_are_the_tuned_values(strategy):
    chosen = json.loads(RESULTS.read_text())["chosen"][strategy]
    opts = get_strategy(strategy, {}).opts
    assert {k: opts[k] for k in chosen} == chosen, (
        f"{strategy}: fedma/aggregate defaults differ from bench/results/tuning.json's choice; "
        "rerun bench/tune.py or ship what it chose")


def test_the_recorded_tuning_covers_the_grid_on_the_tuning_seed():
    recorded = json.loads(RESULTS.read_text())
    assert recorded["seed"] == quality.TUNING_SEED and recorded["grid"] == tune.GRID
    labels = {label for label, _, _ in tune.candidates()}
    assert labels | {"fedavg"} == set(recorded["results"])
    assert tune.choose(recorded["results"]) == recorded["chosen"]


def test_choose_takes_the_lowest_candidate_nll_per_strategy_and_ignores_fedavg():
    results = {
        "fedavg": {"strategy": "fedavg", "options": {}, "candidate_nll": 0.1},
        "a1": {"strategy": "fedadam", "options": {"server_lr": 0.1}, "candidate_nll": 2.0},
        "a2": {"strategy": "fedadam", "options": {"server_lr": 0.01}, "candidate_nll": 1.5},
        "y1": {"strategy": "fedyogi", "options": {"server_lr": 0.1}, "candidate_nll": 1.2},
        "y2": {"strategy": "fedyogi", "options": {"server_lr": 0.01}, "candidate_nll": 1.3},
    }
    assert tune.choose(results) == {"fedadam": {"server_lr": 0.01},
                                    "fedyogi": {"server_lr": 0.1}}


def test_the_quality_benchmark_refuses_to_report_the_tuning_seed():
    proc = subprocess.run([sys.executable, "bench/quality.py", "--seeds",
                           str(quality.TUNING_SEED + 1)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "tuning seed" in proc.stderr
