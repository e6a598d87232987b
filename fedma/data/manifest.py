"""A silo's data on disk: a JSONL manifest next to an image folder.

Format (one JSON object per line; blank lines and lines starting with ``#`` are skipped)::

    {"image": "images/00001.png", "caption": "a handwritten digit ...: the number seven"}
    {"image": "images/00002.png", "caption": "...", "choices": ["...", "..."]}

- ``image``: a path relative to the manifest's folder (absolute paths are allowed; ``..`` is
  not, so a manifest cannot reach outside its folder); any format Pillow reads.
- ``caption``: non-empty text; the training target.
- ``choices`` (optional, evaluation only): candidate captions including ``caption``; retrieval
  accuracy counts how often the model ranks ``caption`` first among them.
- ``label`` (optional): an integer class, used only by experiments (non-IID partitioning).

Errors name the manifest and line, so a silo operator can fix their data without guessing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError


class DataError(ValueError):
    """The silo's data is missing or malformed; the message names the file and line."""


@dataclass(frozen=True)
class Record:
    image: Path
    caption: str
    line: int
    choices: tuple[str, ...] = ()
    label: int | None = None


# At most this many bad lines are listed in one error; the count says how many there were.
MAX_LISTED = 20


def _record(obj: object, where: str, base: Path, n: int, check_images: bool) -> Record:
    """One manifest line's record; raises DataError naming ``where`` (file:line)."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object")
    unknown = set(obj) - {"image", "caption", "choices", "label"}
    if unknown:
        raise DataError(f"{where}: unknown field(s) {sorted(unknown)}")
    image, caption = obj.get("image"), obj.get("caption")
    if not isinstance(image, str) or not image:
        raise DataError(f"{where}: 'image' must be a non-empty path")
    if not isinstance(caption, str) or not caption.strip():
        raise DataError(f"{where}: 'caption' is empty")
    rel = Path(image)
    if ".." in rel.parts:
        raise DataError(f"{where}: image path {image!r} must not contain '..'")
    img_path = rel if rel.is_absolute() else base / rel
    if check_images and not img_path.is_file():
        raise DataError(f"{where}: image {image!r} not found at {img_path}")
    choices = obj.get("choices") or []
    if choices and (not all(isinstance(c, str) and c.strip() for c in choices)
                    or caption not in choices):
        raise DataError(f"{where}: 'choices' must be non-empty strings including caption")
    label = obj.get("label")
    if label is not None and not isinstance(label, int):
        raise DataError(f"{where}: 'label' must be an integer")
    return Record(img_path, caption.strip(), n, tuple(choices), label)


def scan_manifest(path: str | Path, check_images: bool = True
                  ) -> tuple[list[Record], list[str]]:
    """Every good record and every bad line (``file:line: what is wrong``), so a silo
    operator sees all of them at once rather than one per run."""
    manifest = Path(path)
    if not manifest.is_file():
        raise DataError(f"{manifest}: data manifest not found")
    base = manifest.parent
    records: list[Record] = []
    errors: list[str] = []
    with manifest.open(encoding="utf-8") as f:
        for n, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{manifest}:{n}"
            try:
                records.append(_record(json.loads(line), where, base, n, check_images))
            except json.JSONDecodeError as exc:
                errors.append(f"{where}: not valid JSON ({exc.msg})")
            except DataError as exc:
                errors.append(str(exc))
    if not records and not errors:
        errors.append(f"{manifest}: no records")
    return records, errors


def data_error(errors: list[str]) -> DataError:
    """One error for many bad lines: the first in the first line (what a log tail shows),
    then the rest, at most MAX_LISTED."""
    more = len(errors) - MAX_LISTED
    lines = errors[:MAX_LISTED] + ([f"... and {more} more"] if more > 0 else [])
    head = lines[0] + (f" ({len(errors)} bad lines in all)" if len(errors) > 1 else "")
    return DataError("\n".join([head, *lines[1:]]))


def read_manifest(path: str | Path, check_images: bool = True) -> list[Record]:
    records, errors = scan_manifest(path, check_images)
    if errors:
        raise data_error(errors)
    return records


def load_image(record: Record, manifest: str | Path) -> Image.Image:
    try:
        with Image.open(record.image) as img:
            img.load()
            return img.copy()
    except FileNotFoundError:
        raise DataError(f"{manifest}:{record.line}: image not found at {record.image}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(
            f"{manifest}:{record.line}: image {record.image} is unreadable ({exc})"
        ) from None


def decode_errors(records: list[Record], manifest: str | Path, workers: int = 0) -> list[str]:
    """Decode every record's image (Pillow's full decode, not just its header) and return one
    ``file:line: ...`` message per image that fails, in manifest order. Threads: Pillow
    releases the GIL while it decodes."""
    from concurrent.futures import ThreadPoolExecutor

    def one(record: Record) -> str:
        try:
            load_image(record, manifest)
        except DataError as exc:
            return str(exc)
        return ""

    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) + 2)) as pool:
        return [msg for msg in pool.map(one, records) if msg]
