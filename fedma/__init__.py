"""fedma: federated alignment pre-training of the projector of LLaVA-style multimodal LLMs.

Kept import-light on purpose: the operator imports ``fedma.spec`` and ``fedma.rounds`` and must
not pull torch in through this package's ``__init__``.
"""

__version__ = "0.1.0"


def package_version() -> str:
    """The installed distribution's version (what ``--version`` prints on both commands)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedma")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return __version__
