"""The frozen-feature cache: run the never-trained prefix of the network once per sample.

When no epoch of a job trains the stem and the lowest blocks, and augmentation is off,
their output for a given image never changes. Computing it once (eval mode, inference
mode, large batches) and training the rest on those tensors makes a linear probe cost
about one forward pass instead of one per epoch.

On the CPU that pass runs on the fastest runtime for the frozen prefix (runtime.py: ONNX
Runtime, eager channels_last or eager, chosen by a cached measurement, each checked
against eager first); the choice goes into `info["runtime"]` for the job's history.
Small passes (under `runtime_min_samples` inputs) stay eager: exporting and timing would
cost more than they save.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from app.training import runtime, text
from app.training.build import TransferModel
from app.training.presets import EvalPreset

log = logging.getLogger(__name__)


class _TooLarge(Exception):
    pass


# Below this much work the frozen pass stays eager: an ONNX export of a backbone prefix
# costs seconds the first time, timing the candidates about a second. Images: input
# pixels in all (~250 images at 64 px, 20 at 224 px); other inputs: samples.
RUNTIME_MIN_PIXELS = 1_000_000
RUNTIME_MIN_SAMPLES = 512
# A batch of images holds at most this many input pixels (32 at 224 px, all 256 of the
# eval batch at 64 px): large batches at high resolution are bound by memory, not
# arithmetic. EfficientNet-Lite0, 300 images at 224 px, ONNX Runtime, 2 threads, a
# fresh process: batches of 256 took 3.0 s, of 64 2.6 s, of 32 2.3 s.
BATCH_MAX_PIXELS = 32 * 224 * 224


class FrozenPrefix(nn.Module):
    """The eval preset, then the network from its input up to `level`: the part of the
    model the feature cache runs, as one module to export."""

    def __init__(self, model: TransferModel, level: int, preset: EvalPreset | None):
        super().__init__()
        self.stem, self.level, self.preset = model.stem, level, preset
        self.blocks = nn.ModuleList(list(model.blocks)[: min(level, len(model.blocks))])
        self.pool = model.pool if level == model.pooled_level else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preset is not None:
            x = self.preset(x)
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.pool(x) if self.pool is not None else x


def frozen_runner(
    model: TransferModel,
    level: int,
    preset: EvalPreset | None,
    sample: torch.Tensor,
    cache_dir=None,
) -> runtime.Runner:
    """The fastest checked runtime for the frozen prefix on the CPU; `sample` is a few
    real inputs (the first two name the export, the rest check and time it).

    Texts pooled into one vector each: the export takes any length too, and is checked
    on the sample cut to its longest text (another length than the export's), since the
    pass cuts every batch that way (text.trim); per-token features keep a fixed length
    (a batch of another length runs eager)."""
    prefix = FrozenPrefix(model, level, preset).eval()
    dynamic: tuple[int, ...] = (0,)
    check = sample[:3]
    if text.is_tokens(sample) and level == model.pooled_level:
        dynamic, check = (0, 2), text.trim(sample[:3])
    return runtime.prepare(
        prefix,
        example=sample[:2],
        check=check,
        trial=sample[:8],
        cache_dir=cache_dir,
        # The preset is not a weight: its numbers name the export too.
        salt=f"level {level}; {preset_key(preset)}",
        dynamic=dynamic,
    )


def preset_key(preset: EvalPreset | None) -> str:
    if preset is None:
        return "no preset"
    return f"mean {preset.mean.flatten().tolist()} std {preset.std.flatten().tolist()}"


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
    info: dict | None = None,
    runtime_min_samples: int | None = None,
    by_length: bool = False,
) -> list[torch.Tensor] | None:
    """Features at `level` for each uint8 image tensor (or text/tabular tensor) in
    `splits`, or None (logged) when they would take more than `limit_bytes`. `info`, when
    given, receives the runtime the pass ran on ({"runtime": name, ...}).

    `by_length` (text token tensors): each split runs in order of its texts' lengths,
    every batch cut to its longest (text.trim), the features written back in the split's
    order; per-token features are padded back to the split's length (zeros, mask 0)."""
    total = sum(len(s) for s in splits)
    first = next((s for s in splits if len(s)), None)
    if first is not None and first.dtype == torch.uint8 and first.dim() == 4:
        batch_size = max(1, min(batch_size, BATCH_MAX_PIXELS // (first.shape[2] * first.shape[3])))
    model.eval()
    t0 = time.perf_counter()
    forward = _forward(model, level, preset, splits, channels_last, total, runtime_min_samples)
    t1 = time.perf_counter()
    if info is not None:
        name = runtime.EAGER_CL if channels_last else runtime.EAGER
        info.update(getattr(forward, "info", {"runtime": name}))
        info["prepare_seconds"] = round(t1 - t0, 3)
    out: list[torch.Tensor] = []
    try:
        for images in splits:
            chunks: list[torch.Tensor] = []
            order = None
            if by_length and len(images):
                order = text.shortest_first(images)
            batches = (
                images.split(batch_size)
                if order is None
                else (images[i] for i in order.split(batch_size))
            )
            with torch.inference_mode(), amp:
                for batch in batches:
                    check_stop()
                    if order is None:
                        chunks.append(forward(to_device(batch)).float())
                    else:
                        got = forward(to_device(text.trim(batch))).float()
                        if got.dim() == 3:  # per token: back to the split's length
                            got = F.pad(got, (0, 0, 0, images.shape[-1] - got.shape[1]))
                        chunks.append(got)
                    # The size is known after the first batch: refuse before filling memory.
                    need = chunks[0][0].numel() * chunks[0].element_size() * total
                    if need > limit_bytes:
                        raise _TooLarge(need)
            feats = torch.cat(chunks)
            if order is not None:
                feats = text.in_order(feats, order)
            # clone: a tensor made in inference mode cannot enter autograd later
            out.append(feats.clone())
        if info is not None:
            info["seconds"] = round(time.perf_counter() - t1, 3)  # the pass itself
    except _TooLarge as e:
        log.warning(
            "frozen-feature cache would need %d bytes (limit %d): training without it",
            e.args[0],
            limit_bytes,
        )
        return None
    return out


def _forward(model, level, preset, splits, channels_last, total, min_samples):
    """batch -> features at `level`: a runtime.Runner on the CPU for a pass big enough,
    else eager as the model is (on CUDA in channels_last under the caller's autocast)."""
    first = next((s for s in splits if len(s)), None)
    on_cpu = next(model.parameters()).device.type == "cpu"
    if first is None or len(first) < 3 or not on_cpu:
        big = False
    elif min_samples is not None:
        big = total >= min_samples
    elif first.dtype == torch.uint8 and first.dim() == 4:
        big = total * first.shape[2] * first.shape[3] >= RUNTIME_MIN_PIXELS
    else:
        big = total >= RUNTIME_MIN_SAMPLES
    if big:
        image_preset = preset if isinstance(preset, EvalPreset) else None
        if image_preset is not None or _is_identity(preset, first):
            try:
                return frozen_runner(model, level, image_preset, first[:16])
            except Exception as exc:  # noqa: BLE001 - never fail a job over a speed-up
                log.warning("frozen pass runs eager: runtime choice failed (%s)", exc)

    def eager(batch: torch.Tensor) -> torch.Tensor:
        x = preset(batch)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return model.features_at(x, level)

    return eager


def _is_identity(preset, sample: torch.Tensor) -> bool:
    """Text and tabular models pass an identity preset."""
    x = sample[:1]
    return preset(x) is x
