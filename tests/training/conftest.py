"""Tiny datasets in the ingestion manifest format, built from scikit-learn's digits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.digits import write_digits

torch.set_num_threads(2)


def make_digits_dataset(
    root: Path,
    *,
    train_per_class: int,
    test_per_class: int,
    val_per_class: int = 0,
    size: int = 32,
    classes: int = 10,
    seed: int = 0,
) -> Path:
    """Write upscaled 8x8 digits as PNGs plus manifest.json; returns the dataset dir."""
    per_class = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    return write_digits(root, per_class=per_class, size=size, classes=classes, seed=seed)


@pytest.fixture(scope="session")
def digits_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 classes x (12 train + 3 test) at 32 px, no val split (the engine carves it)."""
    return make_digits_dataset(
        tmp_path_factory.mktemp("digits_small"), train_per_class=12, test_per_class=3, size=32
    )
