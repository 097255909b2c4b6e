"""Each strategy trains exactly what its plan says, at the plan's rates, and frozen
BatchNorm statistics stay put."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.training import loop as loop_module
from app.training.build import build_model, get_base_model
from app.training.data import load_dataset
from app.training.freeze import group_modules
from app.training.loop import LoopOptions, fit
from app.training.schedule import plan_schedule

LR = 0.05


def snapshot(model: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    return {
        name: {k: v.detach().clone() for k, v in module.state_dict().items()}
        for name, module in group_modules(model).items()
    }


@pytest.mark.parametrize(
    "strategy, trainable_blocks",
    [
        ("full", 0),
        ("partial", 0),
        ("partial", 2),
        ("layerwise", 0),
        ("progressive", 0),
    ],
)
@pytest.mark.slow
def test_strategy_trains_what_the_plan_says(
    strategy: str,
    trainable_blocks: int,
    digits_small: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = load_dataset(digits_small, image_size=32, cache_dir=tmp_path / "cache")
    model = build_model(base_model="tiny_cnn", num_classes=10, pretrained=True)
    plans = plan_schedule(
        strategy=strategy,
        num_blocks=len(model.blocks),
        epochs=4,
        learning_rate=LR,
        trainable_blocks=trainable_blocks,
        unfreeze_every=1,
        lr_decay=0.5,
    )
    optimizers = []
    real = loop_module.create_optimizer

    def capture(**kwargs):  # noqa: ANN202
        optimizers.append(real(**kwargs))
        return optimizers[-1]

    monkeypatch.setattr(loop_module, "create_optimizer", capture)
    spec = get_base_model("tiny_cnn")
    before = [snapshot(model)]
    lrs = []

    def on_epoch(report: dict) -> None:
        before.append(snapshot(model))
        lrs.append({g["name"]: g["lr"] for g in optimizers[0].param_groups})

    fit(
        model=model,
        plans=plans,
        data=data,
        work_dir=tmp_path / "work",
        on_epoch=on_epoch,
        options=LoopOptions(
            mean=spec.mean,
            std=spec.std,
            image_size=32,
            batch_size=16,
            scheduler="none",
            early_stopping_patience=None,
            optimizer="sgd",
        ),
    )

    assert len(lrs) == 4
    for epoch, plan in enumerate(plans):
        old, new = before[epoch], before[epoch + 1]
        for group in plan.groups:
            pairs = [(k, old[group.group][k], new[group.group][k]) for k in old[group.group]]
            if group.trainable:
                weights = [(k, a, b) for k, a, b in pairs if k.endswith("weight")]
                assert any(not torch.equal(a, b) for _, a, b in weights), (
                    f"epoch {epoch}: {group.group} should have trained"
                )
            else:  # parameters *and* BN running stats bit-identical
                for k, a, b in pairs:
                    assert torch.equal(a, b), f"epoch {epoch}: frozen {group.group}.{k} moved"
        expected = {g.group: g.lr for g in plan.groups if g.trainable}
        assert lrs[epoch] == pytest.approx(expected)
        # groups that joined keep their place; nothing frozen is in the optimizer
        assert set(lrs[epoch]) == set(expected)


def test_train_bn_false_keeps_statistics_of_trainable_blocks(
    digits_small: Path, tmp_path: Path
) -> None:
    data = load_dataset(digits_small, image_size=32, cache_dir=tmp_path / "cache")
    model = build_model(base_model="tiny_cnn", num_classes=10, pretrained=True)
    before = snapshot(model)
    plans = plan_schedule(strategy="full", num_blocks=len(model.blocks), epochs=1, learning_rate=LR)
    spec = get_base_model("tiny_cnn")
    fit(
        model=model,
        plans=plans,
        data=data,
        work_dir=tmp_path / "work",
        options=LoopOptions(
            mean=spec.mean, std=spec.std, image_size=32, batch_size=16, train_bn=False
        ),
    )
    after = snapshot(model)
    for group, state in before.items():
        for key, value in state.items():
            if "running_" in key or "num_batches" in key:
                assert torch.equal(value, after[group][key]), f"{group}.{key}"
    assert not torch.equal(before["stem"]["1.weight"], after["stem"]["1.weight"])  # BN scale
