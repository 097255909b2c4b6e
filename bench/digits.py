"""scikit-learn's 8x8 digits as images: the one digit-image generator of the benches and
the tests (tests/helpers.py builds its ZIP uploads on it).

- `digit_image(pixels, size)`: one digit, upscaled to `size` px RGB;
- `digit_images(per_class, ...)`: (label, image) pairs, the first of each class in the
  data set's order;
- `write_digits(root, per_class=...)`: a dataset in the ingestion manifest format, a
  seeded draw of each class per split.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image


def _load_digits():  # noqa: ANN202 - a scikit-learn Bunch; imported only when used
    from sklearn.datasets import load_digits

    return load_digits()


def digit_image(pixels: np.ndarray, size: int | None = None) -> Image.Image:
    """A digit's pixels (values 0..16) as a grey image; upscaled (bilinear) to `size` px
    and RGB when `size` is given."""
    img = Image.fromarray((pixels * (255.0 / 16.0)).astype(np.uint8))
    if size is None:
        return img
    return img.resize((size, size), Image.Resampling.BILINEAR).convert("RGB")


def digit_images(
    per_class: int, size: int = 32, classes: int = 10, offset: int = 0
) -> Iterator[tuple[int, Image.Image]]:
    """(label, image) pairs of digits 0..classes-1: per class, its images number
    offset .. offset + per_class - 1 in the data set's order."""
    digits = _load_digits()
    taken: dict[int, int] = {}
    for pixels, label in zip(digits.images, digits.target, strict=True):
        label = int(label)
        if label >= classes:
            continue
        n = taken.get(label, 0)
        if n >= offset + per_class:
            continue
        taken[label] = n + 1
        if n >= offset:
            yield label, digit_image(pixels, size)


def write_digits(
    root: Path, *, per_class: dict[str, int], size: int, classes: int = 10, seed: int = 0
) -> Path:
    """per_class: split -> images per class, e.g. {"train": 10, "test": 30}."""
    digits = _load_digits()
    rng = np.random.RandomState(seed)
    (root / "files").mkdir(parents=True, exist_ok=True)
    samples = []
    for c in range(classes):
        idx = rng.permutation(np.flatnonzero(digits.target == c))
        start = 0
        for split, n in per_class.items():
            for i in idx[start : start + n]:
                rel = f"files/{len(samples):06d}.png"
                digit_image(digits.images[i], size).save(root / rel)
                samples.append({"path": rel, "label": c, "split": split})
            start += n
    manifest = {
        "task": "image_classification",
        "classes": [str(c) for c in range(classes)],
        "samples": samples,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root
