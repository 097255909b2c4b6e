"""Optimizer and learning-rate schedule factories with plain keyword arguments.

The scheduler is a pure function step -> factor rather than a torch LRScheduler: torch
schedulers capture the param groups that exist when they are made, while gradual
unfreezing adds groups mid-run. A factor that multiplies each group's own base rate
works for any number of groups and resumes from nothing but the step count.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# The names this registry implements, declared with the job contract (config.py).
from app.training.config import OPTIMIZERS, SCHEDULERS  # noqa: E402
from app.training.errors import InvalidConfig


def create_optimizer(
    *, name: str, param_groups: list[dict], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """An optimizer over named param groups (each group may carry its own lr)."""
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(
            param_groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
        )
    raise InvalidConfig(
        f"unknown optimizer {name!r}; one of {', '.join(OPTIMIZERS)}", field="optimizer"
    )


def create_scheduler(*, name: str, total_steps: int) -> Callable[[int], float]:
    """step (0-based, over the whole run) -> multiplier of each group's base lr."""
    total = max(1, total_steps)
    if name == "none":
        return lambda step: 1.0
    if name == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    if name == "step":
        every = max(1, total // 3)  # x0.1 at one and two thirds of the run
        return lambda step: 0.1 ** (step // every)
    if name == "onecycle":
        warm = max(1, int(0.3 * total))

        def onecycle(step: int) -> float:
            if step < warm:
                return 0.04 + 0.96 * step / warm
            t = (step - warm) / max(1, total - warm)
            return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))

        return onecycle
    raise InvalidConfig(
        f"unknown scheduler {name!r}; one of {', '.join(SCHEDULERS)}", field="scheduler"
    )
