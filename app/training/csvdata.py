"""Rows of an ingested CSV dataset (text or tabular), split the way images are.

Ingestion (app/datasets/tabular.py) writes `data.csv` (the kept columns and a last
`split` column: train / val / test) and `manifest.json` (`classes`, `label_column`, and
`text_column` or `feature_columns` / `feature_types` / `categories`). The engine reads
it with the csv module; the split rules are those of data.load_dataset: "test" is held
out, and without "val" a stratified `val_fraction` of train becomes val (seeded).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from app.training.data import check_classes, split_indices
from app.training.errors import DatasetError
from app.training.tasks import (
    DEFAULT_SEPARATOR,
    encode_targets,
    get_task,
    parse_cell,
    stratify_classes,
)


@dataclass
class TensorSplit:
    inputs: torch.Tensor  # token ids + mask (N, 2, L) for text, features (N, F) for tabular
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TensorData:
    classes: list[str]
    train: TensorSplit
    val: TensorSplit
    test: TensorSplit
    meta: dict = field(default_factory=dict)  # what inference needs (tokenizer, preprocessing)


def read_csv_dataset(dataset_dir: Path, *, task: str) -> tuple[dict, list[dict]]:
    # `task`: the dataset's (any kind of the loader's modality)
    """(manifest, rows as dicts) of an ingested CSV dataset of `task`."""
    dataset_dir = Path(dataset_dir)
    try:
        manifest = json.loads((dataset_dir / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read dataset manifest in {dataset_dir}: {e}") from e
    if manifest.get("task") != task:
        raise DatasetError(f"dataset task is {manifest.get('task')!r}, not {task}")
    check_classes(get_task(task).kind, manifest.get("classes", []))
    path = dataset_dir / manifest.get("data_file", "data.csv")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"cannot read {path.name}: {e}") from e
    return manifest, rows


def split_rows(
    rows: list[dict],
    *,
    manifest: dict,
    val_fraction: float,
    seed: int,
) -> tuple[list[str], torch.Tensor, dict[str, np.ndarray]]:
    """(classes, the task's targets, {"train"|"val"|"test": row indices}) with the image
    rules. The label cell is a class, labels joined by `label_separator` (multi-label)
    or a number (regression): tasks.parse_cell."""
    kind = get_task(manifest.get("task")).kind
    classes = [str(c) for c in manifest.get("classes", [])]
    index = {c: i for i, c in enumerate(classes)}
    label_column = manifest["label_column"]
    split_column = manifest.get("split_column", "split")
    sep = manifest.get("label_separator", DEFAULT_SEPARATOR)
    values = [
        parse_cell(kind, r[label_column] or "", index, sep, n + 1) for n, r in enumerate(rows)
    ]
    y, labels = encode_targets(kind, values, classes)
    splits = np.array([r.get(split_column) or "train" for r in rows])
    idx = split_indices(
        labels,
        splits,
        stratify_classes(kind, classes),
        val_fraction=val_fraction,
        seed=seed,
        unit="rows",
    )
    return classes, y, idx


def make_splits(
    inputs: torch.Tensor, y: torch.Tensor, idx: dict[str, np.ndarray]
) -> tuple[TensorSplit, TensorSplit, TensorSplit]:

    def take(name: str) -> TensorSplit:
        t = torch.from_numpy(idx[name])
        return TensorSplit(inputs=inputs[t], labels=y[t])

    return take("train"), take("val"), take("test")
