"""Apply an EpochPlan to a model and its optimizer.

Frozen groups get requires_grad False *and* eval mode, so their BatchNorm layers keep
the running statistics they were pretrained with (a frozen block whose BN stats drift on
a small target set is no longer the pretrained block). Groups that become trainable join
the optimizer as their own param group with their own learning rate, as Lightning's
`unfreeze_and_add_param_group` does; groups already there keep their optimizer state.
"""

from __future__ import annotations

import torch
from torch import nn

from app.training.build import TransferModel
from app.training.schedule import EpochPlan


def group_modules(model: TransferModel) -> dict[str, nn.Module]:
    """Group name -> module, top -> bottom (dropout/pool have no parameters)."""
    groups: dict[str, nn.Module] = {"head": model.head}
    for k in reversed(range(len(model.blocks))):
        groups[f"block{k}"] = model.blocks[k]
    groups["stem"] = model.stem
    return groups


def apply_plan(model: TransferModel, plan: EpochPlan) -> None:
    """requires_grad per group."""
    for name, module in group_modules(model).items():
        module.requires_grad_(plan.trainable(name))


def set_train_mode(model: TransferModel, plan: EpochPlan, *, train_bn: bool = True) -> None:
    """Train mode for trainable groups, eval mode (frozen BN stats) for the rest.

    With `train_bn=False`, BatchNorm layers stay in eval mode even in trainable groups:
    their scale and shift still learn, but they normalise with the pretrained running
    statistics. On a small target set this avoids the train/eval mismatch of statistics
    estimated from a handful of batches (the advice in Keras' transfer-learning guide).
    """
    model.train()
    for name, module in group_modules(model).items():
        if not plan.trainable(name):
            module.eval()
        elif not train_bn:
            for m in module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()


def default_train_bn(*, strategy: str, pretrained: bool) -> bool:
    """Whether BatchNorm layers in trainable groups update their statistics.

    Measured on 10 digits per class with EfficientNet-Lite0 (bench/transfer.py setup):
    gradual strategies on pretrained weights do far better with the pretrained
    statistics kept (layerwise 0.72 -> 0.92, progressive 0.71 -> 0.84 test accuracy),
    while `full` needs batch statistics to stay stable (0.86 with, 0.17 without), and a
    randomly initialised network has no statistics worth keeping.
    """
    return strategy == "full" or not pretrained


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases and norm scales/shifts: no weight decay (timm's `param_groups_weight_decay`,
    nanoGPT's `configure_optimizers`). Decay on them only pulls a BatchNorm scale or a
    bias towards zero, which regularises nothing about the function's complexity."""
    return param.ndim <= 1 or name.endswith(".bias")


def trainable_param_groups(model: TransferModel, plan: EpochPlan) -> list[dict]:
    """Optimizer param groups for the trainable groups, top -> bottom: per group its
    weights (the optimizer's weight decay) then its biases and norm parameters (none);
    each carries the group's name and learning rate."""
    modules = group_modules(model)
    out = []
    for g in plan.trainable_groups():
        named = list(modules[g].named_parameters())
        decay = [p for n, p in named if not _no_decay(n, p)]
        plain = [p for n, p in named if _no_decay(n, p)]
        if decay:
            out.append({"params": decay, "lr": plan.lr(g), "name": g, "decay": True})
        if plain:
            out.append(
                {"params": plain, "lr": plan.lr(g), "name": g, "decay": False, "weight_decay": 0.0}
            )
    return out


def sync_optimizer(optimizer: torch.optim.Optimizer, model: TransferModel, plan: EpochPlan) -> None:
    """Add newly trainable groups and set each group's base lr for this epoch.

    `base_lr` is the plan's rate; the step loop sets `lr = base_lr * scheduler factor`.
    """
    present = {(g["name"], g["decay"]) for g in optimizer.param_groups}
    for group in trainable_param_groups(model, plan):
        if (group["name"], group["decay"]) not in present:
            optimizer.add_param_group(group)
    for group in optimizer.param_groups:
        group["base_lr"] = plan.lr(group["name"])
        group["lr"] = group["base_lr"]


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
