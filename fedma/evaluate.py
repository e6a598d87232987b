"""Held-out metrics of a global projector: caption loss and caption retrieval accuracy.

- ``heldout_loss``: mean next-token loss over the caption tokens of the held-out manifest.
- ``retrieval_accuracy``: over lines that carry ``choices``, the fraction where the model gives
  the true caption the highest likelihood among the candidates (generative retrieval: the
  model must read the image to tell "... the number seven" from "... the number one").

Vision features of the held-out images are computed once and reused for every round: the
vision tower is frozen, so they cannot change.
"""

from __future__ import annotations

import torch

from fedma.data.manifest import Record, load_image
from fedma.model.llava import AlignmentModel
from fedma.model.projector import load_projector_state
from fedma.spec import EvaluationSpec
from fedma.train.batches import silo_records


class Evaluator:
    """Scores projectors on fixed held-out samples whose vision features are already known."""

    def __init__(self, model: AlignmentModel, records: list[Record], features: torch.Tensor,
                 batch_size: int = 50):
        if len(records) != len(features):
            raise ValueError(f"{len(records)} held-out records but {len(features)} feature rows")
        self.model = model
        self.records = records
        self.features = features
        self.batch_size = batch_size
        ranked = [r for r in self.records if r.choices]
        # What a model that ignores the image would score, on average.
        self.chance = sum(1 / len(r.choices) for r in ranked) / len(ranked) if ranked else None

    @classmethod
    def from_spec(cls, model: AlignmentModel, spec: EvaluationSpec) -> Evaluator:
        records = silo_records(spec.data)[: spec.max_samples]
        feats = []
        with torch.no_grad():
            for i in range(0, len(records), spec.batch_size):
                chunk = records[i : i + spec.batch_size]
                pixels = torch.stack([model.vision_adapter.preprocess(load_image(r, spec.data.path))
                                      for r in chunk])
                feats.append(model.image_features(pixels))
        return cls(model, records, torch.cat(feats), spec.batch_size)

    @torch.no_grad()
    def evaluate(self, projector: dict[str, torch.Tensor], source: str = "projector"
                 ) -> dict[str, float]:
        load_projector_state(self.model.projector, projector, source)
        self.model.eval()
        bs = self.batch_size
        loss_sum, tokens, correct, ranked = 0.0, 0, 0, 0
        for i in range(0, len(self.records), bs):
            recs = self.records[i : i + bs]
            feats = self.features[i : i + bs]
            if all(r.choices for r in recs):
                nll, n, scores = self.model.score(feats, [r.caption for r in recs],
                                                  [list(r.choices) for r in recs])
                loss_sum += float(nll)
                tokens += n
                truth = torch.tensor([r.choices.index(r.caption) for r in recs])
                correct += int((scores.argmax(1) == truth).sum())
                ranked += len(recs)
                continue
            loss, n = self.model.loss(feats, [r.caption for r in recs])
            loss_sum += float(loss) * n
            tokens += n
            with_choices = [j for j, r in enumerate(recs) if r.choices]
            if with_choices:
                sub = [recs[j] for j in with_choices]
                scores = self.model.choice_scores(feats[with_choices],
                                                  [list(r.choices) for r in sub])
                truth = torch.tensor([r.choices.index(r.caption) for r in sub])
                correct += int((scores.argmax(1) == truth).sum())
                ranked += len(sub)
        return {
            "heldout_loss": loss_sum / max(tokens, 1),
            "retrieval_accuracy": correct / ranked if ranked else float("nan"),
            "eval_samples": len(self.records),
        }
