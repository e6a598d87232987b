"""Frozen backbones, the trainable projector, and the LLaVA-style forward."""

from fedma.model.fingerprint import fingerprint_weights
from fedma.model.llava import AlignmentModel, load_alignment_model
from fedma.model.projector import build_projector

__all__ = ["AlignmentModel", "build_projector", "fingerprint_weights", "load_alignment_model"]
