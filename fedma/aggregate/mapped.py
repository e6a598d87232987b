"""A safetensors file's tensors as zero-copy views of a memory map.

The aggregation Job reads K updates of a projector that may be hundreds of megabytes each.
Mapping a verified local copy keeps them out of the process's own memory: the kernel pages
them in (and out) as the strategy reads, so the Job needs O(model) of its own memory, not
O(K × model). Only safetensors is read (a JSON header and raw little-endian arrays): there is
no code path that could unpickle anything.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from fedma.store import ArtifactError

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
           "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
           "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
_MAX_HEADER = 100 * 1024 * 1024


class MappedTensors(Mapping[str, torch.Tensor]):
    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        size = len(self._map)
        try:
            if size < 8:
                raise ValueError("shorter than a safetensors header")
            (n,) = struct.unpack("<Q", self._map[:8])
            if n > min(size - 8, _MAX_HEADER):
                raise ValueError(f"header length {n} exceeds the file")
            header = json.loads(self._map[8 : 8 + n])
            header.pop("__metadata__", None)
            self._entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
            for name, e in header.items():
                dtype = _DTYPES.get(e["dtype"])
                if dtype is None:
                    raise ValueError(f"tensor {name!r}: unsupported dtype {e['dtype']}")
                start, stop = (8 + n + int(o) for o in e["data_offsets"])
                shape = tuple(int(d) for d in e["shape"])
                count = 1
                for d in shape:
                    count *= d
                if not 8 + n <= start <= stop <= size or stop - start != count * dtype.itemsize:
                    raise ValueError(f"tensor {name!r}: data offsets do not fit its shape")
                self._entries[name] = (dtype, shape, start, count)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            self._map.close()
            raise ArtifactError(f"{self.path}: not a valid safetensors file: {exc}") from None

    def __getitem__(self, name: str) -> torch.Tensor:
        dtype, shape, start, count = self._entries[name]
        # A private (copy-on-write) map: a write through a view would never reach the file.
        flat = torch.frombuffer(self._map, dtype=dtype, count=count, offset=start)
        return flat.view(shape)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        """Unmap now, unless a view is still alive (then the map goes with the last view)."""
        with contextlib.suppress(BufferError):
            self._map.close()
