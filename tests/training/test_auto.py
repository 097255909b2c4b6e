"""strategy=auto halves its candidates from the exact probe and keeps the best;
pretrained=False trains everything from random init (frozen random layers are refused)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from app.training import auto
from app.training import checkpoint as ckpt
from app.training.api import TrainConfig, train
from app.training.build import build_model
from app.training.errors import InvalidConfig
from app.training.freeze import group_modules
from tests.training.conftest import make_digits_dataset


@pytest.mark.slow
def test_auto_halves_from_the_probe_and_trains_the_best(digits_small: Path, tmp_path: Path) -> None:
    config = TrainConfig(
        base_model="tiny_cnn",
        strategy="auto",
        epochs=2,
        learning_rate=0.05,
        image_size=32,
        batch_size=16,
        auto_budget_epochs=6,
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
    assert board is not None
    keys = {
        "strategy",
        "trainable_blocks",
        "learning_rate",
        "val_accuracy",
        "val_loss",
        "seconds",
        "trainable_params",
        "epochs",
        "rung",
    }
    assert all(keys <= set(entry) for entry in board)
    probe = next(e for e in board if e.get("stage") == "probe")
    others = [e for e in board if e is not probe]
    assert len(others) == 3 and probe["epochs"] == 0
    # Every candidate starts from the probe's head and keeps it until it does better.
    assert all(
        (e["val_accuracy"], -e["val_loss"]) >= (probe["val_accuracy"], -probe["val_loss"])
        for e in others
    )
    # Ranked by accuracy, a tie within one standard error decided by the loss (below).
    n_val = sum(map(sum, result.val_metrics["confusion_matrix"]))
    assert board == auto.ranked(board, n_val=n_val, score_name="accuracy")
    # The chosen model: the best-ranked, unless it did not clear the probe's bar.
    chosen = [e for e in board if e.get("chosen")]
    assert len(chosen) == 1 and chosen[0] in (board[0], probe)
    if chosen[0] is probe and board[0] is not probe:
        assert "bar" in probe
    # Successive halving: all three ran one epoch, at most two went on to two.
    assert sorted(e["epochs"] for e in others)[0] == 1
    assert sum(e["epochs"] for e in others) <= config.auto_budget_epochs
    assert len([e for e in others if e["rung"] == 1]) <= 2
    assert {r["phase"] for r in reports if r.get("candidate") is not None} == {"search"}
    # Never worse than the probe; the winner's own run, completed, is the model.
    final = [r for r in reports if r.get("phase") != "search"]
    assert result.history[0]["stage"] == "probe"
    assert result.val_metrics["accuracy"] >= probe["val_accuracy"] - 1e-9
    assert result.strategy == chosen[0]["strategy"]
    if chosen[0].get("stage") == "probe":
        assert [r.get("stage") for r in final] == ["probe"]
    else:
        # The last rung: the winner goes on from its search epochs, within the budget.
        upto = auto.final_epochs(chosen[0], board, budget_epochs=6, budget_seconds=None)
        assert upto == chosen[0]["epochs"] + 1  # 5 of the 6 epochs were the search's
        assert [r["epoch"] for r in final] == [upto]
        assert len(result.history) == upto + 1


@pytest.mark.slow
def _auto_from_random(**kw) -> TrainConfig:
    """auto on tiny_cnn from random weights: the probe of random features is weak and a
    trained candidate gains (seeded), so the search has something to find."""
    return TrainConfig(
        base_model="tiny_cnn",
        pretrained=False,
        strategy="auto",
        image_size=32,
        batch_size=16,
        device="cpu",
        **kw,
    )


def test_the_winner_completes_its_plan_from_where_the_search_left_it(
    tmp_path: Path, monkeypatch
) -> None:
    """No retraining from scratch: the winning candidate's own run goes on from its
    checkpoint to the end of its plan (the last rung), and its best epoch, read back
    from that checkpoint, is evaluated on test and saved as the model."""
    monkeypatch.setattr(auto, "BAR_SE", 0.0)  # any win counts (the bar is tested below)
    config = _auto_from_random(learning_rate=0.02, auto_budget_epochs=6)
    digits = make_digits_dataset(tmp_path / "d", train_per_class=40, test_per_class=4, size=32)
    reports = []
    result = train(
        config=config,
        dataset_dir=digits,
        work_dir=tmp_path / "w",
        cache_dir=tmp_path / "c",
        on_epoch=reports.append,
    )
    win = result.leaderboard[0]
    assert win.get("stage") != "probe", result.leaderboard
    # The search stopped it halfway down its plan; the final run trains it on from there
    # (epochs it had, never again from the first), as far as the budget's 6 epochs allow.
    final = [r for r in reports if r.get("phase") != "search"]
    upto = auto.final_epochs(win, result.leaderboard, budget_epochs=6, budget_seconds=None)
    assert win["epochs"] < upto <= win["planned_epochs"]
    assert [r["epoch"] for r in final] == list(range(win["epochs"] + 1, upto + 1))
    assert {r["candidate"] for r in final} == {win["candidate"]}
    assert len(result.history) == upto + 1
    assert result.val_metrics["accuracy"] >= win["val_accuracy"] - 1e-9
    # The saved weights are the candidate's best epoch, as its checkpoint keeps them.
    cand_dir = tmp_path / "w" / "auto" / f"candidate-{win['candidate']}"
    state = ckpt.load_checkpoint(cand_dir / ckpt.CHECKPOINT_NAME)
    saved = load_file(result.artifact_dir / "model.safetensors")
    model = build_model(
        base_model="tiny_cnn", num_classes=len(result.classes), pretrained=False, state_dict=saved
    )
    groups = group_modules(model)
    best = state["best"]["state"]
    assert best, "the checkpoint keeps the trained groups"
    for key, value in best.items():
        group, name = key.split(".", 1)
        torch.testing.assert_close(groups[group].state_dict()[name], value)
    assert result.metrics["accuracy"] > 1.5 / len(result.classes)  # better than chance


def test_a_leader_inside_the_bar_is_completed_and_judged_again(tmp_path: Path, monkeypatch):
    """The search stops its leader halfway down its plan. A leader ahead of the probe but
    inside the bar runs its last rung anyway, and the bar is judged on the completed run:
    kept if it clears it, the probe otherwise."""
    config = _auto_from_random(learning_rate=0.003, auto_budget_epochs=18)
    digits = make_digits_dataset(tmp_path / "d", train_per_class=60, test_per_class=4, size=32)

    def run(bar_se: float, name: str):
        monkeypatch.setattr(auto, "BAR_SE", bar_se)
        reports: list[dict] = []
        result = train(
            config=config,
            dataset_dir=digits,
            work_dir=tmp_path / name,
            cache_dir=tmp_path / "c",
            on_epoch=reports.append,
        )
        probe = next(e for e in result.leaderboard if e.get("stage") == "probe")
        final = [r["epoch"] for r in reports if r.get("phase") == "final"]
        return result, result.leaderboard[0], probe, final

    # A bar no leader clears: the leader is completed all the same, then the probe kept.
    result, lead, probe, final = run(100.0, "high")
    assert lead.get("stage") is None and lead["val_score"] > probe["val_score"]
    done = lead["completed"]
    assert done["epochs"] == lead["planned_epochs"] > lead["epochs"]
    assert final == list(range(lead["epochs"] + 1, done["epochs"] + 1))
    assert probe.get("chosen") and not lead.get("chosen")
    assert f"completed to {done['epochs']} epochs" in probe["bar"]
    assert result.strategy == "partial" and len(result.history) == 1  # the probe alone
    assert done["val_score"] > lead["val_score"], "precondition: completing it gained"
    # A bar between the leader's two scores: short of it at the search, clear completed.
    n_val = sum(map(sum, result.val_metrics["confusion_matrix"]))
    midway = (lead["val_score"] + done["val_score"]) / 2 - probe["val_score"]
    result, lead2, probe, final = run(midway / auto._se(probe["val_score"], n_val), "mid")
    assert lead2["candidate"] == lead["candidate"] and lead2["completed"] == done
    assert lead2.get("chosen") and not probe.get("chosen") and "bar" not in probe
    assert final == list(range(lead["epochs"] + 1, done["epochs"] + 1))
    assert result.strategy == lead["strategy"] and result.epochs == done["epochs"]
    assert result.val_metrics["accuracy"] == pytest.approx(done["val_score"])
    assert len(result.history) == done["epochs"] + 1  # the probe, then its 8 epochs


def test_a_seconds_budget_stops_the_search_after_the_probe(
    digits_small: Path, tmp_path: Path
) -> None:
    config = TrainConfig(
        base_model="tiny_cnn",
        strategy="auto",
        epochs=2,
        image_size=32,
        auto_budget_seconds=1e-6,
        device="cpu",
    )
    result = train(
        config=config, dataset_dir=digits_small, work_dir=tmp_path / "w", cache_dir=tmp_path / "c"
    )
    assert [e.get("stage") for e in result.leaderboard] == ["probe"]
    assert result.leaderboard[0]["chosen"] is True
    # The probe won: the final job is the probe alone.
    assert [h["stage"] for h in result.history] == ["probe"] and result.best_epoch == 0


@pytest.mark.slow
def test_pretrained_false_defaults_to_full_from_random_init(
    digits_small: Path, tmp_path: Path
) -> None:
    config = TrainConfig(
        base_model="efficientnet_lite0", pretrained=False, epochs=1, image_size=32, device="cpu"
    )
    result = train(
        config=config, dataset_dir=digits_small, work_dir=tmp_path / "w", cache_dir=tmp_path / "c"
    )
    assert result.strategy == "full"
    assert [h.get("stage") for h in result.history] == ["probe", None]
    assert all(g["trainable"] for g in result.history[1]["schedule"])  # nothing frozen
    trained = load_file(result.artifact_dir / "model.safetensors")
    pre = build_model(base_model="efficientnet_lite0", num_classes=10, pretrained=True)
    assert not torch.equal(trained["stem.conv.weight"], pre.stem.conv.weight)
    scratch = build_model(base_model="efficientnet_lite0", num_classes=10, pretrained=False)
    # The random init, then trained (or kept as the probe found it, if epoch 1 was worse).
    if result.best_epoch >= 1:
        assert not torch.equal(trained["stem.conv.weight"], scratch.stem.conv.weight)
    else:
        assert torch.equal(trained["stem.conv.weight"], scratch.stem.conv.weight)


@pytest.mark.parametrize(
    ("base_model", "pretrained", "strategy"),
    [
        ("efficientnet_lite0", False, "partial"),
        ("efficientnet_lite0", False, "layerwise"),
        ("mlp", True, "progressive"),
    ],
)
def test_frozen_random_layers_are_refused(
    tmp_path: Path, base_model: str, pretrained: bool, strategy: str
) -> None:
    config = TrainConfig(base_model=base_model, pretrained=pretrained, strategy=strategy)
    with pytest.raises(InvalidConfig, match="no pretrained weights") as info:
        train(
            config=config,
            dataset_dir=tmp_path / "absent",
            work_dir=tmp_path / "w",
            cache_dir=tmp_path / "c",
        )
    assert info.value.field == "strategy"


def test_bad_config_is_refused_before_any_work(tmp_path: Path) -> None:
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


def test_a_candidate_must_beat_the_probe_by_more_than_a_standard_error():
    def board(score: float) -> tuple[list[dict], dict]:
        probe = {"stage": "probe", "val_score": 52 / 60}
        cand = {"strategy": "partial", "val_score": score}
        return [cand, probe], probe

    # 60 validation samples, probe at 0.867: one standard error is 0.044.
    entries, probe = board(53 / 60)  # one sample better: noise
    auto._choose(entries, probe, n_val=60, score_name="accuracy")
    assert probe.get("chosen") and not entries[0].get("chosen") and "bar" in probe
    entries, probe = board(56 / 60)  # four samples better: 0.067 > 0.044
    auto._choose(entries, probe, n_val=60, score_name="accuracy")
    assert entries[0].get("chosen") and not probe.get("chosen")
    # The same gain on a large validation split clears the bar.
    entries, probe = board(0.8667 + 0.0167)
    auto._choose(entries, probe, n_val=6000, score_name="accuracy")
    assert entries[0].get("chosen")
    # Scores other than accuracy (mAP, R²): the best-ranked entry.
    entries, probe = board(0.87)
    auto._choose(entries, probe, n_val=60, score_name="r2")
    assert entries[0].get("chosen")


def test_a_rung_that_would_overrun_the_seconds_budget_is_costed_from_the_others():
    from app.training.auto import estimate_epoch_seconds

    assert estimate_epoch_seconds([], 4) is None  # nothing measured: the rung runs
    # One point: proportional to the blocks trained.
    assert estimate_epoch_seconds([(2, 1.2)], 4) == pytest.approx(2.4)
    # Two or more: a straight line through them (digits: full is 8 units of lite0).
    assert estimate_epoch_seconds([(2, 1.2), (4, 2.5)], 8) == pytest.approx(5.1)
    # Never below the dearest measured for a candidate that trains at least as much.
    assert estimate_epoch_seconds([(2, 3.0), (4, 2.0)], 8) == pytest.approx(3.0)
    # A cheaper candidate may cost less than any measured, never less than nothing.
    assert estimate_epoch_seconds([(4, 1.0), (8, 9.0)], 1) == 0.0


def test_the_winners_last_rung_stays_within_what_the_search_left_of_each_budget() -> None:
    """final_epochs: the end of the winner's plan, cut to the epochs and the seconds the
    search left (costed from the winner's own epochs), read from the board alone."""
    probe = {"stage": "probe", "epochs": 0, "seconds": 2.0}
    win = {"candidate": 1, "epochs": 4, "planned_epochs": 8, "seconds": 8.0}  # 2 s an epoch
    other = {"candidate": 0, "epochs": 4, "planned_epochs": 8, "seconds": 4.0}
    board = [win, probe, other]  # 8 epochs and 14 s spent

    def upto(budget_epochs: int, budget_seconds: float | None) -> int:
        return auto.final_epochs(
            win, board, budget_epochs=budget_epochs, budget_seconds=budget_seconds
        )

    assert upto(18, None) == 8  # the whole plan fits
    assert upto(10, None) == 6  # 2 epochs left of the budget
    assert upto(8, None) == 4  # none left: where the search left it
    assert upto(18, 20.0) == 7  # 6 s left, at 2 s an epoch
    assert upto(18, 13.0) == 4  # the search already overran it


def test_accuracies_within_a_standard_error_are_a_tie_the_validation_loss_decides() -> None:
    """On 48 validation samples one sample is 0.021 of accuracy, and the standard error
    at 0.875 is 0.048: 0.875 and 0.854 tie, and the lower loss ranks first; 0.75 is more
    than a standard error behind and stays behind whatever its loss."""

    def entry(name: str, acc: float, loss: float, params: int = 10) -> dict:
        return {"name": name, "val_score": acc, "val_loss": loss, "trainable_params": params}

    board = [
        entry("top-3", 0.875, 0.515),
        entry("full", 0.854, 0.446, params=100),
        entry("probe", 0.750, 0.300),
        entry("top-2", 0.854, 0.446, params=50),
    ]
    order = [e["name"] for e in auto.ranked(board, n_val=48, score_name="accuracy")]
    assert order == ["top-2", "full", "top-3", "probe"]  # equal losses: the cheaper first
    # With many validation samples the same gap is no tie: accuracy decides.
    order = [e["name"] for e in auto.ranked(board, n_val=5000, score_name="accuracy")]
    assert order == ["top-3", "top-2", "full", "probe"]
    # A continuous score (R², mAP) ranks as it is.
    order = [e["name"] for e in auto.ranked(board, n_val=48, score_name="r2")]
    assert order == ["top-3", "top-2", "full", "probe"]
