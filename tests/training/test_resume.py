"""A job stopped after k epochs and resumed from its checkpoint ends exactly where an
uninterrupted run ends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from app.training.api import TrainConfig, train
from app.training.errors import Cancelled, CheckpointMismatch

# frozen_pass: how long the frozen-feature pass took (and its export), timing too
TIMING = ("seconds", "eta_seconds", "train_seconds", "frozen_pass")


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


@pytest.mark.slow
@pytest.mark.parametrize("strategy, augment", [("layerwise", True), ("partial", False)])
def test_resume_matches_uninterrupted_run(
    strategy: str, augment: bool, digits_small: Path, tmp_path: Path
) -> None:
    config = TrainConfig(
        base_model="tiny_cnn",
        strategy=strategy,
        trainable_blocks=2,
        epochs=4,
        learning_rate=0.05,
        batch_size=16,
        image_size=32,
        augment=augment,
        early_stopping_patience=None,
        device="cpu",
        seed=7,
    )
    kw = {"config": config, "dataset_dir": digits_small, "cache_dir": tmp_path / "cache"}
    whole = train(work_dir=tmp_path / "whole", **kw)

    stop = {"now": False}

    def on_epoch(report: dict) -> None:
        stop["now"] = report["epoch"] == 2

    with pytest.raises(Cancelled):
        train(work_dir=tmp_path / "split", on_epoch=on_epoch, should_stop=lambda: stop["now"], **kw)
    assert (tmp_path / "split" / "checkpoint.pt").is_file()
    resumed_reports = []
    resumed = train(work_dir=tmp_path / "split", on_epoch=resumed_reports.append, **kw)

    assert [r["epoch"] for r in resumed_reports] == [3, 4]  # only the missing epochs ran
    assert without_timing(resumed.history) == without_timing(whole.history)
    assert resumed.best_epoch == whole.best_epoch
    assert resumed.metrics == whole.metrics
    a = load_file(whole.artifact_dir / "model.safetensors")
    b = load_file(resumed.artifact_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_checkpoint_of_another_config_is_refused(digits_small: Path, tmp_path: Path) -> None:
    config = TrainConfig(base_model="tiny_cnn", epochs=1, image_size=32, device="cpu")
    kw = {"dataset_dir": digits_small, "cache_dir": tmp_path / "c", "work_dir": tmp_path / "w"}
    train(config=config, **kw)
    config.learning_rate = 0.5
    with pytest.raises(CheckpointMismatch):
        train(config=config, **kw)


@pytest.mark.slow
def test_auto_job_resumes_without_searching_again(digits_small: Path, tmp_path: Path) -> None:
    config = TrainConfig(
        base_model="tiny_cnn",
        strategy="auto",
        epochs=3,
        learning_rate=0.05,
        batch_size=16,
        image_size=32,
        auto_budget_epochs=4,
        early_stopping_patience=None,
        device="cpu",
    )
    kw = {"config": config, "dataset_dir": digits_small, "cache_dir": tmp_path / "cache"}
    whole = train(work_dir=tmp_path / "whole", **kw)
    stop = {"now": False}

    def on_epoch(report: dict) -> None:  # stop inside candidate 1, after its probe
        stop["now"] = report.get("candidate") == 1

    with pytest.raises(Cancelled):
        train(work_dir=tmp_path / "split", on_epoch=on_epoch, should_stop=lambda: stop["now"], **kw)
    reports: list[dict] = []
    resumed = train(work_dir=tmp_path / "split", on_epoch=reports.append, **kw)
    ran = {(r.get("candidate"), r.get("rung"), r["epoch"]) for r in reports}
    # Neither the probe rung nor candidate 0 ran again; candidate 1 went on from epoch 1.
    assert not any(c in ("probe", 0) and rung in (None, 0) for c, rung, _ in ran), ran
    assert (1, 0, 0) not in ran and (1, 0, 1) in ran

    def untimed(board: list[dict]) -> list[dict]:
        return [{k: v for k, v in e.items() if k != "seconds"} for e in board]

    assert untimed(resumed.leaderboard) == untimed(whole.leaderboard)
    assert resumed.metrics == whole.metrics
    assert without_timing(resumed.history) == without_timing(whole.history)
