"""Tiny datasets in the ingestion manifest format, built from scikit-learn's digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

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
    digits = load_digits()
    rng = np.random.RandomState(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "files").mkdir(exist_ok=True)
    samples = []
    for c in range(classes):
        idx = rng.permutation(np.flatnonzero(digits.target == c))
        take = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
        start = 0
        for split, n in take.items():
            for i in idx[start : start + n]:
                pixels = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
                img = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)
                rel = f"files/{len(samples):06d}.png"
                img.convert("RGB").save(root / rel)
                samples.append({"path": rel, "label": c, "split": split})
            start += n
    manifest = {
        "task": "image_classification",
        "classes": [str(c) for c in range(classes)],
        "samples": samples,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="session")
def digits_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 classes x (12 train + 3 test) at 32 px, no val split (the engine carves it)."""
    return make_digits_dataset(
        tmp_path_factory.mktemp("digits_small"), train_per_class=12, test_per_class=3, size=32
    )
