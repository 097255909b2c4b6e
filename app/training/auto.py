"""Strategy "auto": a small, budgeted search on the validation split (the seed's
"automated fine-tuning"), then the winner trains for the job's full epochs.

Candidates are (strategy, trainable_blocks, learning_rate) triples around the job's
learning rate, cheapest first so a seconds budget cuts the expensive ones. Each
candidate runs the same loop for a short number of epochs in its own work folder; a
finished candidate's result is written next to its checkpoint, so a resumed job does not
search again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from app.training.build import TransferModel
from app.training.data import ImageData
from app.training.freeze import default_train_bn
from app.training.loop import LoopOptions, fit
from app.training.schedule import plan_schedule


def candidates(*, learning_rate: float, num_blocks: int) -> list[dict]:
    top = min(2, num_blocks)
    return [
        {"strategy": "partial", "trainable_blocks": 0, "learning_rate": learning_rate},
        {"strategy": "partial", "trainable_blocks": top, "learning_rate": learning_rate},
        {"strategy": "progressive", "trainable_blocks": 0, "learning_rate": learning_rate},
        {"strategy": "full", "trainable_blocks": 0, "learning_rate": learning_rate * 0.1},
    ]


def _rank(entry: dict) -> tuple[float, float]:
    return (-entry["val_accuracy"], entry["val_loss"])


def search(
    *,
    make_model: Callable[[], TransferModel],
    pretrained: bool,
    data: ImageData,
    options: LoopOptions,
    num_blocks: int,
    learning_rate: float,
    lr_decay: float,
    budget_epochs: int,
    work_dir: Path,
    budget_seconds: float | None = None,
    on_epoch: Callable[[dict], None] = lambda r: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> list[dict]:
    """Leaderboard entries, best first: {strategy, trainable_blocks, learning_rate,
    val_accuracy, val_loss, seconds, trainable_params, epochs}."""
    cands = candidates(learning_rate=learning_rate, num_blocks=num_blocks)
    cands = cands[: max(1, budget_epochs)]  # at least one epoch per candidate
    epochs = max(1, budget_epochs // len(cands))
    board: list[dict] = []
    spent = 0.0
    for i, cand in enumerate(cands):
        cand_dir = Path(work_dir) / f"candidate-{i}"
        done = cand_dir / "result.json"
        if done.is_file():
            entry = json.loads(done.read_text())
        else:
            if budget_seconds is not None and board and spent >= budget_seconds:
                break
            t0 = time.perf_counter()
            plans = plan_schedule(
                strategy=cand["strategy"],
                num_blocks=num_blocks,
                epochs=epochs,
                learning_rate=cand["learning_rate"],
                trainable_blocks=cand["trainable_blocks"],
                unfreeze_every=1,
                lr_decay=lr_decay,
            )
            result = fit(
                model=make_model(),
                plans=plans,
                data=data,
                options=replace(
                    options,
                    early_stopping_patience=None,
                    train_bn=default_train_bn(strategy=cand["strategy"], pretrained=pretrained),
                ),
                work_dir=cand_dir,
                fingerprint={"candidate": cand},
                evaluate_test=False,
                on_epoch=lambda r, i=i: on_epoch({**r, "phase": "search", "candidate": i}),
                should_stop=should_stop,
            )
            entry = {
                **cand,
                "val_accuracy": result.best_val_accuracy,
                "val_loss": result.best_val_loss,
                "epochs": epochs,
                "seconds": time.perf_counter() - t0,
                "trainable_params": max(h["trainable_params"] for h in result.history),
            }
            tmp = done.with_suffix(".tmp")
            tmp.write_text(json.dumps(entry))
            os.replace(tmp, done)
        spent += entry["seconds"]
        board.append(entry)
    board.sort(key=_rank)
    return board
