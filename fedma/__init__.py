"""fedma: federated alignment pre-training of the projector of LLaVA-style multimodal LLMs.

Kept import-light on purpose: the operator imports ``fedma.spec`` and ``fedma.rounds`` and must
not pull torch in through this package's ``__init__``.
"""

__version__ = "0.1.0"
