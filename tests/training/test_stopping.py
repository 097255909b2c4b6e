"""Early stopping keeps the best epoch's weights; a cancel stops within one step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.training.build import build_model, get_base_model
from app.training.data import load_dataset
from app.training.errors import Cancelled
from app.training.loop import LoopOptions, fit
from app.training.schedule import plan_schedule


def setup(digits_small: Path, tmp_path: Path, epochs: int, lr: float):  # noqa: ANN201
    data = load_dataset(digits_small, image_size=32, cache_dir=tmp_path / "cache")
    model = build_model(base_model="tiny_cnn", num_classes=10, pretrained=True)
    plans = plan_schedule(
        strategy="full", num_blocks=len(model.blocks), epochs=epochs, learning_rate=lr
    )
    spec = get_base_model("tiny_cnn")
    return data, model, plans, spec


@pytest.mark.slow
def test_early_stopping_restores_best_epoch(digits_small: Path, tmp_path: Path) -> None:
    # A rate this high makes validation accuracy bounce, so the best epoch is not the last.
    data, model, plans, spec = setup(digits_small, tmp_path, epochs=12, lr=0.3)
    states = {}

    def on_epoch(report: dict) -> None:
        states[report["epoch"]] = {k: v.clone() for k, v in model.state_dict().items()}

    result = fit(
        model=model,
        plans=plans,
        data=data,
        work_dir=tmp_path / "w",
        on_epoch=on_epoch,
        options=LoopOptions(
            mean=spec.mean,
            std=spec.std,
            image_size=32,
            batch_size=16,
            optimizer="sgd",
            scheduler="none",
            early_stopping_patience=2,
        ),
    )
    h = result.history
    best = max(h, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    assert result.best_epoch == best["epoch"]
    assert len(h) < 12 and len(h) == result.best_epoch + 2  # stopped after patience ran out
    for k, v in model.state_dict().items():
        assert torch.equal(v, states[result.best_epoch][k]), k
    assert not all(torch.equal(v, states[len(h)][k]) for k, v in model.state_dict().items())


def test_cancel_stops_within_a_step(digits_small: Path, tmp_path: Path) -> None:
    data, model, plans, spec = setup(digits_small, tmp_path, epochs=3, lr=0.05)
    calls = {"n": 0, "steps": 0}
    model.head.register_forward_hook(lambda *a: calls.__setitem__("steps", calls["steps"] + 1))

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] == 4

    with pytest.raises(Cancelled):
        fit(
            model=model,
            plans=plans,
            data=data,
            work_dir=tmp_path / "w",
            should_stop=should_stop,
            options=LoopOptions(mean=spec.mean, std=spec.std, image_size=32, batch_size=16),
        )
    assert calls["n"] == 4  # the loop asked before each step and stopped at the first yes
    assert calls["steps"] == 3


@pytest.mark.slow
def test_class_weights_and_label_smoothing_train(digits_small: Path, tmp_path: Path) -> None:
    data, model, plans, spec = setup(digits_small, tmp_path, epochs=2, lr=0.05)
    result = fit(
        model=model,
        plans=plans,
        data=data,
        work_dir=tmp_path / "w",
        options=LoopOptions(
            mean=spec.mean,
            std=spec.std,
            image_size=32,
            batch_size=16,
            class_weights="auto",
            label_smoothing=0.1,
        ),
    )
    assert len(result.history) == 2
    assert all(r["train_loss"] > 0 for r in result.history)


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cuda", "cuda:0"])
def test_bad_or_missing_device_is_a_config_error(name: str) -> None:
    from app.training.errors import InvalidConfig
    from app.training.loop import resolve_device

    if name.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InvalidConfig) as info:
        resolve_device(name)
    assert info.value.field == "device"
    assert resolve_device("cpu") == torch.device("cpu")
