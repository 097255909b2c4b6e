"""Epoch checkpoints: written atomically, read with map_location="cpu", no pickled code.

A checkpoint is a dict of tensors and plain Python values, so it loads with
`weights_only=True`; the NumPy and `random` RNG states are converted to plain lists for
that reason.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from app.training import atomic

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temp file, fsync, then rename: a kill mid-write leaves the previous
    checkpoint intact."""
    # Through a Python file: a full disk then raises OSError(ENOSPC), which the worker
    # recognises (torch.save to a path raises a RuntimeError that names no errno).
    with atomic.atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: Path) -> dict | None:
    path = Path(path)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
