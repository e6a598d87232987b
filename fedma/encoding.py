"""How a silo update travels: float32 weights, or a compressed delta from the round's input.

Only projector weights cross organisations, and each round every silo uploads one. The update
is close to the global projector it started from, so its delta Δ = w − x is small and
compresses well where the weights themselves would not (bfloat16 weights would lose ~0.4 % of
every weight, several percent of a round's delta):

- ``float32``: the trained weights as they are (the default; 4 bytes a parameter);
- ``bfloat16``: Δ in bfloat16 (2 bytes a parameter; 8-bit mantissa relative to Δ itself);
- ``int8``: Δ quantised per row (per output unit) with a float32 scale of max|Δ_row| / 127
  (~1 byte a parameter).

The aggregator decodes w = x + decode(Δ) with the round's input x, which it already holds and
whose digest the update's manifest names, so nothing about the base travels twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

ENCODINGS = ("float32", "bfloat16", "int8")
SCALE = "::scale"  # per-row scales of an int8 tensor are stored as "<name>::scale"


class EncodingError(ValueError):
    pass


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(1, -1)


def encode(weights: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor],
           encoding: str) -> dict[str, torch.Tensor]:
    """What the silo writes for ``weights`` trained from ``base``."""
    if encoding == "float32":
        return {k: v.detach().float().contiguous() for k, v in weights.items()}
    out: dict[str, torch.Tensor] = {}
    for k, w in weights.items():
        delta = w.detach().float() - base[k].float()
        if encoding == "bfloat16":
            out[k] = delta.to(torch.bfloat16).contiguous()
        elif encoding == "int8":
            rows = _rows(delta)
            scale = rows.abs().amax(dim=1) / 127.0
            safe = torch.where(scale > 0, scale, torch.ones_like(scale))
            q = torch.round(rows / safe[:, None]).clamp_(-127, 127).to(torch.int8)
            out[k] = q.reshape(delta.shape).contiguous()
            out[k + SCALE] = scale.contiguous()
        else:
            raise EncodingError(f"update encoding {encoding!r} is not one of {ENCODINGS}")
    return out


class Decoded(Mapping[str, torch.Tensor]):
    """The weights an encoded update stands for, decoded tensor by tensor on access (so the
    aggregator never holds more than the tensors a strategy is looking at)."""

    def __init__(self, stored: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor],
                 encoding: str):
        if encoding not in ENCODINGS:
            raise EncodingError(f"update encoding {encoding!r} is not one of {ENCODINGS}")
        self.stored, self.base, self.encoding = stored, base, encoding
        names = {k for k in stored if not k.endswith(SCALE)}
        if encoding != "float32" and names != set(base):
            raise EncodingError(f"encoded tensors {sorted(names)} do not match the global "
                                f"projector's {sorted(base)}")
        want = torch.int8 if encoding == "int8" else torch.bfloat16
        for k in names if encoding != "float32" else ():
            t = stored[k]
            if t.dtype != want or tuple(t.shape) != tuple(base[k].shape):
                raise EncodingError(f"tensor {k!r}: {t.dtype} {tuple(t.shape)}, expected "
                                    f"{want} {tuple(base[k].shape)} for {encoding}")
            if encoding == "int8":
                s = stored.get(k + SCALE)
                if s is None or s.dtype != torch.float32 or s.numel() != _rows(t).shape[0]:
                    raise EncodingError(f"tensor {k!r}: missing or malformed {k + SCALE}")
        self._names = sorted(names)

    def __getitem__(self, k: str) -> torch.Tensor:
        if self.encoding == "float32":
            return self.stored[k]
        return self.block(k, 0, self.base[k].numel()).view(self.base[k].shape)

    def block(self, k: str, start: int, stop: int) -> torch.Tensor:
        """Elements [start, stop) of tensor ``k``'s weights, flattened, decoded alone: the
        streamed passes (fedma.aggregate.stream) read K updates a cache-sized block at a
        time, so a decoded update never exists as a whole tensor there."""
        if self.encoding == "float32":
            return self.stored[k].reshape(-1)[start:stop]
        x = self.base[k].reshape(-1)[start:stop].float()
        if self.encoding == "bfloat16":
            return x + self.stored[k].reshape(-1)[start:stop].float()
        q = _rows(self.stored[k])
        width = q.shape[1]
        first, last = start // width, -(-stop // width)  # the rows the block touches
        scale = self.stored[k + SCALE][first:last, None]
        delta = (q[first:last].float() * scale).reshape(-1)
        return x + delta[start - first * width : stop - first * width]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def roundtrip(weights: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor],
              encoding: str) -> dict[str, torch.Tensor]:
    """What the aggregator sees of ``weights`` after the trip (for benchmarks and tests)."""
    decoded = Decoded(encode(weights, base, encoding), base, encoding)
    return {k: decoded[k].to(weights[k].dtype) for k in decoded}
