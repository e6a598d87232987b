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

from fedma.data.manifest import load_image
from fedma.model.llava import AlignmentModel
from fedma.model.projector import load_projector_state
from fedma.spec import EvaluationSpec
from fedma.train.batches import silo_records


class Evaluator:
    def __init__(self, model: AlignmentModel, spec: EvaluationSpec):
        self.model = model
        self.spec = spec
        self.records = silo_records(spec.data)[: spec.max_samples]
        feats = []
        with torch.no_grad():
            for i in range(0, len(self.records), spec.batch_size):
                chunk = self.records[i : i + spec.batch_size]
                pixels = torch.stack([model.vision_adapter.preprocess(load_image(r, spec.data.path))
                                      for r in chunk])
                feats.append(model.image_features(pixels))
        self.features = torch.cat(feats)
        ranked = [r for r in self.records if r.choices]
        # What a model that ignores the image would score, on average.
        self.chance = sum(1 / len(r.choices) for r in ranked) / len(ranked) if ranked else None

    @torch.no_grad()
    def evaluate(self, projector: dict[str, torch.Tensor], source: str = "projector"
                 ) -> dict[str, float]:
        load_projector_state(self.model.projector, projector, source)
        self.model.eval()
        bs = self.spec.batch_size
        loss_sum, tokens, correct, ranked = 0.0, 0, 0, 0
        for i in range(0, len(self.records), bs):
            recs = self.records[i : i + bs]
            feats = self.features[i : i + bs]
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
