"""strategy=auto searches on validation and keeps the best; pretrained=False trains
from random init."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from app.training.api import TrainConfig, train
from app.training.build import build_model


def test_auto_returns_leaderboard_and_trains_the_best(digits_small: Path, tmp_path: Path) -> None:
    config = TrainConfig(
        base_model="tiny_cnn",
        strategy="auto",
        epochs=2,
        learning_rate=0.05,
        image_size=32,
        batch_size=16,
        auto_budget_epochs=4,
        device="cpu",
    )
    reports = []
    result = train(
        config=config,
        dataset_dir=digits_small,
        work_dir=tmp_path / "w",
        cache_dir=tmp_path / "c",
        on_epoch=reports.append,
    )
    board = result.leaderboard
    assert board is not None and len(board) == 4
    keys = {
        "strategy",
        "trainable_blocks",
        "learning_rate",
        "val_accuracy",
        "val_loss",
        "seconds",
        "trainable_params",
    }
    assert all(keys <= set(entry) for entry in board)
    ranks = [(-e["val_accuracy"], e["val_loss"]) for e in board]
    assert ranks == sorted(ranks)
    assert board[0].get("chosen") is True
    assert sum(e["epochs"] for e in board) <= 4
    # the final run (2 epochs) follows the winner's freezing
    final = [r for r in reports if r.get("phase") != "search"]
    assert len(final) == 2 and len(result.history) == 2
    trained = {s["group"] for s in final[0]["schedule"] if s["trainable"]}
    expected_top = {"partial": 1 + board[0]["trainable_blocks"], "full": 5, "progressive": 2}[
        board[0]["strategy"]
    ]
    assert len(trained) == expected_top


def test_pretrained_false_trains_from_random_init(digits_small: Path, tmp_path: Path) -> None:
    config = TrainConfig(
        base_model="efficientnet_lite0", pretrained=False, epochs=1, image_size=32, device="cpu"
    )
    result = train(
        config=config, dataset_dir=digits_small, work_dir=tmp_path / "w", cache_dir=tmp_path / "c"
    )
    trained = load_file(result.artifact_dir / "model.safetensors")
    pre = build_model(base_model="efficientnet_lite0", num_classes=10, pretrained=True)
    assert not torch.equal(trained["stem.conv.weight"], pre.stem.conv.weight)
    scratch = build_model(base_model="efficientnet_lite0", num_classes=10, pretrained=False)
    assert torch.equal(trained["stem.conv.weight"], scratch.stem.conv.weight)  # frozen


def test_bad_config_is_refused_before_any_work(tmp_path: Path) -> None:
    import pytest

    from app.training.errors import InvalidConfig

    for field, value in [("trainable_blocks", 6), ("epochs", 0), ("strategy", "magic")]:
        config = TrainConfig(base_model="tiny_cnn", **{field: value})
        with pytest.raises(InvalidConfig) as info:
            train(
                config=config,
                dataset_dir=tmp_path / "absent",
                work_dir=tmp_path / "w",
                cache_dir=tmp_path / "c",
            )
        assert info.value.field == field
