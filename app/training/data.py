"""Load an ingested image dataset: decode once, cache as uint8 tensors, split.

On disk (written by ingestion): `manifest.json` =
`{"task", "classes", "samples": [{"path", "label", "split"}]}` with paths relative to
the dataset directory and split in train / val / test. "test" is held out: training
never sees it. Without "val", a stratified `val_fraction` of train becomes val (seeded).

Decoding is the slow part of a small job, so every image is decoded once per
(dataset, image_size) into one uint8 tensor file under `cache_dir`; the next job on the
same data and size reads that file instead.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from app.training import atomic
from app.training.errors import DatasetError
from app.training.presets import pil_to_uint8
from app.training.tasks import Kind, encode_targets, get_task, stratify_classes

MIN_PER_CLASS_TRAIN = 2  # one to train on, one for val when val is carved out


# ---------------------------------------------------------------- the data protocol
# What the loop (loop.fit) and auto.search read of a dataset, whatever its modality:
# ImageData here, csvdata.TensorData for text and tabular.


@runtime_checkable
class SplitData(Protocol):
    @property
    def inputs(self) -> torch.Tensor:
        """What the model consumes, one sample per row: uint8 images (N, 3, S, S), token
        ids + mask (N, 2, L) or encoded features (N, F)."""
        ...

    @property
    def labels(self) -> torch.Tensor:
        """The task's targets (tasks.encode_targets), one per row of `inputs`."""
        ...

    def __len__(self) -> int: ...


@runtime_checkable
class TrainData(Protocol):
    @property
    def classes(self) -> list[str]: ...

    @property
    def train(self) -> SplitData: ...

    @property
    def val(self) -> SplitData: ...

    @property
    def test(self) -> SplitData:
        """Held out: the loop evaluates on it once, at the end, never trains on it."""
        ...


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, 3, S, S)
    labels: torch.Tensor  # the task's targets: int64 (N,), 0/1 (N, L) or values (N,)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def inputs(self) -> torch.Tensor:
        """What the loop feeds the model (the name every modality's split shares)."""
        return self.images


@dataclass
class ImageData:
    classes: list[str]
    train: Split
    val: Split
    test: Split


def read_manifest(dataset_dir: Path, task: str = "image_classification") -> tuple[dict, bytes]:
    """(parsed manifest, its raw bytes: part of the decode-cache key)."""
    path = Path(dataset_dir) / "manifest.json"
    try:
        raw = path.read_bytes()
        manifest = json.loads(raw)
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read dataset manifest {path}: {e}") from e
    if manifest.get("task", "image_classification") != task:
        raise DatasetError(f"dataset task is {manifest['task']!r}, not {task}")
    check_classes(get_task(task).kind, manifest.get("classes", []))
    return manifest, raw


def check_classes(kind: Kind, classes: list) -> None:
    """A classification needs 2 classes, a multi-label dataset 2 labels; a regression none."""
    if kind != Kind.REGRESSION and len(classes) < 2:
        raise DatasetError(f"a {kind} dataset needs at least 2 labels")


