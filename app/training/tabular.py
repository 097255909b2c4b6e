"""Tabular classification: preprocessing fitted on the training split, and an MLP.

Preprocessing (a plain JSON object saved in the model's config.json, never a pickle):
- numeric columns: standard scaling with the training split's mean and std; a missing
  value becomes the mean (0 after scaling), and a column with missing values in the
  training split gets a 0/1 "was missing" indicator beside it;
- categorical columns: one-hot over the categories seen in the training split (the 64
  most frequent); a missing, unseen or rarer category is all zeros.

As a TransferModel the MLP has no stem (identity), blocks = its hidden layers
(Linear -> ReLU -> Dropout), no pooling, and a linear head. It has no pretrained
weights: "pretrained" is a seeded random init, as for tiny_cnn; transfer comes from
`model:<id>` or uploaded weights. With no hidden layers (LINEAR) it is the head alone on
the encoded inputs: multinomial logistic regression (ridge for a regression) once the
exact probe fits it, `auto`'s first rung from random weights. A model's config.json
records its hidden layers (`hidden`); one without them is the default MLP (HIDDEN).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from app.training.csvdata import TensorData, make_splits, read_csv_dataset, split_rows
from app.training.errors import DatasetError, InvalidInput

TASK = "tabular_classification"
HIDDEN = (128, 128, 64)
LINEAR: tuple[int, ...] = ()  # no hidden layer: a linear model of the encoded inputs
DROPOUT = 0.1
MAX_CATEGORIES = 64  # one-hot columns per categorical feature; rarer values are all zeros
DEFAULT_INPUTS = 16  # only for listing a parameter count; real models size to the data
MISSING = {"", "na", "n/a", "nan", "null", "none", "?"}


def _is_missing(v: object) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and v.strip().lower() in MISSING


def fit_preprocessing(manifest: dict, rows: list[dict]) -> dict:
    """Fit on `rows` (the training split only)."""
    types = manifest.get("feature_types", {})
    columns = list(manifest.get("feature_columns", []))
    if not columns:
        raise DatasetError("a tabular dataset needs at least one feature column")
    features = []
    for col in columns:
        values = [r.get(col) for r in rows]
        present = [v for v in values if not _is_missing(v)]
        if types.get(col) == "numeric":
            x = np.array([float(v) for v in present], dtype=np.float64)
            mean = float(x.mean()) if len(x) else 0.0
            std = float(x.std()) if len(x) else 1.0
            features.append(
                {
                    "column": col,
                    "type": "numeric",
                    "mean": mean,
                    "std": std if std > 1e-12 else 1.0,
                    "indicator": len(present) < len(values),
                }
            )
        else:
            # The most frequent categories only: an id-like column must not blow the width up.
            counts = Counter(str(v) for v in present)
            kept = sorted(counts, key=lambda c: (-counts[c], c))[:MAX_CATEGORIES]
            features.append({"column": col, "type": "categorical", "categories": sorted(kept)})
    width = sum(
        (1 + f["indicator"]) if f["type"] == "numeric" else len(f["categories"]) for f in features
    )
    if width == 0:
        raise DatasetError("no usable feature: every feature is empty in the training split")
    return {"features": features, "width": width}


def encode_rows(pre: dict, rows: list[dict], *, strict: bool = False) -> torch.Tensor:
    """(N, width) float32. `strict` (predict inputs): every feature column must be present,
    numbers must be numbers; a missing value is null (or absent from a CSV row)."""
    out = np.zeros((len(rows), pre["width"]), dtype=np.float32)
    for i, row in enumerate(rows):
        if strict and not isinstance(row, dict):
            raise InvalidInput(
                f"inputs[{i}]: a tabular model takes objects {{column: value}}, "
                f"got {type(row).__name__}"
            )
        if strict:
            absent = [f["column"] for f in pre["features"] if f["column"] not in row]
            if absent:
                raise InvalidInput(f"inputs[{i}]: missing columns {absent}")
        j = 0
        for f in pre["features"]:
            v = row.get(f["column"])
            if f["type"] == "numeric":
                if _is_missing(v):
                    x, missing = 0.0, 1.0
                else:
                    if strict and (isinstance(v, bool) or not isinstance(v, int | float)):
                        raise InvalidInput(
                            f"inputs[{i}].{f['column']}: expected a number or null, "
                            f"got {type(v).__name__} {v!r:.40}"
                        )
                    try:
                        value = float(v)
                    except (TypeError, ValueError):
                        raise InvalidInput(
                            f"inputs[{i}].{f['column']}: not a number: {v!r:.40}"
                        ) from None
                    if not math.isfinite(value):
                        raise InvalidInput(f"inputs[{i}].{f['column']}: not a finite number")
                    x, missing = (value - f["mean"]) / f["std"], 0.0
                out[i, j] = x
                if f["indicator"]:
                    out[i, j + 1] = missing
                j += 1 + f["indicator"]
            else:
                if strict and not (_is_missing(v) or isinstance(v, str | int | float)):
                    raise InvalidInput(
                        f"inputs[{i}].{f['column']}: expected a category (string), "
                        f"got {type(v).__name__}"
                    )
                cats = f["categories"]
                if not _is_missing(v):
                    key = str(v)
                    if isinstance(v, float) and v.is_integer():
                        key = str(int(v)) if key not in cats else key
                    if key in cats:
                        out[i, j + cats.index(key)] = 1.0
                j += len(cats)
    return torch.from_numpy(out)


def build_mlp(
    pretrained: bool, num_inputs: int = DEFAULT_INPUTS, hidden: tuple[int, ...] = HIDDEN
):  # -> build.Parts
    blocks, width = [], num_inputs
    for h in hidden:
        blocks.append(nn.Sequential(nn.Linear(width, h), nn.ReLU(), nn.Dropout(DROPOUT)))
        width = h
    return nn.Identity(), blocks, width, 0.0, None


def hidden_of(model: nn.Module) -> list[int]:
    """The hidden layer widths of an MLP built by build_mlp (config.json's `hidden`)."""
    return [block[0].out_features for block in model.blocks]


def hidden_in(config: dict) -> tuple[int, ...]:
    """The hidden layers a model's config.json records; HIDDEN for one written before
    it recorded them."""
    return tuple(config.get("hidden", HIDDEN))


def load_tabular_dataset(
    dataset_dir: Path,
    *,
    val_fraction: float = 0.15,
    seed: int = 0,
    preprocessing: dict | None = None,
    task: str = TASK,
) -> TensorData:
    """Encoded, split tabular dataset (of any tabular_ task); meta["preprocessing"] is
    fitted on the training split, or is `preprocessing` (a parent model's) when given."""
    manifest, rows = read_csv_dataset(dataset_dir, task=task)
    classes, labels, idx = split_rows(rows, manifest=manifest, val_fraction=val_fraction, seed=seed)
    if preprocessing is None:
        preprocessing = fit_preprocessing(manifest, [rows[i] for i in idx["train"]])
    else:
        need = [f["column"] for f in preprocessing["features"]]
        absent = [c for c in need if c not in manifest.get("feature_columns", [])]
        if absent:
            raise DatasetError(
                f"the base model was trained on columns this dataset lacks: {absent}",
                code="feature_mismatch",
            )
    x = encode_rows(preprocessing, rows)
    train, val, test = make_splits(x, labels, idx)
    return TensorData(classes, train, val, test, meta={"preprocessing": preprocessing})
