"""Datasets for multi-label and regression tasks (image, text, tabular).

The target of a sample is a number (`*_regression`) or a set of labels joined by
`label_separator` (`*_multilabel`, default `|`; an empty cell is a sample with no
label). CSV files carry it in `label_column`; image archives in a `labels.csv` at their
root with columns `path,label[,split]` (path relative to the archive root, split one of
train / val / test). Class folders stay the layout of single-label image datasets.

What ingestion writes is what the classification ingestors write (data.csv or files/,
manifest.json), with the target in the label column / the sample's `label`: a number,
or the list of label indices for multi-label images. The manifest's `targets` holds the
summary the upload response shows:
- regression: {"count", "mean", "std", "min", "max"};
- multi-label: {"label_counts": {label: n}, "label_set_sizes": {size: n}}.

Bad targets are 422s naming the row and the column: a non-number or empty regression
target, fewer than 2 labels, a label present in every sample or in no training sample.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from pathlib import Path
from typing import Any

from app.datasets.archive import iter_members, sniff_format
from app.datasets.common import (
    MANIFEST_VERSION,
    SPLITS,
    IngestError,
    Limits,
    check_fraction,
    check_label,
    show,
    staging,
    write_manifest,
)
from app.datasets.images import SPLIT_FOLDERS, _store, is_junk
from app.datasets.splits import stratified_test
from app.datasets.tabular import (
    DATA_NAME,
    SPLIT_COLUMN,
    _csv_columns,
    _is_number,
    feature_fields,
    observe_features,
    write_normalised,
)

MULTILABEL_TASKS = ("image_multilabel", "text_multilabel", "tabular_multilabel")
REGRESSION_TASKS = ("image_regression", "text_regression", "tabular_regression")
TASKS = MULTILABEL_TASKS + REGRESSION_TASKS
DEFAULT_SEPARATOR = "|"
LABELS_FILE = "labels.csv"
MAX_LABELS_CSV_BYTES = 64 * 1024**2


def is_target_task(task: str | None) -> bool:
    return task in TASKS


class Targets:
    """Parses and checks one target cell at a time; summarises them at the end."""

    def __init__(self, task: str, column: str, separator: str):
        if not separator or separator in '\r\n"':
            raise IngestError("invalid_parameter", "label_separator must be a visible character")
        self.regression = task in REGRESSION_TASKS
        self.column, self.separator = column, separator
        self.values: list[float] = []
        self.sets: list[list[str]] = []
        self.where: list[str] = []

    def add(self, cell: str, where: str) -> None:
        cell = cell.strip()
        self.where.append(where)
        if self.regression:
            if not cell:
                raise IngestError(
                    "bad_target", f"{where}, column {show(self.column)}: the target is empty"
                )
            if not _is_number(cell):
                raise IngestError(
                    "bad_target",
                    f"{where}, column {show(self.column)}: target {show(cell, 40)} is not a number",
                )
            self.values.append(float(cell))
            return
        names = sorted({p.strip() for p in cell.split(self.separator) if p.strip()})
        for n in names:
            check_label(n, f"{where}, column {self.column}")
        self.sets.append(names)

    def finish(self, splits: list[str]) -> tuple[list[str], dict[str, int], dict[str, Any]]:
        """(labels, per-label counts, the manifest's `targets`) after every row, or raise."""
        if not self.where:
            raise IngestError("empty_dataset", "the dataset contains no samples")
        if self.regression:
            n = len(self.values)
            mean = math.fsum(self.values) / n
            var = math.fsum((v - mean) ** 2 for v in self.values) / max(1, n - 1)
            if n < 4:
                raise IngestError(
                    "too_few_samples", f"a regression needs at least 4 samples; found {n}"
                )
            return (
                [],
                {},
                {
                    "count": n,
                    "mean": mean,
                    "std": math.sqrt(var),
                    "min": min(self.values),
                    "max": max(self.values),
                },
            )
        counts = Counter(label for s in self.sets for label in s)
        labels = sorted(counts)
        col = show(self.column)
        if len(labels) < 2:
            raise IngestError(
                "too_few_classes",
                f"column {col}: found {len(labels)} label(s) "
                f"({', '.join(show(x) for x in labels)}); multi-label needs at least 2",
            )
        n = len(self.sets)
        always = [x for x in labels if counts[x] == n]
        if always:
            raise IngestError(
                "bad_target",
                f"column {col}: label {show(always[0])} is present in every row (1 to {n}); "
                "a label always present cannot be learned",
            )
        train_counts = Counter(
            x for s, split in zip(self.sets, splits, strict=True) if split == "train" for x in s
        )
        never = [x for x in labels if train_counts[x] == 0]
        if never:
            first = next(w for w, s in zip(self.where, self.sets, strict=True) if never[0] in s)
            raise IngestError(
                "bad_target",
                f"column {col}: label {show(never[0])} is never present in the training split "
                f"(first seen at {first}, outside train)",
            )
        sizes = Counter(len(s) for s in self.sets)
        return (
            labels,
            {x: counts[x] for x in labels},
            {
                "label_counts": {x: counts[x] for x in labels},
                "label_set_sizes": {str(k): sizes[k] for k in sorted(sizes)},
            },
        )


def _random_test(n_pool: int, fraction: float, seed: int) -> set[int]:
    """A seeded test split of about `fraction` (no classes to stratify by)."""
    return stratified_test([0] * n_pool, fraction, seed)


def _split_counts(splits: list[str]) -> dict[str, int]:
    c = Counter(splits)
    return {s: c.get(s, 0) for s in SPLITS}


def ingest_csv_targets(
    *,
    csv_path: Path,
    dest_dir: Path,
    task: str,
    label_column: str = "label",
    text_column: str = "text",
    label_separator: str = DEFAULT_SEPARATOR,
    limits: Limits = Limits(),
    seed: int = 0,
    test_fraction: float = 0.2,
) -> dict[str, Any]:
    """A text_ or tabular_ multi-label / regression CSV into `dest_dir`; the manifest."""
    check_fraction(test_fraction)
    is_text = task.startswith("text_")
    targets = Targets(task, label_column, label_separator)
    rows, names, label_at, text_at, split_at, features, keep = _csv_columns(
        csv_path, is_text=is_text, label_column=label_column, text_column=text_column
    )

    splits: list[str] = []
    numeric = dict.fromkeys(features, True)
    missing = dict.fromkeys(features, 0)
    categories: dict[int, set[str] | None] = {i: set() for i in features}
    for line, row in rows:
        if len(splits) >= limits.max_csv_rows:
            raise IngestError("too_many_rows", f"the CSV has more than {limits.max_csv_rows} rows")
        targets.add(row[label_at], f"line {line}")
        if text_at is not None and not row[text_at].strip():
            raise IngestError("empty_text", f"line {line}: the text is empty")
        split = "train"
        if split_at is not None:
            split = SPLIT_FOLDERS.get(row[split_at].strip().lower())  # type: ignore[assignment]
            if split is None:
                raise IngestError(
                    "bad_csv",
                    f"line {line}: split must be train, val or test, got {show(row[split_at])}",
                )
        splits.append(split)
        observe_features(row, features, missing=missing, numeric=numeric, categories=categories)

    split_source = "archive" if "test" in splits else "generated"
    if split_source == "generated":
        pool = [i for i, s in enumerate(splits) if s == "train"]
        for j in _random_test(len(pool), test_fraction, seed):
            splits[pool[j]] = "test"
    classes, counts, summary = targets.finish(splits)

    # The encoded width is checked before anything is written (FINETUNE_MAX_TABULAR_WIDTH).
    fields = {} if is_text else feature_fields(
        names=names, features=features, numeric=numeric, missing=missing,
        categories=categories, n=len(splits), limits=limits,
    )  # fmt: skip
    columns = [names[i] for i in keep] + [SPLIT_COLUMN]
    with staging(dest_dir) as work:
        write_normalised(
            work / DATA_NAME, csv_path, columns=columns, keep=keep, text_at=text_at,
            missing=missing, splits=splits,
        )  # fmt: skip
        manifest: dict[str, Any] = {
            "format_version": MANIFEST_VERSION,
            "task": task,
            "source_format": "csv",
            "data_file": DATA_NAME,
            "columns": columns,
            "label_column": label_column,
            "label_separator": label_separator,
            "split_column": SPLIT_COLUMN,
            "classes": classes,
            "class_counts": counts,
            "targets": summary,
            "num_samples": len(splits),
            "splits": _split_counts(splits),
            "split_source": split_source,
            "seed": seed,
            "test_fraction": test_fraction if split_source == "generated" else None,
        }
        if is_text:
            manifest["text_column"] = text_column
        manifest.update(fields)
        write_manifest(work, manifest)
    return manifest


def _read_labels_csv(data: bytes, targets: Targets) -> list[tuple[str, str | None, str]]:
    """labels.csv -> [(path, split or None, where)], each row's target given to `targets`."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise IngestError("bad_csv", f"{LABELS_FILE} is not valid UTF-8") from None
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise IngestError("bad_csv", f"{LABELS_FILE} is empty") from None
    if "path" not in header or "label" not in header:
        raise IngestError(
            "bad_csv", f"{LABELS_FILE} needs columns path,label[,split]; found {header[:10]}"
        )
    p_at, l_at = header.index("path"), header.index("label")
    s_at = header.index("split") if "split" in header else None
    out = []
    try:
        for n, row in enumerate(reader, start=2):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            where = f"{LABELS_FILE} line {n}"
            if len(row) != len(header):
                raise IngestError(
                    "bad_csv", f"{where} has {len(row)} fields; the header has {len(header)}"
                )
            split = None
            if s_at is not None and row[s_at].strip():
                split = SPLIT_FOLDERS.get(row[s_at].strip().lower())
                if split is None:
                    raise IngestError(
                        "bad_csv",
                        f"{where}: split must be train, val or test, got {show(row[s_at])}",
                    )
            path = "/".join(p for p in row[p_at].strip().split("/") if p not in ("", "."))
            targets.add(row[l_at], where)
            out.append((path, split, where))
    except csv.Error as e:
        raise IngestError("bad_csv", f"{LABELS_FILE}: {e}") from None
    return out


def ingest_labelled_archive(
    *,
    archive_path: Path,
    dest_dir: Path,
    task: str,
    label_separator: str = DEFAULT_SEPARATOR,
    limits: Limits = Limits(),
    seed: int = 0,
    test_fraction: float = 0.2,
) -> dict[str, Any]:
    """An image archive with a root `labels.csv` (multi-label or regression) into
    `dest_dir` (files/ + manifest.json); the manifest. Every image must have a row and
    every row an image."""
    check_fraction(test_fraction)
    fmt = sniff_format(archive_path)
    if fmt not in ("zip", "tar"):
        raise IngestError(
            "unsupported_format", f"expected a ZIP or tar archive of images, got a {fmt} file"
        )
    targets = Targets(task, "label", label_separator)
    with staging(dest_dir) as work:
        files = work / "files"
        files.mkdir()
        part = work / "member.part"
        stored: dict[str, str] = {}  # member path -> stored path
        labels_csv: bytes | None = None
        for member in iter_members(archive_path, fmt, limits):
            if is_junk(member.parts):
                continue
            if member.parts == (LABELS_FILE,):
                data = bytearray()
                for chunk in member.chunks:
                    data += chunk
                    if len(data) > MAX_LABELS_CSV_BYTES:
                        raise IngestError("bad_csv", f"{LABELS_FILE} is over 64 MiB")
                labels_csv = bytes(data)
                continue
            ext = _store(member, part, limits)
            path = f"files/{len(stored):06d}.{ext}"
            part.rename(work / path)
            stored["/".join(member.parts)] = path
        if labels_csv is None:
            raise IngestError(
                "bad_layout",
                f"a {task} archive needs a {LABELS_FILE} at its root (columns path,label[,split])",
            )
        rows = _read_labels_csv(labels_csv, targets)
        seen: set[str] = set()
        for path, _, where in rows:
            if path not in stored:
                raise IngestError("bad_layout", f"{where}: no image {show(path)} in the archive")
            if path in seen:
                raise IngestError("bad_layout", f"{where}: image {show(path)} is listed twice")
            seen.add(path)
        unlisted = sorted(set(stored) - seen)
        if unlisted:
            raise IngestError(
                "bad_layout",
                f"image {show(unlisted[0])} has no row in {LABELS_FILE} "
                f"({len(unlisted)} image(s) unlisted)",
            )
        splits = [s or "train" for _, s, _ in rows]
        split_source = "archive" if "test" in splits else "generated"
        if split_source == "generated":
            pool = sorted(
                (i for i, s in enumerate(splits) if s == "train"), key=lambda i: rows[i][0]
            )
            for j in _random_test(len(pool), test_fraction, seed):
                splits[pool[j]] = "test"
        classes, counts, summary = targets.finish(splits)
        index = {c: i for i, c in enumerate(classes)}
        values: list = (
            targets.values if targets.regression else [[index[x] for x in s] for s in targets.sets]
        )
        manifest = {
            "format_version": MANIFEST_VERSION,
            "task": task,
            "source_format": fmt,
            "classes": classes,
            "class_counts": counts,
            "targets": summary,
            "label_separator": label_separator,
            "num_samples": len(rows),
            "splits": _split_counts(splits),
            "split_source": split_source,
            "seed": seed,
            "test_fraction": test_fraction if split_source == "generated" else None,
            "samples": [
                {"path": stored[path], "label": value, "split": split, "source": path}
                for (path, _, _), value, split in zip(rows, values, splits, strict=True)
            ],
        }
        write_manifest(work, manifest)
    return manifest
