"""The silo trainer's live metrics (what the chart's PodMonitor scrapes)."""

from __future__ import annotations

import socket

import pytest
from prometheus_client import generate_latest

from fedma.telemetry import TrainerMetrics, metrics_port


def _text(m: TrainerMetrics) -> str:
    return generate_latest(m.registry).decode()


def test_steps_samples_loss_and_phase_carry_training_and_silo():
    m = TrainerMetrics("t", "s1", 3)
    text = _text(m)
    assert 'fedma_trainer_phase{phase="loading",silo="s1",training="t"} 1.0' in text
    assert 'fedma_trainer_round{silo="s1",training="t"} 3.0' in text
    m.step(4, 2.5)
    m.step(4, 2.0)
    text = _text(m)
    assert 'fedma_trainer_samples_total{silo="s1",training="t"} 8.0' in text
    assert 'fedma_trainer_steps_total{silo="s1",training="t"} 2.0' in text
    assert 'fedma_trainer_loss{silo="s1",training="t"} 2.0' in text
    assert 'fedma_trainer_step_duration_seconds_count{silo="s1",training="t"} 2.0' in text
    assert 'fedma_trainer_phase{phase="training",silo="s1",training="t"} 1.0' in text
    assert 'fedma_trainer_phase{phase="loading",silo="s1",training="t"} 0.0' in text
    m.set_phase("uploading")
    assert 'fedma_trainer_phase{phase="uploading",silo="s1",training="t"} 1.0' in _text(m)
    with pytest.raises(ValueError, match="phase must be one of"):
        m.set_phase("sleeping")


def test_a_taken_port_does_not_stop_training():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert TrainerMetrics("t", "s", 1).serve(s.getsockname()[1], "127.0.0.1") is False


def test_metrics_port_from_the_environment(monkeypatch):
    monkeypatch.delenv("FEDMA_METRICS_PORT", raising=False)
    assert metrics_port() == 0
    monkeypatch.setenv("FEDMA_METRICS_PORT", "9400")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert metrics_port() == 9400
    monkeypatch.setenv("LOCAL_RANK", "1")  # other ranks of a torchrun Job share the pod's port
    assert metrics_port() == 0
    monkeypatch.setenv("LOCAL_RANK", "0")
    for bad in ("http", "70000"):
        monkeypatch.setenv("FEDMA_METRICS_PORT", bad)
        with pytest.raises(ValueError, match="FEDMA_METRICS_PORT must be a port number"):
            metrics_port()
