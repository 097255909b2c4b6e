"""Strategies are data: the plans themselves."""

from __future__ import annotations

import pytest

from app.training.errors import InvalidConfig
from app.training.schedule import frozen_level, group_names, plan_schedule


def trainable(plan) -> list[str]:
    return plan.trainable_groups()


def test_group_names_top_to_bottom() -> None:
    assert group_names(3) == ["head", "block2", "block1", "block0", "stem"]


def test_full_and_partial() -> None:
    full = plan_schedule(strategy="full", num_blocks=3, epochs=2, learning_rate=0.1)
    assert all(trainable(p) == group_names(3) for p in full)
    probe = plan_schedule(strategy="partial", num_blocks=3, epochs=2, learning_rate=0.1)
    assert all(trainable(p) == ["head"] for p in probe)
    top2 = plan_schedule(
        strategy="partial", num_blocks=3, epochs=2, learning_rate=0.1, trainable_blocks=2
    )
    assert all(trainable(p) == ["head", "block2", "block1"] for p in top2)
    assert {g.lr for p in top2 for g in p.groups} == {0.1}


def test_layerwise_unfreezes_one_unit_every_n_epochs() -> None:
    plans = plan_schedule(
        strategy="layerwise", num_blocks=2, epochs=8, learning_rate=0.1, unfreeze_every=2
    )
    assert [len(trainable(p)) for p in plans] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert trainable(plans[6]) == ["head", "block1", "block0", "stem"]


def test_progressive_starts_low_restores_rate_and_decays_downwards() -> None:
    plans = plan_schedule(
        strategy="progressive", num_blocks=3, epochs=4, learning_rate=0.1, lr_decay=0.5
    )
    assert [len(trainable(p)) for p in plans] == [2, 3, 4, 5]
    assert all(p.lr("head") == pytest.approx(0.1) for p in plans)  # the new head: full
    assert plans[0].lr("block2") == pytest.approx(0.01)  # much reduced at first
    assert plans[-1].lr("block2") == pytest.approx(0.1)  # restored by the end
    tops = [p.lr("block2") for p in plans]
    assert tops == sorted(tops)
    last = plans[-1]
    assert last.lr("block1") == pytest.approx(0.05)
    assert last.lr("stem") == pytest.approx(0.1 * 0.5**3)


def test_frozen_level() -> None:
    probe = plan_schedule(strategy="partial", num_blocks=3, epochs=2, learning_rate=0.1)
    assert frozen_level(probe, 3) == 4  # pooled features
    top1 = plan_schedule(
        strategy="partial", num_blocks=3, epochs=2, learning_rate=0.1, trainable_blocks=1
    )
    assert frozen_level(top1, 3) == 2  # output of block1 feeds the trainable block2
    full = plan_schedule(strategy="full", num_blocks=3, epochs=2, learning_rate=0.1)
    assert frozen_level(full, 3) == -1


def test_more_trainable_blocks_than_the_model_has_name_the_field() -> None:
    # The one check left here: it needs the model. The config's own bounds are the
    # contract's (config.py, tests/jobs/test_contract.py).
    with pytest.raises(InvalidConfig) as info:
        plan_schedule(
            strategy="partial", num_blocks=3, epochs=2, learning_rate=0.1, trainable_blocks=5
        )
    assert info.value.field == "trainable_blocks"
    assert (
        len(
            plan_schedule(
                strategy="partial", num_blocks=3, epochs=2, learning_rate=0.1, trainable_blocks=4
            )
        )
        == 2
    )
