"""Frozen features on disk, shared by every job on one dataset.

`features.cache_features` runs the frozen prefix of a network once per job. This module
wraps it so that a later job (and every `auto` candidate) on the same data, with the
same weights below the cut, the same input size and the same cut level, reads those
features back instead of running the prefix again.

The key is a digest of the prefix's weights and buffers themselves (not the base
model's name: an uploaded or fine-tuned model with other weights gets other features)
plus the caller's description of the data and its split (`data_key`), the level, the
input normalisation, and whether the features came from a mixed-precision GPU pass.
Files are written to a temp name and renamed, so a reader never sees half of one;
deleting a dataset deletes its directory of features.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from app.training import atomic
from app.training.build import TransferModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureStore:
    directory: Path  # one per dataset, e.g. <data_dir>/features/<dataset_id>
    data_key: str  # what identifies the inputs: dataset contents, split, size, tokens


def weights_digest(model: TransferModel, level: int) -> str:
    """sha256 of every parameter and buffer that runs below feature `level`."""
    h = hashlib.sha256()
    prefix = [("stem", model.stem)] + [
        (f"blocks.{i}", model.blocks[i]) for i in range(min(level, len(model.blocks)))
    ]
    if level == model.pooled_level:
        prefix.append(("pool", model.pool))
    for name, module in prefix:
        for key, value in module.state_dict().items():
            t = value.detach().to("cpu").contiguous()
            h.update(f"{name}.{key}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cached(
    *,
    store: FeatureStore | None,
    model: TransferModel,
    level: int,
    names: list[str],
    extra: dict,
    compute: Callable[[], list[torch.Tensor] | None],
) -> list[torch.Tensor] | None:
    """The features of splits `names` at `level`: from disk when stored under this key,
    else `compute()` (None: too large to cache) and stored."""
    if store is None:
        return compute()
    key = {
        "data": store.data_key,
        "weights": weights_digest(model, level),
        "level": level,
        **extra,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    path = Path(store.directory) / f"features-{digest}.safetensors"
    if path.is_file():
        try:
            stored = load_file(path)
        except (OSError, SafetensorError) as e:  # a damaged file: compute it again
            log.warning("unreadable feature file %s (%s): recomputing", path, e)
            stored = {}
        if all(n in stored for n in names):
            log.info("frozen features at level %d read from %s", level, path)
            return [stored[n] for n in names]
    out = compute()
    if out is None:
        return None
    with atomic.atomic_path(path) as tmp:
        save_file(
            {n: t.detach().to("cpu").contiguous() for n, t in zip(names, out, strict=True)},
            tmp,
            metadata={"key": json.dumps(key, sort_keys=True)},
        )
    return out
