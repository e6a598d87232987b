"""Helpers for the fault matrix: run the CLI with a fault injected into its child processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

INJECT = Path(__file__).resolve().parent / "inject"
CLI = [sys.executable, "-m", "fedma.cli"]


def fedma(*args: str, fault: str | None = None, timeout: float = 600,
          extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``fedma …`` as a user runs it; ``fault`` (``point:silo:marker``) arms
    inject/sitecustomize.py in it and in every process it starts."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(INJECT), os.getcwd()]),
           "COLUMNS": "200", **(extra_env or {})}
    env.pop("FEDMA_FAULT", None)
    if fault:
        env["FEDMA_FAULT"] = fault
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


# The operator's fixtures (kmock API server, a real kopf operator), shared with tests/operator.
from tests.operator.conftest import k8s, kmock_options, operator  # noqa: E402, F401
