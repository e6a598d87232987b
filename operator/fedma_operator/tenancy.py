"""What a tenant (whoever may create a FederatedTraining or FederatedRound) may make the
operator do with its own rights. Pure: the operator's configuration against one spec.

The operator creates Jobs with rights the tenant may not have. Without a limit, a spec could
place a hub silo Job in any namespace the operator can reach (the operator's own, where the
silo kubeconfig Secrets live), where ``artifacts.credentialsSecret`` would inject that
namespace's Secret as env and ``dataVolume`` mount that namespace's claim, into an image of
the tenant's choice. So:

- a silo Job on the hub runs in the object's own namespace, or in a namespace the operator is
  configured for (``--silo-namespace``, chart ``operator.siloNamespaces``): the platform
  admin's opt-in of that namespace's Secrets and claims;
- a silo in its own cluster runs with the rights of the kubeconfig Secret, which is read from
  the object's own namespace only (clusters.py): there the silo's Role is the limit;
- with an image allow-list (``--allowed-image``, ``operator.allowedImages``), a silo's image
  must be on it; the operator's own trainer image always is.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedma.spec import SiloSpec, SpecError


def repository(image: str) -> str:
    """``registry/path/name`` of an image reference, without its tag or digest."""
    name = image.split("@", 1)[0]
    slash, colon = name.rfind("/"), name.rfind(":")
    return name[:colon] if colon > slash else name


def allowed(image: str, entries: tuple[str, ...]) -> bool:
    """An entry is a repository (any tag or digest of it), a repository with a tag or digest
    (that exact reference), or a prefix ending in ``/`` (any repository under it). Never a
    bare string prefix: ``ghcr.io/fedma`` must not admit ``ghcr.io/fedma-evil/x``."""
    for entry in entries:
        if entry.endswith("/"):
            if image.startswith(entry):
                return True
        elif entry == image or (repository(entry) == entry and repository(image) == entry):
            return True
    return False


@dataclass(frozen=True)
class Tenancy:
    # Hub namespaces other than the object's own where silo Jobs may run.
    silo_namespaces: frozenset[str] = frozenset()
    # Images a silo may name (allowed() above); empty: any image.
    allowed_images: tuple[str, ...] = ()
    # Always allowed: the operator's own trainer image.
    trainer_image: str = ""

    def check(self, silos: tuple[SiloSpec, ...] | list[SiloSpec], namespace: str,
              source: str) -> SpecError | None:
        """Why the operator will not run these silos for an object in ``namespace``, naming
        each field at fault; None when it will."""
        errors: list[tuple[str, str]] = []
        for i, silo in enumerate(silos):
            where = silo.namespace
            if (silo.kubeconfig_secret is None and where not in (None, namespace)
                    and where not in self.silo_namespaces):
                permitted = ", ".join(sorted({namespace, *self.silo_namespaces}))
                errors.append((f"spec.silos[{i}].namespace",
                               f"silo {silo.name}: hub namespace {where!r} is not permitted: "
                               f"silo Jobs on the hub run in {permitted} (the object's own "
                               "namespace, and the operator's siloNamespaces)"))
            image = silo.image
            if (image and self.allowed_images and image != self.trainer_image
                    and not allowed(image, self.allowed_images)):
                errors.append((f"spec.silos[{i}].image",
                               f"silo {silo.name}: image {image!r} is not on the operator's "
                               f"allow-list ({', '.join(self.allowed_images)})"))
        return SpecError(source, errors) if errors else None
