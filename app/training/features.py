"""The frozen-feature cache: run the never-trained prefix of the network once per sample.

When no epoch of a job trains the stem and the lowest blocks, and augmentation is off,
their output for a given image never changes. Computing it once (eval mode, inference
mode, large batches) and training the rest on those tensors makes a linear probe cost
about one forward pass instead of one per epoch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import torch

from app.training.build import TransferModel
from app.training.presets import EvalPreset

log = logging.getLogger(__name__)


class _TooLarge(Exception):
    pass


def cache_features(
    *,
    model: TransferModel,
    splits: list[torch.Tensor],
    level: int,
    preset: EvalPreset,
    to_device: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    limit_bytes: int,
    check_stop: Callable[[], None],
    amp: contextlib.AbstractContextManager,
    channels_last: bool = False,
) -> list[torch.Tensor] | None:
    """Features at `level` for each uint8 image tensor in `splits`, or None (logged) when
    they would take more than `limit_bytes`."""
    total = sum(len(s) for s in splits)
    model.eval()
    out: list[torch.Tensor] = []
    try:
        for images in splits:
            chunks: list[torch.Tensor] = []
            with torch.inference_mode(), amp:
                for batch in images.split(batch_size):
                    check_stop()
                    x = preset(to_device(batch))
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    chunks.append(model.features_at(x, level).float())
                    # The size is known after the first batch: refuse before filling memory.
                    need = chunks[0][0].numel() * chunks[0].element_size() * total
                    if need > limit_bytes:
                        raise _TooLarge(need)
            # clone: a tensor made in inference mode cannot enter autograd later
            out.append(torch.cat(chunks).clone())
    except _TooLarge as e:
        log.warning(
            "frozen-feature cache would need %d bytes (limit %d): training without it",
            e.args[0],
            limit_bytes,
        )
        return None
    return out
