"""scikit-learn's 8x8 digits, upscaled and written in the ingestion manifest format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_digits(
    root: Path, *, per_class: dict[str, int], size: int, classes: int = 10, seed: int = 0
) -> Path:
    """per_class: split -> images per class, e.g. {"train": 10, "test": 30}."""
    digits = load_digits()
    rng = np.random.RandomState(seed)
    (root / "files").mkdir(parents=True, exist_ok=True)
    samples = []
    for c in range(classes):
        idx = rng.permutation(np.flatnonzero(digits.target == c))
        start = 0
        for split, n in per_class.items():
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
