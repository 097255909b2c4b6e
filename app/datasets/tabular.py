"""Text- and tabular-classification datasets from CSV files.

The CSV is streamed twice (validate, then write) and never held in memory. It is stored
normalised as `data.csv`: UTF-8 without BOM, comma-separated, `\\n` line ends, the kept
columns in their original order, and a last column `split` (train/val/test) per row.

- text_classification: keeps the text and label columns.
- tabular_classification: keeps the label column and every other column as a feature;
  a feature is "numeric" when every non-missing value parses as a finite number, else
  "categorical". Missing values (empty, NA, N/A, NaN, null, None, ?) are written empty.

A column named `split` (other than the label or text column) is read as the user's own
split: its values must be train/val/test (or training/valid/validation/testing). Rows
without a test split get a stratified `test_fraction`, as for image archives.
"""

from __future__ import annotations

import codecs
import csv
import math
import unicodedata
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.datasets.common import (
    MANIFEST_VERSION,
    SPLITS,
    ClassNames,
    IngestError,
    Limits,
    check_classes,
    check_fraction,
    check_trainable,
    show,
    staging,
    write_manifest,
)
from app.datasets.images import SPLIT_FOLDERS
from app.datasets.splits import split_summary, stratified_test

TASKS = ("text_classification", "tabular_classification")
DATA_NAME = "data.csv"
SPLIT_COLUMN = "split"
MAX_LINE_BYTES = 1024 * 1024
MISSING = {"", "na", "n/a", "nan", "null", "none", "?"}
MAX_CATEGORIES = 1000  # categories listed in the manifest per column; beyond, null
# One-hot columns the engine gives a categorical feature at most (app.training.tabular's
# MAX_CATEGORIES; this package stays free of torch, so it is repeated here).
ONE_HOT_MAX = 64
DELIMITERS = (",", ";", "\t", "|")


def _lines(path: Path, counter: list[int]) -> Iterator[str]:
    """Decode the file line by line as UTF-8 (a BOM is dropped), with exact line numbers."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")("strict")
    with open(path, "rb") as f:
        while True:
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                break
            counter[0] += 1
            if len(raw) > MAX_LINE_BYTES:
                raise IngestError(
                    "bad_csv", f"line {counter[0]} is longer than {MAX_LINE_BYTES} bytes"
                )
            try:
                yield decoder.decode(raw)
            except UnicodeDecodeError as e:
                hint = " (the file is UTF-16)" if raw.startswith((b"\xff\xfe", b"\xfe\xff")) else ""
                raise IngestError(
                    "bad_encoding",
                    f"line {counter[0]} is not valid UTF-8{hint}: byte 0x{raw[e.start]:02x} "
                    f"at position {e.start + 1}; save the file as UTF-8",
                ) from None
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise IngestError(
                "bad_encoding", f"line {counter[0]} ends inside a UTF-8 character"
            ) from None


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, row) for the header and each non-blank record."""
    counter = [0]
    lines = _lines(path, counter)
    first = next(lines, None)
    if first is None:
        raise IngestError("empty_dataset", "the CSV file is empty")
    delimiter = max(DELIMITERS, key=first.count) if any(d in first for d in DELIMITERS) else ","

    def all_lines() -> Iterator[str]:
        yield first
        yield from lines

    reader = csv.reader(all_lines(), delimiter=delimiter)
    width = None
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if width is None:
                width = len(row)
            elif len(row) != width:
                raise IngestError(
                    "bad_csv",
                    f"line {counter[0]} has {len(row)} fields; the header has {width}",
                )
            yield counter[0], row
    except csv.Error as e:
        why = str(e)
        if "new-line character" in why:  # csv's hint about open() means nothing to a user
            why = "a lone carriage return (\\r) inside an unquoted field; use \\n line ends"
        raise IngestError("bad_csv", f"line {counter[0]}: {why}") from None


def _header(row: list[str]) -> list[str]:
    names = [name.strip() for name in row]
    for i, name in enumerate(names):
        if not name:
            raise IngestError("bad_csv", f"column {i + 1} of the header has no name")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise IngestError("bad_csv", f"column {show(name)} appears twice in the header")
        seen.add(name)
    return names


def _require(names: list[str], column: str, role: str) -> int:
    if column not in names:
        present = ", ".join(show(n, 40) for n in names[:30])
        more = f" and {len(names) - 30} more" if len(names) > 30 else ""
        raise IngestError(
            "missing_column",
            f"the {role} column {show(column)} is not in the CSV; columns present: {present}{more}",
        )
    return names.index(column)


