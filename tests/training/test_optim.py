"""Weight decay applies to weights, not to biases and norm parameters (timm's
`param_groups_weight_decay`), in every group a plan unfreezes."""

from __future__ import annotations

import pytest
import torch

from app.training.build import build_model
from app.training.freeze import sync_optimizer, trainable_param_groups
from app.training.optim import create_optimizer
from app.training.schedule import plan_schedule


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_biases_and_norms_get_no_weight_decay(name: str) -> None:
    model = build_model(base_model="tiny_cnn", num_classes=3, pretrained=True)
    plans = plan_schedule(
        strategy="layerwise", num_blocks=len(model.blocks), epochs=3, learning_rate=0.1
    )
    opt = create_optimizer(
        name=name,
        param_groups=trainable_param_groups(model, plans[0]),
        lr=0.1,
        weight_decay=0.5,
    )
    sync_optimizer(opt, model, plans[2])  # two more blocks joined, each split in two
    assert sorted((g["name"], g["decay"]) for g in opt.param_groups) == sorted(
        (g, d) for g in ("head", "block2", "block1") for d in (True, False)
    )
    params = dict(model.named_parameters())
    trained = {id(p) for g in opt.param_groups for p in g["params"]}
    before = {n: p.detach().clone() for n, p in params.items()}
    for p in params.values():
        p.grad = torch.zeros_like(p)  # a zero gradient: only the decay moves a parameter
    opt.step()
    for n, p in params.items():
        if id(p) not in trained:
            continue
        moved = not torch.equal(p, before[n])
        if p.ndim <= 1:  # biases, BatchNorm weight and bias
            assert not moved, n
        else:
            assert moved and p.abs().sum() < before[n].abs().sum(), n
