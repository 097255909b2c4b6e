"""What every ingestion path shares: limits, the error type, safe names, staging, manifests.

Pure Python: no web framework, no database, no torch. The API maps `IngestError` to
`{"error": {"code", "message"}}` with `IngestError.status`.
"""

from __future__ import annotations

import json
import shutil
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
SPLITS = ("train", "val", "test")
MAX_LABEL_CHARS = 128


@dataclass(frozen=True)
class Limits:
    max_members: int = 100_000  # files in an archive
    max_total_bytes: int = 2 * 1024**3  # bytes actually decompressed, counted while extracting
    max_member_bytes: int = 64 * 1024**2
    max_ratio: float = 200.0  # decompressed/compressed, counted on bytes actually read
    max_image_pixels: int = 50_000_000  # per image (decompression bombs)
    min_classes: int = 2
    min_samples_per_class: int = 2
    max_csv_rows: int = 2_000_000
    # Columns a tabular dataset's features one-hot encode to (FINETUNE_MAX_TABULAR_WIDTH):
    # the MLP's first layer and every batch are this wide.
    max_encoded_width: int = 10_000


class IngestError(Exception):
    """A problem with the uploaded data: `code` is stable, `message` is for people."""

    def __init__(self, code: str, message: str, status: int = 422):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def __repr__(self) -> str:
        return f"IngestError({self.code!r}, {self.message!r}, status={self.status})"


def show(name: str, limit: int = 80) -> str:
    """Quote a user-supplied name for an error message: escaped, and never huge."""
    text = ascii(name) if any(not c.isprintable() for c in name) else repr(name)
    return text if len(text) <= limit else text[: limit - 5] + "...'"


def check_label(name: str, where: str) -> str:
    """Return a class name that is safe to show, store and use as a JSON key, or raise."""
    if not name:
        raise IngestError("bad_class_name", f"empty class name ({where})")
    if len(name) > MAX_LABEL_CHARS:
        raise IngestError(
            "bad_class_name", f"class name {show(name)} is longer than {MAX_LABEL_CHARS} characters"
        )
    # Cc: control characters; Cf: invisible formatting (bidi overrides, zero-width joiners);
    # Cs: lone surrogates, which is how undecodable bytes in a tar name arrive.
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in name):
        raise IngestError(
            "bad_class_name", f"class name {show(name)} contains control characters ({where})"
        )
    return name


class ClassNames:
    """Class names as stored: checked, NFC-normalised ("café" typed on a Mac and on Linux
    is one class), and refused when two different spellings normalise to one name."""

    def __init__(self) -> None:
        self._spelling: dict[str, str] = {}

    def add(self, raw: str, where: str) -> str:
        name = raw if unicodedata.is_normalized("NFC", raw) else unicodedata.normalize("NFC", raw)
        first = self._spelling.get(name)
        if first is None:
            self._spelling[name] = raw
            return check_label(name, where)
        if first != raw:
            raise IngestError(
                "class_name_collision",
                f"class names {ascii(first)} and {ascii(raw)} are the same name {show(name)} "
                f"in different Unicode forms ({where}); use one spelling",
            )
        return name


def check_trainable(
    per_split: dict[str, dict[str, int]], *, need_train: int, generated: bool
) -> None:
    """After the split: every class keeps `need_train` training samples (one to train on,
    one the engine sets aside for validation when there is no val split), and the test
    split is not empty. Refused at upload, with counts, rather than by the job later."""
    short = sorted(c for c, n in per_split["train"].items() if n < need_train)
    if short:
        named = ", ".join(f"{show(c)} ({per_split['train'][c]})" for c in short[:5])
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        held = " after the held-out test split" if generated else ""
        raise IngestError(
            "too_few_samples",
            f"every class needs at least {need_train} training samples{held} "
            f"(one to train on, one to validate); {len(short)} of "
            f"{len(per_split['train'])} classes have fewer: {named}{more}",
        )
    if not any(per_split["test"].values()):
        need = need_train + 1
        raise IngestError(
            "too_few_samples",
            f"no class has enough samples to hold any out for testing: a class needs at "
            f"least {need} samples to give one to the test split and keep {need_train} "
            "to train on",
        )


def check_fraction(test_fraction: float) -> None:
    if not 0.0 <= test_fraction < 1.0:
        raise IngestError(
            "invalid_parameter", f"test_fraction must be in [0, 1), got {test_fraction}"
        )


@contextmanager
def staging(dest_dir: Path) -> Iterator[Path]:
    """Yield a scratch folder inside `dest_dir`; publish its contents only if the block succeeds.

    On any error everything written is removed, and `dest_dir` too when this call created
    it, so a failed ingest leaves nothing behind.
    """
    dest_dir = Path(dest_dir)
    created = not dest_dir.exists()
    if not created and any(dest_dir.iterdir()):
        raise FileExistsError(f"{dest_dir} is not empty; ingest needs a fresh folder")
    dest_dir.mkdir(parents=True, exist_ok=True)
    work = dest_dir / ".ingest-tmp"
    work.mkdir()
    try:
        yield work
        for child in work.iterdir():
            child.rename(dest_dir / child.name)
        work.rmdir()
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        for child in dest_dir.iterdir():  # anything published before the failure
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        if created:
            dest_dir.rmdir()
        raise


def check_classes(class_counts: dict[str, int], limits: Limits) -> None:
    """Reject datasets that cannot train a classifier: empty, one class, starved classes."""
    if not class_counts:
        raise IngestError("empty_dataset", "the dataset contains no samples")
    if len(class_counts) < limits.min_classes:
        code = "single_class" if len(class_counts) == 1 else "too_few_classes"
        found = ", ".join(show(c) for c in sorted(class_counts)[:10])
        raise IngestError(
            code,
            f"found {len(class_counts)} class(es) ({found}); "
            f"a classifier needs at least {limits.min_classes}",
        )
    starved = sorted(c for c, n in class_counts.items() if n < limits.min_samples_per_class)
    if starved:
        named = ", ".join(f"{show(c)} ({class_counts[c]})" for c in starved[:10])
        raise IngestError(
            "too_few_samples",
            f"every class needs at least {limits.min_samples_per_class} samples; "
            f"{len(starved)} class(es) have fewer: {named}",
        )


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    with open(folder / MANIFEST_NAME, "w", encoding="utf-8") as f:
        json.dump(manifest, f, ensure_ascii=False, indent=1)
        f.write("\n")
