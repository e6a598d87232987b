"""What a tenant may make the operator do with the operator's rights (tenancy.py): the pure
rules. tests/kube/test_tenancy.py proves the operator applies them on a real control plane."""

from __future__ import annotations

import pytest

from fedma.spec import DataSpec, SiloSpec
from fedma_operator.tenancy import Tenancy, allowed, repository

TRAINER = "ghcr.io/fedma/trainer:0.1.0"


def silo(name: str = "a", **kw) -> SiloSpec:
    return SiloSpec(name=name, data=DataSpec(path="/data/a.jsonl"), **kw)


@pytest.mark.parametrize("image,repo", [
    ("ghcr.io/fedma/trainer:0.1.0", "ghcr.io/fedma/trainer"),
    ("ghcr.io/fedma/trainer", "ghcr.io/fedma/trainer"),
    ("ghcr.io/fedma/trainer@sha256:" + "a" * 64, "ghcr.io/fedma/trainer"),
    ("ghcr.io/fedma/trainer:1@sha256:" + "a" * 64, "ghcr.io/fedma/trainer"),
    ("localhost:5000/trainer", "localhost:5000/trainer"),
    ("localhost:5000/trainer:2", "localhost:5000/trainer"),
])
def test_repository_drops_tag_and_digest_but_not_a_registry_port(image, repo):
    assert repository(image) == repo


@pytest.mark.parametrize("image,entries,ok", [
    # A repository admits any tag or digest of it, and nothing else.
    ("ghcr.io/fedma/trainer:2", ("ghcr.io/fedma/trainer",), True),
    ("ghcr.io/fedma/trainer@sha256:" + "b" * 64, ("ghcr.io/fedma/trainer",), True),
    ("ghcr.io/fedma/trainer-evil:2", ("ghcr.io/fedma/trainer",), False),
    # A bare name is never a string prefix.
    ("ghcr.io/fedma-evil/x:1", ("ghcr.io/fedma",), False),
    ("ghcr.io/fedma/x:1", ("ghcr.io/fedma",), False),
    # A prefix ending in "/" admits every repository under it.
    ("ghcr.io/fedma/x:1", ("ghcr.io/fedma/",), True),
    ("ghcr.io/fedma/deep/x:1", ("ghcr.io/fedma/",), True),
    ("ghcr.io/fedma-evil/x:1", ("ghcr.io/fedma/",), False),
    # An entry with a tag or digest admits that exact reference only.
    ("ghcr.io/fedma/trainer:1", ("ghcr.io/fedma/trainer:1",), True),
    ("ghcr.io/fedma/trainer:2", ("ghcr.io/fedma/trainer:1",), False),
    ("ghcr.io/fedma/trainer:10", ("ghcr.io/fedma/trainer:1",), False),
    # A registry with a port is a registry, not a tag.
    ("localhost:5000/trainer:3", ("localhost:5000/trainer",), True),
    ("localhost:5001/trainer:3", ("localhost:5000/trainer",), False),
    # No entries: nothing matches (Tenancy treats an empty list as "no allow-list").
    ("ghcr.io/fedma/trainer:1", (), False),
])
def test_allowed_images(image, entries, ok):
    assert allowed(image, entries) is ok


def test_hub_silos_run_in_the_objects_namespace_or_a_configured_one():
    t = Tenancy(silo_namespaces=frozenset({"silo-ns"}))
    assert t.check([silo(), silo("b", namespace="team-a"), silo("c", namespace="silo-ns")],
                   "team-a", "FederatedTraining team-a/t") is None
    err = t.check([silo(), silo("b", namespace="kube-system")], "team-a",
                  "FederatedTraining team-a/t")
    assert err is not None
    assert err.source == "FederatedTraining team-a/t"
    [(path, msg)] = err.errors
    assert path == "spec.silos[1].namespace"
    assert "'kube-system' is not permitted" in msg and "silo-ns, team-a" in msg
    assert "silo b" in msg


def test_a_silo_in_its_own_cluster_may_name_any_namespace_there():
    # Its rights there are the kubeconfig Secret's, and that Secret is read from the
    # object's own namespace only (clusters.py; tests/kube/test_tenancy.py).
    t = Tenancy()
    assert t.check([silo(namespace="kube-system", kubeconfig_secret="remote")], "team-a",
                   "x") is None


def test_images_off_the_allow_list_are_refused_and_the_trainer_image_never_is():
    t = Tenancy(allowed_images=("ghcr.io/fedma/",), trainer_image="registry.local/trainer:1")
    ok = [silo(), silo("b", image="ghcr.io/fedma/trainer:2"),
          silo("c", image="registry.local/trainer:1")]
    assert t.check(ok, "ns", "x") is None
    err = t.check([silo(image="docker.io/someone/else:1"),
                   silo("b", image="registry.local/trainer:2")], "ns", "x")
    assert err is not None
    assert [p for p, _ in err.errors] == ["spec.silos[0].image", "spec.silos[1].image"]
    assert "'docker.io/someone/else:1' is not on the operator's allow-list (ghcr.io/fedma/)" \
        in err.errors[0][1]


def test_without_an_allow_list_any_image_is_accepted():
    assert Tenancy().check([silo(image="docker.io/someone/else:1")], "ns", "x") is None


def test_every_field_at_fault_is_named_at_once():
    t = Tenancy(allowed_images=("ghcr.io/fedma/",))
    err = t.check([silo(namespace="kube-system", image="evil:1"),
                   silo("b", namespace="default")], "team-a", "x")
    assert err is not None
    assert [p for p, _ in err.errors] == ["spec.silos[0].namespace", "spec.silos[0].image",
                                          "spec.silos[1].namespace"]
    assert "spec.silos[1].namespace" in str(err)
