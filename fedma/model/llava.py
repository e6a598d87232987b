"""The LLaVA-style alignment model: frozen vision tower → projector → frozen causal LM.

Stage-1 alignment trains only the projector, so the forward is arranged around that:
- the vision tower runs under ``torch.no_grad`` (no activations kept for it);
- the LM's weights never need gradients, only its *input* embeddings do (autograd then
  computes input-gradients through the frozen layers and no weight gradients);
- logits are computed only at positions that predict caption tokens, never for the image
  prefix (the LM head is the widest matmul in a small LM: 49k × 576 for SmolLM2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedma.model.fingerprint import FingerprintMismatch, fingerprint_weights
from fedma.model.lm import load_language_model
from fedma.model.projector import build_projector
from fedma.model.vision import VisionEncoder, load_vision
from fedma.spec import ModelSpec


def _freeze(module: nn.Module) -> None:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] caption tokens, right-padded, on the model's device
    attention_mask: torch.Tensor  # [B, T]
    # Caption tokens per sample, counted on the CPU before the move (no device sync).
    lengths: list[int]


class AlignmentModel(nn.Module):
    """Holds the three parts as submodules so DeepSpeed ZeRO-3 can partition the frozen ones."""

    def __init__(self, vision: VisionEncoder, lm: nn.Module, tokenizer, projector: nn.Module,
                 max_caption_tokens: int = 48):
        super().__init__()
        self.vision_adapter = vision
        self.vision = vision.module
        self.lm = lm
        self.projector = projector
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"  # the hidden-state slicing below assumes it
        self.max_caption_tokens = max_caption_tokens
        # sha256 of each frozen backbone as loaded (filled by load_alignment_model).
        self.fingerprints: dict[str, str] = {}
        self.prox_mu = 0.0
        self.prox_ref: dict[str, torch.Tensor] = {}
        # Under ZeRO-3, the HfDeepSpeedConfig the backbones were loaded with (fedma.train.
        # deepspeed_engine.zero3_loading): transformers holds it only weakly.
        self.zero3_config: object | None = None
        self.checkpointing = False
        _freeze(self.vision)
        _freeze(self.lm)

    def train(self, mode: bool = True) -> AlignmentModel:
        # Backbones stay in eval mode (no dropout, frozen batch-norm statistics) whatever the
        # trainer asks for; only the projector follows ``mode``.
        self.training = mode
        self.projector.train(mode)
        self.vision.eval()
        self.lm.eval()
        if mode and self.checkpointing:
            # transformers checkpoints a decoder layer only while that layer is training;
            # flag the layers alone, so their dropout and the rest stay in eval mode.
            for m in self.lm.modules():
                if getattr(m, "gradient_checkpointing", False):
                    m.training = True
        return self

    def enable_checkpointing(self) -> None:
        """Activation checkpointing of the LM's decoder layers (non-reentrant: the frozen
        layers have no weight gradients, and only the input embeddings require grad)."""
        kwargs = {"use_reentrant": False}
        enable = getattr(self.lm, "activation_checkpointing_enable", None)
        if enable is not None:  # transformers >= 5.2x; the older name is deprecated there
            enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.checkpointing = True

    # -- inputs -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the step runs: the projector's device (under DeepSpeed, the engine's)."""
        return next(self.projector.parameters()).device

    def tokenize(self, captions: list[str]) -> Batch:
        """Caption tokens on the model's device (the tokenizer builds them on the CPU)."""
        enc = self.tokenizer(captions, return_tensors="pt", padding=True, truncation=True,
                             max_length=self.max_caption_tokens, add_special_tokens=False)
        device = self.device
        return Batch(enc["input_ids"].to(device), enc["attention_mask"].to(device),
                     [int(n) for n in enc["attention_mask"].sum(1)])

    @torch.no_grad()
    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Vision features of ``pixels`` (built on the CPU by the data loader)."""
        dtype = next((p.dtype for p in self.vision.parameters() if p.is_floating_point()),
                     pixels.dtype)
        return self.vision_adapter.features(pixels.to(self.device, dtype, non_blocking=True))

    # -- forward ----------------------------------------------------------------------------
    def _hidden(self, features: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Final hidden states at the positions that predict each caption token: [B, T, H]."""
        return self._caption_positions(*self._run(features, batch), batch)

    @staticmethod
    def _caption_positions(h: torch.Tensor, n_img: int, batch: Batch) -> torch.Tensor:
        # Position i predicts token i+1: the last image position predicts caption token 0.
        return h[:, n_img - 1 : n_img - 1 + batch.input_ids.shape[1]]

    @staticmethod
    def _token_nll(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Per-token NLL of the caption tokens, 0 at padding: [B, T]."""
        nll = F.cross_entropy(logits.transpose(1, 2), batch.input_ids, reduction="none")
        return nll * batch.attention_mask

    def _run(self, features: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, int]:
        """Final hidden states of every position of [image tokens, caption tokens]."""
        return self.run_embedded(self.projector(features.to(self._proj_dtype())), batch)

    def run_embedded(self, proj: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, int]:
        """The LM over already-projected image tokens ``proj`` [B, n_img, H] + the captions.

        Split out so a simulation can project each silo's images with its own projector and
        still push every silo's batch through the frozen LM in one call.
        """
        emb = self.lm.get_input_embeddings()(batch.input_ids)
        x = torch.cat([proj.to(emb.dtype), emb], dim=1)
        n_img = proj.shape[1]
        mask = torch.cat([torch.ones(batch.attention_mask.shape[0], n_img,
                                     dtype=batch.attention_mask.dtype,
                                     device=batch.attention_mask.device),
                          batch.attention_mask], 1)
        return self.lm.base_model(inputs_embeds=x, attention_mask=mask).last_hidden_state, n_img

    def _proj_dtype(self) -> torch.dtype:
        return next(self.projector.parameters()).dtype

    def token_logprobs(self, features: torch.Tensor, batch: Batch) -> torch.Tensor:
        """log p(caption token t | image, tokens < t), 0 at padding: [B, T]."""
        h = self._hidden(features, batch)
        logits = self.lm.get_output_embeddings()(h).float()
        lp = torch.log_softmax(logits, dim=-1).gather(-1, batch.input_ids[..., None])[..., 0]
        return lp * batch.attention_mask

    def caption_nll(self, proj: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Per-token caption NLL given projected image tokens, 0 at padding: [B, T]."""
        h = self._caption_positions(*self.run_embedded(proj, batch), batch)
        return self._token_nll(self.lm.get_output_embeddings()(h).float(), batch)

    def loss(self, features: torch.Tensor, captions: list[str] | Batch
             ) -> tuple[torch.Tensor, int]:
        """Mean next-token loss over caption tokens only; returns (loss, token count)."""
        total, n = self.nll_sum(features, captions)
        return total / max(n, 1), n

    def nll_sum(self, features: torch.Tensor, captions: list[str] | Batch,
                keep: int | None = None) -> tuple[torch.Tensor, int]:
        """Summed next-token NLL over the caption tokens of the first ``keep`` samples (all by
        default), and their token count. A rank of a multi-GPU step weights its share by
        tokens with it; a rank with nothing left to train on runs a sample with ``keep=0``, so
        it enters the same collectives and contributes no gradient."""
        batch = captions if isinstance(captions, Batch) else self.tokenize(captions)
        h = self._hidden(features, batch)
        logits = self.lm.get_output_embeddings()(h).float()
        labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
        if keep is not None:
            labels[keep:] = -100
        total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                ignore_index=-100, reduction="sum")
        return total, sum(batch.lengths[:keep])

    def set_proximal(self, mu: float) -> None:
        """FedProx: from now on, penalise distance from the projector's current weights."""
        self.prox_mu = mu
        self.prox_ref = {n: p.detach().clone() for n, p in self.projector.named_parameters()}

    def forward(self, pixels: torch.Tensor, captions: list[str] | Batch,
                keep: int | None = None, tokens: float | None = None) -> torch.Tensor:
        """Training loss for a batch of images and captions (what an engine calls).

        The mean over this batch's caption tokens; with ``tokens`` (a multi-rank step), the
        summed NLL of the first ``keep`` samples divided by ``tokens``, so that ranks that
        average their gradients get the gradient of the mean over every rank's tokens.
        """
        features = self.image_features(pixels)
        if tokens is None:
            loss = self.loss(features, captions)[0]
        else:
            loss = self.nll_sum(features, captions, keep)[0] / tokens
        if self.prox_mu > 0:
            prox = sum((p - self._prox_ref(n, p)).pow(2).sum()
                       for n, p in self.projector.named_parameters())
            loss = loss + 0.5 * self.prox_mu * prox
        return loss

    def _prox_ref(self, name: str, p: torch.Tensor) -> torch.Tensor:
        ref = self.prox_ref[name]
        if ref.device != p.device:  # set on the CPU, then the engine moved the projector
            ref = self.prox_ref[name] = ref.to(p.device)
        return ref

    @torch.no_grad()
    def choice_scores(self, features: torch.Tensor, choices: list[list[str]]) -> torch.Tensor:
        """Total log-likelihood of each candidate caption given its image: [B, C].

        When the candidates of a sample share every token but the last (e.g. "... the number
        seven" vs "... the number six"), the shared prefix adds the same amount to every
        candidate, so one forward over the prefix ranks them exactly; otherwise every
        candidate is scored in full.
        """
        n_choices = {len(c) for c in choices}
        if len(n_choices) != 1:
            raise ValueError("every sample needs the same number of candidate captions")
        fast = self._single_token_suffixes(choices)
        if fast is not None:
            prefixes, last = fast
            batch = self.tokenize(prefixes)
            # Re-tokenising the decoded prefix must give the same tokens for the shortcut to
            # be exact; _single_token_suffixes checked that.
            h, n_img = self._run(features, batch)
            idx = n_img + batch.attention_mask.sum(1) - 1  # the last prefix token's position
            h_last = h[torch.arange(h.shape[0], device=h.device), idx]
            logits = self.lm.get_output_embeddings()(h_last).float()
            lp = torch.log_softmax(logits, -1)
            return lp.gather(1, last.to(lp.device))
        flat = [c for cs in choices for c in cs]
        k = next(iter(n_choices))
        feats = features.repeat_interleave(k, dim=0)
        return self.token_logprobs(feats, self.tokenize(flat)).sum(1).view(len(choices), k)

    @torch.no_grad()
    def score(self, features: torch.Tensor, captions: list[str], choices: list[list[str]]
              ) -> tuple[torch.Tensor, int, torch.Tensor]:
        """(summed caption NLL, caption tokens, choice scores [B, C]) for held-out samples.

        When every caption is one of its candidates and the candidates differ only in their
        last token, the forward that scores the caption also ranks the candidates (the
        position predicting the caption's last token sees exactly the shared prefix), so one
        LM pass does both; otherwise the candidates get their own pass.
        """
        batch = self.tokenize(captions)
        fast = self._single_token_suffixes(choices) if len({len(c) for c in choices}) == 1 \
            else None
        same_prefix = fast is not None and all(
            self.tokenizer(c, add_special_tokens=False)["input_ids"][:-1]
            == self.tokenizer(p, add_special_tokens=False)["input_ids"]
            for c, p in zip(captions, fast[0], strict=True))
        if not same_prefix:
            loss, n = self.loss(features, captions)
            return loss * n, n, self.choice_scores(features, choices)
        logits = self.lm.get_output_embeddings()(self._hidden(features, batch)).float()
        last = batch.attention_mask.sum(1) - 1
        lp = torch.log_softmax(logits[torch.arange(len(captions), device=logits.device), last],
                               -1)
        return self._token_nll(logits, batch).sum(), sum(batch.lengths), \
            lp.gather(1, fast[1].to(lp.device))

    def _single_token_suffixes(self, choices: list[list[str]]):
        prefixes, lasts = [], []
        for cs in choices:
            ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in cs]
            n = len(ids[0])
            if any(len(i) != n for i in ids) or n < 2 or any(i[:-1] != ids[0][:-1] for i in ids):
                return None
            if n > self.max_caption_tokens:
                return None
            prefix = self.tokenizer.decode(ids[0][:-1])
            if self.tokenizer(prefix, add_special_tokens=False)["input_ids"] != ids[0][:-1]:
                return None
            prefixes.append(prefix)
            lasts.append([i[-1] for i in ids])
        return prefixes, torch.tensor(lasts)


