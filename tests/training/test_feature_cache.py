"""A frozen prefix costs one forward pass per sample per job, not one per epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.training.build import build_model, get_base_model
from app.training.data import load_dataset
from app.training.loop import LoopOptions, fit
from app.training.schedule import plan_schedule

EPOCHS = 3


def run(
    digits_small: Path,
    tmp_path: Path,
    *,
    strategy: str = "partial",
    trainable_blocks: int = 0,
    **options,
) -> tuple[int, int, object, torch.nn.Module]:
    data = load_dataset(digits_small, image_size=32, cache_dir=tmp_path / "cache")
    model = build_model(base_model="tiny_cnn", num_classes=10, pretrained=True)
    seen = {"stem": 0}
    model.stem.register_forward_hook(
        lambda m, args, out: seen.__setitem__("stem", seen["stem"] + len(args[0]))
    )
    plans = plan_schedule(
        strategy=strategy,
        num_blocks=len(model.blocks),
        epochs=EPOCHS,
        learning_rate=0.05,
        trainable_blocks=trainable_blocks,
    )
    spec = get_base_model("tiny_cnn")
    result = fit(
        model=model,
        plans=plans,
        data=data,
        work_dir=tmp_path / "work",
        options=LoopOptions(
            mean=spec.mean,
            std=spec.std,
            image_size=32,
            batch_size=16,
            early_stopping_patience=None,
            **options,
        ),
    )
    total = len(data.train) + len(data.val) + len(data.test)
    return seen["stem"], total, result, model


@pytest.mark.parametrize("trainable_blocks", [0, 2])
def test_no_augment_runs_frozen_part_once_per_sample(
    digits_small: Path, tmp_path: Path, trainable_blocks: int
) -> None:
    stem_samples, total, result, model = run(
        digits_small, tmp_path, trainable_blocks=trainable_blocks
    )
    assert stem_samples == total
    expected_level = model.pooled_level if trainable_blocks == 0 else 1
    assert result.feature_level == expected_level


def test_augment_runs_frozen_part_every_epoch(digits_small: Path, tmp_path: Path) -> None:
    stem_samples, total, result, _ = run(digits_small, tmp_path, augment=True)
    data = load_dataset(digits_small, image_size=32, cache_dir=tmp_path / "cache")
    # train + val every epoch, then the best model on val and test once
    per_epoch = len(data.train) + len(data.val)
    assert stem_samples == EPOCHS * per_epoch + len(data.val) + len(data.test)
    assert result.feature_level == -1


def test_cache_over_the_memory_limit_falls_back(digits_small: Path, tmp_path: Path) -> None:
    cached = run(digits_small, tmp_path / "a")
    uncached = run(digits_small, tmp_path / "b", feature_cache_limit_bytes=1)
    assert uncached[2].feature_level == -1
    assert uncached[0] > uncached[1]  # ran the stem every epoch
    # same training either way, up to float summation order in batched convs
    for a, b in zip(
        cached[3].state_dict().values(), uncached[3].state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