def _is_number(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def observe_features(
    row: list[str],
    features: list[int],
    *,
    missing: dict[int, int],
    numeric: dict[int, bool],
    categories: dict[int, set[str] | None],
) -> None:
    """Pass 1's statistics of one row's feature cells: missing counts, whether a column is
    still all numbers, and its distinct values (None once it has more than
    MAX_CATEGORIES)."""
    for i in features:
        value = row[i].strip()
        if value.lower() in MISSING:
            missing[i] += 1
            continue
        if numeric[i] and not _is_number(value):
            numeric[i] = False
        seen = categories[i]
        if seen is not None:
            seen.add(value)
            if len(seen) > MAX_CATEGORIES:
                categories[i] = None


def _csv_columns(csv_path: Path, *, is_text: bool, label_column: str, text_column: str):
    """Open a CSV and resolve its columns: (rows after the header, names, label index,
    text index or None, split index or None, feature indices, the indices kept)."""
    if SPLIT_COLUMN in (label_column, text_column if is_text else None):
        raise IngestError("invalid_parameter", f"{SPLIT_COLUMN!r} is reserved for the split column")
    if is_text and text_column == label_column:
        raise IngestError("invalid_parameter", "text_column and label_column must differ")
    rows = _rows(csv_path)
    _, header_row = next(rows)
    names = _header(header_row)
    label_at = _require(names, label_column, "label")
    text_at = _require(names, text_column, "text") if is_text else None
    split_at = names.index(SPLIT_COLUMN) if SPLIT_COLUMN in names else None
    if is_text:
        keep = sorted({text_at, label_at})  # type: ignore[arg-type]
        features: list[int] = []
    else:
        features = [i for i in range(len(names)) if i not in (label_at, split_at)]
        if not features:
            raise IngestError("bad_csv", "a tabular dataset needs at least one feature column")
        keep = sorted([*features, label_at])
    return rows, names, label_at, text_at, split_at, features, keep


def write_normalised(
    path: Path,
    csv_path: Path,
    *,
    columns: list[str],
    keep: list[int],
    text_at: int | None,
    missing,
    splits: list[str],
    nfc_at: int | None = None,
) -> None:
    """Pass 2 of a CSV ingest: the kept columns, row for row in the order pass 1
    validated, cells stripped (not the text), missing markers emptied, column `nfc_at`
    NFC-normalised, and each row's split last."""
    with open(path, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        rows = _rows(csv_path)
        next(rows)
        for n, (_, row) in enumerate(rows):
            cells = []
            for i in keep:
                value = row[i] if i == text_at else row[i].strip()
                if i == nfc_at:
                    value = unicodedata.normalize("NFC", value)
                cells.append("" if i in missing and value.lower() in MISSING else value)
            writer.writerow([*cells, splits[n]])


def feature_fields(
    *, names, features, numeric, missing, categories, n: int, limits: Limits
) -> dict[str, Any]:
    """A tabular manifest's feature fields from pass 1's column statistics over `n` rows,
    with the one-hot encoded width, refused over `limits.max_encoded_width` (a 422 naming
    the setting) before anything is written."""
    kinds = {i: numeric[i] and missing[i] < n for i in features}
    width = sum(
        (1 + (missing[i] > 0))
        if kinds[i]
        else min(len(categories[i] or ()) or ONE_HOT_MAX, ONE_HOT_MAX)
        for i in features
    )
    if width > limits.max_encoded_width:
        n_cat = sum(1 for i in features if not kinds[i])
        raise IngestError(
            "too_wide",
            f"the {len(features)} feature columns ({n_cat} categorical) one-hot encode to "
            f"{width} columns, over the limit of {limits.max_encoded_width} "
            "(FINETUNE_MAX_TABULAR_WIDTH); drop id-like or high-cardinality columns",
        )
    types = {names[i]: "numeric" if kinds[i] else "categorical" for i in features}
    return {
        "feature_columns": [names[i] for i in features],
        "feature_types": types,
        "missing_counts": {names[i]: missing[i] for i in features},
        "encoded_width": width,
        "categories": {
            names[i]: sorted(categories[i]) if categories[i] is not None else None
            for i in features
            if types[names[i]] == "categorical"
        },
    }


def ingest_csv(
    *,
    csv_path: Path,
    dest_dir: Path,
    task: str,
    label_column: str = "label",
    text_column: str = "text",
    limits: Limits = Limits(),
    seed: int = 0,
    test_fraction: float = 0.2,
) -> dict[str, Any]:
    """Validate a CSV into `dest_dir` (data.csv + manifest.json); return the manifest."""
    if task not in TASKS:
        raise IngestError("unsupported_task", f"task must be one of {', '.join(TASKS)} for a CSV")
    check_fraction(test_fraction)
    is_text = task == "text_classification"
    rows, names, label_at, text_at, split_at, features, keep = _csv_columns(
        csv_path, is_text=is_text, label_column=label_column, text_column=text_column
    )

    # Pass 1: validate every row; remember only labels, splits and column statistics.
    label_ids: dict[str, int] = {}  # by the label's spelling in the file
    label_names = ClassNames()
    labels = array("I")
    given_splits = array("B")
    numeric = dict.fromkeys(features, True)
    missing = dict.fromkeys(features, 0)
    categories: dict[int, set[str] | None] = {i: set() for i in features}
    for line, row in rows:
        if len(labels) >= limits.max_csv_rows:
            raise IngestError("too_many_rows", f"the CSV has more than {limits.max_csv_rows} rows")
        label = row[label_at].strip()
        if not label:
            raise IngestError("bad_csv", f"line {line}: the label is empty")
        if label not in label_ids:
            label_ids[label] = len(label_ids)
            label_names.add(label, f"line {line}")
        labels.append(label_ids[label])
        if text_at is not None and not row[text_at].strip():
            raise IngestError("empty_text", f"line {line}: the text is empty")
        if split_at is not None:
            given = SPLIT_FOLDERS.get(row[split_at].strip().lower())
            if given is None:
                raise IngestError(
                    "bad_csv",
                    f"line {line}: split must be train, val or test, got {show(row[split_at])}",
                )
            given_splits.append(SPLITS.index(given))
        observe_features(row, features, missing=missing, numeric=numeric, categories=categories)

    # Stored NFC-normalised (ClassNames refused two spellings of one name above).
    label_ids = {unicodedata.normalize("NFC", k): v for k, v in label_ids.items()}
    classes = sorted(label_ids)
    counts = _counts(labels, label_ids)
    check_classes(counts, limits)
    position = {name: i for i, name in enumerate(classes)}
    remap = [0] * len(label_ids)
    for name, first_seen in label_ids.items():
        remap[first_seen] = position[name]
    labels = array("I", (remap[x] for x in labels))

    splits = [SPLITS[x] for x in given_splits] if split_at is not None else ["train"] * len(labels)
    split_source = "archive" if "test" in splits else "generated"
    need_train = 1 if "val" in splits else 2  # else the engine carves val out of train
    if split_source == "generated":
        pool = [i for i, s in enumerate(splits) if s == "train"]
        for j in stratified_test([labels[i] for i in pool], test_fraction, seed, keep=need_train):
            splits[pool[j]] = "test"
    totals, per_split = split_summary(splits, labels, classes)
    check_trainable(per_split, need_train=need_train, generated=split_source == "generated")
    fields = {} if is_text else feature_fields(
        names=names, features=features, numeric=numeric, missing=missing,
        categories=categories, n=len(labels), limits=limits,
    )  # fmt: skip

    columns = [names[i] for i in keep] + [SPLIT_COLUMN]
    with staging(dest_dir) as work:
        # Pass 2: write the normalised copy, row for row in the order pass 1 validated.
        write_normalised(
            work / DATA_NAME, csv_path, columns=columns, keep=keep, text_at=text_at,
            missing=missing, splits=splits, nfc_at=label_at,
        )  # fmt: skip
        manifest: dict[str, Any] = {
            "format_version": MANIFEST_VERSION,
            "task": task,
            "source_format": "csv",
            "data_file": DATA_NAME,
            "columns": columns,
            "label_column": label_column,
            "split_column": SPLIT_COLUMN,
            "classes": classes,
            "class_counts": {c: counts[c] for c in classes},
            "num_samples": len(labels),
            "splits": totals,
            "split_class_counts": per_split,
            "split_source": split_source,
            "seed": seed,
            "test_fraction": test_fraction if split_source == "generated" else None,
        }
        if is_text:
            manifest["text_column"] = text_column
        manifest.update(fields)
        write_manifest(work, manifest)
    return manifest


def _counts(labels: array, label_ids: dict[str, int]) -> dict[str, int]:
    by_id = [0] * len(label_ids)
    for x in labels:
        by_id[x] += 1
    return {name: by_id[i] for name, i in label_ids.items()}
