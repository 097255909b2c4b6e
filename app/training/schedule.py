"""Fine-tuning strategies as data.

A strategy is a list of `EpochPlan`s: for every epoch, which parameter groups train and
at which base learning rate. Groups are named top -> bottom:
`head, block{n-1}, ..., block0, stem`. Below the head they form n+1 "units" (the n
blocks, then the stem) that strategies unfreeze from the top. The loop (loop.py) reads
the plan; it has no per-strategy branches.

The optimizer's scheduler (optim.py) multiplies these base rates by a factor per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from app.training.errors import InvalidConfig

STRATEGIES = ("full", "partial", "layerwise", "progressive")

# progressive: how far below the target rate the first unfrozen layers start
PROGRESSIVE_START_SCALE = 0.1


@dataclass(frozen=True)
class GroupPlan:
    group: str
    trainable: bool
    lr: float


@dataclass(frozen=True)
class EpochPlan:
    epoch: int  # 0-based
    groups: tuple[GroupPlan, ...]  # top -> bottom, always every group

    def trainable(self, group: str) -> bool:
        return self._get(group).trainable

    def lr(self, group: str) -> float:
        return self._get(group).lr

    def trainable_groups(self) -> list[str]:
        return [g.group for g in self.groups if g.trainable]

    def _get(self, group: str) -> GroupPlan:
        for g in self.groups:
            if g.group == group:
                return g
        raise KeyError(group)

    def to_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "groups": [
                {"group": g.group, "trainable": g.trainable, "lr": g.lr} for g in self.groups
            ],
        }


def group_names(num_blocks: int) -> list[str]:
    """Top -> bottom: head, then units block{n-1}..block0, stem."""
    return ["head", *(f"block{k}" for k in reversed(range(num_blocks))), "stem"]


def plan_schedule(
    *,
    strategy: str,
    num_blocks: int,
    epochs: int,
    learning_rate: float,
    trainable_blocks: int = 0,
    unfreeze_every: int = 1,
    lr_decay: float = 0.5,
) -> list[EpochPlan]:
    """One EpochPlan per epoch for a named strategy (SPEC §2).

    - full: everything at `learning_rate`.
    - partial: head + top `trainable_blocks` units (0 = linear probe).
    - layerwise: head only, then one more unit from the top every `unfreeze_every`
      epochs, all at `learning_rate` (gradual unfreezing).
    - progressive: the head (at `learning_rate`) and the top block, which starts at
      PROGRESSIVE_START_SCALE x the rate; one more unit every `unfreeze_every` epochs
      while the backbone's rate climbs geometrically back to `learning_rate` by the last
      stage; the unit d below the top gets `lr_decay**d` of it (discriminative,
      layer-wise decay).
    """
    units = num_blocks + 1
    # The config's own bounds were checked at the edge (config.py); what is left needs
    # the model.
    assert strategy in STRATEGIES and epochs >= 1 and unfreeze_every >= 1, strategy
    if not 0 <= trainable_blocks <= units:
        raise InvalidConfig(
            f"trainable_blocks must be between 0 and {units} for this "
            f"model ({num_blocks} blocks + stem)",
            field="trainable_blocks",
        )

    names = group_names(num_blocks)
    stages = math.ceil(epochs / unfreeze_every)
    plans = []
    for epoch in range(epochs):
        stage = epoch // unfreeze_every
        if strategy == "full":
            open_units, lrs = units, [learning_rate] * (units + 1)
        elif strategy == "partial":
            open_units, lrs = trainable_blocks, [learning_rate] * (units + 1)
        elif strategy == "layerwise":
            open_units, lrs = min(stage, units), [learning_rate] * (units + 1)
        else:  # progressive
            open_units = min(stage + 1, units)
            progress = stage / (stages - 1) if stages > 1 else 1.0
            scale = PROGRESSIVE_START_SCALE ** (1.0 - progress)
            # The new head always learns at the full rate; the pretrained units start low.
            lrs = [learning_rate] + [
                learning_rate * scale * lr_decay ** (depth - 1) for depth in range(1, units + 1)
            ]
        groups = tuple(
            GroupPlan(group=name, trainable=depth <= open_units, lr=lrs[depth])
            for depth, name in enumerate(names)
        )
        plans.append(EpochPlan(epoch=epoch, groups=groups))
    return plans


def frozen_level(plans: list[EpochPlan], num_blocks: int) -> int:
    """The deepest feature level whose whole prefix stays frozen for every epoch in
    `plans` (see TransferModel levels), or -1 when the stem itself trains at some point.

    Everything below that level can run once per sample per job (the feature cache).
    """
    ever = {name for plan in plans for name in plan.trainable_groups()}
    if "stem" in ever:
        return -1
    level = 0
    while level < num_blocks and f"block{level}" not in ever:
        level += 1
    return num_blocks + 1 if level == num_blocks else level