def verify_backbones(spec: ModelSpec) -> dict[str, str]:
    """The backbones' fingerprints from their files, refusing any that differs from the spec:
    cheap next to a load, so a silo runs it first (before the ranks of a multi-GPU Job meet)."""
    fingerprints: dict[str, str] = {}
    for what, got, expected in (
        ("model.vision", fingerprint_weights(spec.vision.path), spec.vision.fingerprint),
        ("model.languageModel", fingerprint_weights(spec.language_model.path,
                                                    spec.language_model.gguf_file),
         spec.language_model.fingerprint),
    ):
        fingerprints[what.removeprefix("model.")] = got
        if expected is not None and got != expected:
            raise FingerprintMismatch(
                f"{what}.fingerprint: this silo's backbone hashes to {got[:16]}…, the round "
                f"expects {expected[:16]}…; refusing to train a projector for a different model"
            )
    return fingerprints


def load_alignment_model(spec: ModelSpec, projector_seed: int = 0,
                         check_fingerprints: bool = True,
                         dtype: torch.dtype = torch.float32,
                         fingerprints: dict[str, str] | None = None) -> AlignmentModel:
    """Verify the backbones' fingerprints (unless ``fingerprints`` says :func:`verify_backbones`
    already did), load them from local paths in ``dtype`` (under ZeRO-3 straight into
    partitions), attach a fresh float32 projector."""
    if fingerprints is None:
        fingerprints = verify_backbones(spec) if check_fingerprints else {}
    vision = load_vision(spec.vision.kind, spec.vision.path, spec.vision.layer,
                         spec.vision.image_size, dtype=dtype)
    lm, tok = load_language_model(spec.language_model.path, spec.language_model.gguf_file,
                                  dtype=dtype)
    text_dim = lm.get_input_embeddings().embedding_dim
    projector = build_projector(spec.projector.type, vision.feature_dim, text_dim,
                                seed=projector_seed)
    model = AlignmentModel(vision, lm, tok, projector, spec.max_caption_tokens)
    model.fingerprints = fingerprints
    return model