def _decode_all(dataset_dir: Path, samples: list[dict], image_size: int) -> torch.Tensor:
    out = torch.empty((len(samples), 3, image_size, image_size), dtype=torch.uint8)
    root = Path(dataset_dir).resolve()
    for i, sample in enumerate(samples):
        path = (root / sample["path"]).resolve()
        if not path.is_relative_to(root):
            raise DatasetError(f"sample path escapes the dataset directory: {sample['path']}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    img.draft("RGB", (image_size, image_size))  # JPEG: as predict decodes
                    out[i] = pil_to_uint8(img, image_size)
        except (
            OSError,
            ValueError,
            SyntaxError,
            Image.DecompressionBombWarning,
            Image.DecompressionBombError,
        ) as e:
            raise DatasetError(f"cannot decode {sample['path']}: {e}") from e
    return out


def _cached_images(
    dataset_dir: Path, manifest_bytes: bytes, samples: list[dict], image_size: int, cache_dir: Path
) -> torch.Tensor:
    key = hashlib.sha256(
        str(Path(dataset_dir).resolve()).encode() + b"\0" + manifest_bytes
    ).hexdigest()[:24]
    path = Path(cache_dir) / f"images-{key}-{image_size}.safetensors"
    if path.is_file():
        return load_file(path)["images"]
    images = _decode_all(dataset_dir, samples, image_size)
    # Concurrent jobs on the same dataset may race here; both write whole files and the
    # rename is atomic, so a reader never sees a partial cache.
    with atomic.atomic_path(path) as tmp:
        save_file({"images": images}, tmp)
    return images


def split_indices(
    labels: np.ndarray,
    splits: np.ndarray,
    classes: list[str],
    *,
    val_fraction: float,
    seed: int,
    unit: str,
) -> dict[str, np.ndarray]:
    """Indices of train / val / test from each sample's split; without a val split, a
    stratified `val_fraction` of train (seeded). Refuses data too small to train on."""
    train_idx = np.flatnonzero(splits == "train")
    val_idx = np.flatnonzero(splits == "val")
    test_idx = np.flatnonzero(splits == "test")
    counts = np.bincount(labels[train_idx], minlength=len(classes))
    if (counts < MIN_PER_CLASS_TRAIN).any():
        short = [classes[c] for c in np.flatnonzero(counts < MIN_PER_CLASS_TRAIN)]
        raise DatasetError(
            f"dataset too small: classes {short} have fewer than {MIN_PER_CLASS_TRAIN} "
            f"training {unit}",
            code="dataset_too_small",
        )
    if len(test_idx) == 0:
        raise DatasetError("dataset has no held-out test split", code="dataset_too_small")
    if len(val_idx) == 0:
        if not 0.0 < val_fraction < 1.0:
            raise DatasetError("val_fraction must be in (0, 1) when the dataset has no val split")
        rng = np.random.RandomState(seed)
        train_idx, val_idx = _stratified_take(train_idx, labels, val_fraction, rng)
    return {"train": train_idx, "val": val_idx, "test": test_idx}


def _stratified_take(
    indices: np.ndarray, labels: np.ndarray, fraction: float, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    """Split `indices` into (keep, taken), taking ~fraction of each class (at least one
    from every class that has two or more samples)."""
    keep, taken = [], []
    for c in np.unique(labels[indices]):
        members = indices[labels[indices] == c]
        members = members[rng.permutation(len(members))]
        n = int(round(fraction * len(members)))
        n = min(max(n, 1 if len(members) >= 2 else 0), len(members) - 1)
        taken.extend(members[:n])
        keep.extend(members[n:])
    return np.sort(np.array(keep, dtype=np.int64)), np.sort(np.array(taken, dtype=np.int64))


def load_dataset(
    dataset_dir: Path,
    *,
    image_size: int,
    cache_dir: Path,
    val_fraction: float = 0.15,
    seed: int = 0,
    task: str = "image_classification",
) -> ImageData:
    """Decoded (cached) and split dataset; raises DatasetError when unusable. A sample's
    `label` is its class index, its label indices (multi-label) or its value
    (regression): tasks.encode_targets."""
    manifest, manifest_bytes = read_manifest(dataset_dir, task)
    kind = get_task(task).kind
    classes = [str(c) for c in manifest.get("classes", [])]
    samples = manifest.get("samples", [])
    y, labels = encode_targets(kind, [s["label"] for s in samples], classes)
    splits = np.array([s.get("split", "train") for s in samples])

    idx = split_indices(
        labels,
        splits,
        stratify_classes(kind, classes),
        val_fraction=val_fraction,
        seed=seed,
        unit="images",
    )
    train_idx, val_idx, test_idx = idx["train"], idx["val"], idx["test"]

    images = _cached_images(dataset_dir, manifest_bytes, samples, image_size, cache_dir)

    def split(idx: np.ndarray) -> Split:
        t = torch.from_numpy(idx)
        return Split(images=images[t], labels=y[t])

    return ImageData(
        classes=classes, train=split(train_idx), val=split(val_idx), test=split(test_idx)
    )
