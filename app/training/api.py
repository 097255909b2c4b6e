"""The engine's entry point: `train(config=..., dataset_dir=..., ...)` -> TrainResult.

The worker turns a JobSpec into a TrainConfig and calls `train`; nothing here knows
about HTTP, Celery or the database. The dataset's task (tasks.py: a modality and a
kind) picks the data loader (LOADERS, by modality; what the artifact carries:
artifact.py) and the head, loss, score, probe and metrics (its kind); the loop is one.
Calling `train` again with the same `work_dir` resumes from the last epoch checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from app.training import auto, tabular, text
from app.training.artifact import save_artifact
from app.training.build import (
    TransferModel,
    build_model,
    check_available,
    get_base_model,
    num_blocks,
)
from app.training.config import DEFAULT_LEARNING_RATE, TrainConfig, validate_config
from app.training.data import load_dataset
from app.training.errors import DatasetError, InvalidConfig
from app.training.feature_store import FeatureStore
from app.training.freeze import default_train_bn
from app.training.loop import FitResult, LoopOptions, fit
from app.training.schedule import plan_schedule
from app.training.tasks import Kind, Modality, Task, get_task

# How much training a job gets when `epochs` is not given: at least DEFAULT_EPOCHS, and
# at least this many optimizer steps, so a 100-sample upload is not stopped after a
# dozen steps. A network trained from random weights needs far more than a pretrained
# one that starts from the exact probe's head.
DEFAULT_EPOCHS = 10
MIN_STEPS_PRETRAINED = 100
MIN_STEPS_SCRATCH = 600
MAX_DEFAULT_EPOCHS = 300
FROZEN_STRATEGIES = ("partial", "layerwise", "progressive")


def has_pretrained_weights(base_model: str, *, pretrained: bool, has_init: bool) -> bool:
    """Whether the network starts from learned weights: a model trained here or
    uploaded weights (`has_init`), or a base model's pretrained weights."""
    return has_init or (pretrained and get_base_model(base_model).pretrained_weights)


def resolve_strategy(strategy: str | None, *, base_model: str, has_weights: bool) -> str:
    """The strategy a job runs: `partial` (the exact probe on frozen features) for
    pretrained weights, `full` for random ones; a strategy that keeps random layers
    frozen is refused."""
    if strategy is None:
        return "partial" if has_weights else "full"
    if strategy in FROZEN_STRATEGIES and not has_weights:
        raise InvalidConfig(
            f"strategy {strategy!r} keeps layers of {base_model!r} frozen, but they have no "
            "pretrained weights (random frozen layers only scramble the inputs); use "
            "'full' (the default here) or 'auto'",
            field="strategy",
        )
    return strategy


def resolve_learning_rate(
    learning_rate: float | None, *, base_model: str, strategy: str, has_weights: bool
) -> float:
    """The base rate a job runs at: the job's own, else the base model's rate for `full`
    on pretrained weights (build.BaseModel.full_learning_rate), else the default. `auto`
    keeps the default: its candidates derive their rates from it (auto.candidates)."""
    if learning_rate is not None:
        return learning_rate
    own = get_base_model(base_model).full_learning_rate
    if strategy == "full" and has_weights and own is not None:
        return own
    return DEFAULT_LEARNING_RATE


def _entry(result: FitResult, model: TransferModel, **what) -> dict:
    """A leaderboard entry for a finished fit."""
    return {
        **what,
        "val_score": result.best_val_score,
        "val_loss": result.best_val_loss,
        "best_epoch": result.best_epoch,
        "trainable_params": sum(p.numel() for p in model.parameters()),
    }


def _against_linear(
    setup: auto.Setup, mlp: dict, result: FitResult, model: TransferModel, work_dir: Path
) -> tuple[list[dict], tuple[TransferModel, FitResult]]:
    """`full` on a tabular MLP from random weights: the linear model (the MLP with no
    hidden layer, fitted exactly: logistic regression, ridge for a regression) is its
    bar, as the probe is for a pretrained body. The MLP is kept only when it beats it on
    validation by more than a standard error (auto.BAR_SE; any gain for R²): on 300
    rows a small linear problem is where an MLP overfits. Measured (bench/quality.py):
    diabetes R² 0.275 for the MLP against ridge's 0.366 on the same rows; palmerpenguins
    0.981 against logistic regression's 0.990. (leaderboard, (model, fit) kept)."""
    t0 = time.perf_counter()
    linear = setup.make_linear()
    plans = plan_schedule(
        strategy=auto.PROBE["strategy"],
        num_blocks=0,
        epochs=1,
        learning_rate=setup.learning_rate,
        trainable_blocks=0,
        unfreeze_every=1,
        lr_decay=setup.lr_decay,
    )
    fitted = fit(
        model=linear,
        plans=plans,
        data=setup.data,
        options=replace(setup.options, probe=True),
        work_dir=work_dir / "linear",
        fingerprint={"linear": True},
        should_stop=setup.should_stop,
    )
    bar = {**auto.PROBE, "stage": "linear", **_entry(fitted, linear), "epochs": 0}
    bar["seconds"] = time.perf_counter() - t0
    score_name = get_task(setup.options.task).objective_class.score_name
    board = auto.judged([bar, mlp], bar, n_val=len(setup.data.val.labels), score_name=score_name)
    return board, ((linear, fitted) if bar.get("chosen") else (model, result))


def check_trainable_blocks(trainable_blocks: int, *, base_model: str) -> int:
    """The model's block count; more trainable units than it has (its blocks + the stem)
    are refused (the API asks this before it queues the job)."""
    blocks = num_blocks(base_model)
    if trainable_blocks > blocks + 1:
        raise InvalidConfig(
            f"trainable_blocks must be at most {blocks + 1} for {base_model} "
            f"({blocks} blocks + stem)",
            field="trainable_blocks",
        )
    return blocks


def default_epochs(*, train_size: int, batch_size: int, has_weights: bool) -> int:
    """Epochs for at least DEFAULT_EPOCHS and the step floor (see above)."""
    steps_per_epoch = max(1, math.ceil(train_size / batch_size))
    floor = MIN_STEPS_PRETRAINED if has_weights else MIN_STEPS_SCRATCH
    return min(MAX_DEFAULT_EPOCHS, max(DEFAULT_EPOCHS, math.ceil(floor / steps_per_epoch)))


@dataclass
class TrainResult:
    artifact_dir: Path
    classes: list[str]
    metrics: dict  # held-out test split
    history: list[dict]
    best_epoch: int
    leaderboard: list[dict] | None
    val_metrics: dict
    strategy: str = ""  # the strategy that ran (resolved from null, or auto's choice)
    epochs: int = 0  # the epochs it was planned for (resolved from null)


def train(
    *,
    config: TrainConfig,
    dataset_dir: Path,
    work_dir: Path,
    cache_dir: Path,
    init_state: dict | None = None,
    init_config: dict | None = None,
    on_epoch: Callable[[dict], None] = lambda r: None,
    should_stop: Callable[[], bool] = lambda: False,
    feature_dir: Path | None = None,
) -> TrainResult:
    """Fine-tune, evaluate on the held-out test split, write work_dir/"model".

    `feature_dir` keeps frozen features of this dataset for later jobs (feature_store.py);
    without it, only the candidates of an `auto` search share them.

    Raises Cancelled when should_stop() turns true, EngineError subclasses for a bad
    config or dataset. `init_state` is the state dict of a model trained here (or
    uploaded); `init_config` that model's config.json (a tabular model's preprocessing
    is reused, so its first layer sees the features it learned on).
    """
    validate_config(config)
    spec = get_base_model(config.base_model)
    if init_state is None:
        check_available(config.base_model, config.pretrained)
    # A model trained here starts from learned statistics just like base weights do.
    has_weights = has_pretrained_weights(
        config.base_model, pretrained=config.pretrained, has_init=init_state is not None
    )
    requested = resolve_strategy(
        config.strategy, base_model=config.base_model, has_weights=has_weights
    )
    # refused before decoding any image
    blocks = check_trainable_blocks(config.trainable_blocks, base_model=config.base_model)
    # A tabular model trained here has the hidden layers its config.json records (none: a
    # linear model); a base model or uploaded weights, the architecture's own.
    hidden = tabular.hidden_in(init_config) if init_config and spec.has_hidden_layers else None
    if hidden is not None:
        blocks = len(hidden)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    task = _dataset_task(dataset_dir)
    if task.base_task != spec.task:
        raise InvalidConfig(
            f"base_model {config.base_model!r} is for {spec.task.split('_')[0]} data; "
            f"the dataset is {task.name}",
            field="base_model",
        )
    if config.loss not in (None, "mse") and task.kind != Kind.REGRESSION:
        raise InvalidConfig(f"loss {config.loss!r} is for regression tasks only", field="loss")
    data = LOADERS[task.modality](
        dataset_dir, config=config, cache_dir=cache_dir, init_config=init_config, task=task
    )
    num_inputs = data.meta["preprocessing"]["width"] if task.modality == Modality.TABULAR else None
    if num_inputs is not None and init_state is not None:
        _check_tabular_init(init_state, num_inputs)
    head_size = task.head_size(data.classes)
    if (
        init_state is not None
        and init_config
        and (
            init_config.get("classes") != data.classes
            or get_task(init_config.get("task")).kind != task.kind
            or init_config.get("num_classes") != head_size
        )
    ):
        # Other classes or another kind (even as many outputs): the parent's head means
        # nothing here; a fresh one.
        init_state = {k: v for k, v in init_state.items() if not k.startswith("head.")}
    epochs = config.epochs or default_epochs(
        train_size=len(data.train), batch_size=config.batch_size, has_weights=has_weights
    )
    patience = config.early_stopping_patience
    if config.epochs is None and patience is not None:
        patience *= max(1, epochs // DEFAULT_EPOCHS)  # patience stretches with the floor
    store = None
    if task.modality != Modality.TABULAR:  # tabular features cost less to compute than to store
        dir_ = Path(feature_dir) if feature_dir else work_dir / "features"
        if feature_dir or requested == "auto":
            store = FeatureStore(directory=dir_, data_key=_data_key(dataset_dir, config))
    options = LoopOptions(
        mean=spec.mean,
        std=spec.std,
        image_size=config.image_size,
        batch_size=config.batch_size,
        optimizer=config.optimizer,
        weight_decay=config.weight_decay,
        scheduler=config.scheduler,
        early_stopping_patience=patience,
        augment=config.augment,
        seed=config.seed,
        device=config.device,
        label_smoothing=config.label_smoothing,
        class_weights=config.class_weights,
        modality=str(task.modality),
        probe=config.probe,
        refit=config.refit,
        task=str(task.name),
        loss=config.loss,
    )

    def make_model() -> TransferModel:
        return build_model(
            base_model=config.base_model,
            num_classes=head_size,
            pretrained=config.pretrained,
            state_dict=init_state,
            seed=config.seed,
            num_inputs=num_inputs,
            hidden=hidden,
        )

    def make_linear() -> TransferModel:
        """The same model with no hidden layer: a linear model of the encoded inputs."""
        return build_model(
            base_model=config.base_model,
            num_classes=head_size,
            pretrained=False,
            seed=config.seed,
            num_inputs=num_inputs,
            hidden=tabular.LINEAR,
        )

    lr = resolve_learning_rate(
        config.learning_rate,
        base_model=config.base_model,
        strategy=requested,
        has_weights=has_weights,
    )
    strategy, trainable_blocks = requested, config.trainable_blocks
    leaderboard = won = None
    # What the search and its winner's final evaluation share.
    setup = auto.Setup(
        make_model=make_model,
        pretrained=has_weights,
        data=data,
        options=options,
        num_blocks=blocks,
        learning_rate=lr,
        lr_decay=config.lr_decay,
        work_dir=work_dir / "auto",
        feature_store=store,
        on_epoch=on_epoch,
        should_stop=should_stop,
        # From random weights, rung 0 and the bar: the linear model, not a probe of noise.
        make_linear=make_linear if spec.has_hidden_layers and not has_weights else None,
    )
    if strategy == "auto":
        leaderboard = auto.search(
            setup,
            budget_epochs=config.auto_budget_epochs,
            budget_seconds=config.auto_budget_seconds,
        )
        # A fine-tuned candidate that won: its own run, completed from where the search
        # left it (the last rung), is the model.
        won = auto.conclude(
            setup,
            leaderboard,
            budget_epochs=config.auto_budget_epochs,
            budget_seconds=config.auto_budget_seconds,
        )
        best = next(e for e in leaderboard if e.get("chosen"))
        strategy, trainable_blocks = best["strategy"], best["trainable_blocks"]
        lr = best["learning_rate"] or lr  # None: rung 0 won
        options = replace(options, probe=True)  # the final run starts from the probe too

    if won is not None:
        best, model, result = won
        epochs = best["completed"]["epochs"]
    else:
        # No search, or rung 0 won: head only is the probe, refitted on train + val; the
        # linear model, when it won, is the job's model.
        linear = leaderboard is not None and best.get("stage") == "linear"
        model = (setup.make_linear if linear else make_model)()  # linear: make_linear is set
        plans = plan_schedule(
            strategy=strategy,
            num_blocks=len(model.blocks),
            epochs=epochs,
            learning_rate=lr,
            trainable_blocks=trainable_blocks,
            unfreeze_every=config.unfreeze_every,
            lr_decay=config.lr_decay,
        )
        t0 = time.perf_counter()
        result = fit(
            model=model,
            plans=plans,
            data=data,
            options=replace(
                options, train_bn=default_train_bn(strategy=strategy, pretrained=has_weights)
            ),
            work_dir=work_dir,
            fingerprint={
                "config": asdict(config),
                "strategy": strategy,
                "init_state": init_state is not None,
            },
            on_epoch=on_epoch,
            should_stop=should_stop,
            feature_store=store,
        )
        baseline = config.linear_baseline and setup.make_linear is not None
        if leaderboard is None and strategy == "full" and baseline:
            mlp = _entry(result, model, strategy="full", learning_rate=lr, epochs=epochs)
            mlp["seconds"] = time.perf_counter() - t0
            leaderboard, kept = _against_linear(setup, mlp, result, model, work_dir)
            model, result = kept

    artifact_dir = save_artifact(
        work_dir / "model",
        model=model,
        base_model=config.base_model,
        classes=data.classes,
        image_size=config.image_size,
        task=str(task.name),
        meta=getattr(data, "meta", {}),
        max_length=config.max_length,
        extra=result.extra,
    )
    assert result.test_pred is not None
    objective = task.objective(
        classes=data.classes, train_targets=data.train.labels, options=options
    )
    extra = result.extra or {}
    return TrainResult(
        artifact_dir=artifact_dir,
        classes=data.classes,
        metrics=objective.metrics(result.test_pred, data.test.labels, extra),
        history=result.history,
        best_epoch=result.best_epoch,
        leaderboard=leaderboard,
        val_metrics=objective.metrics(result.val_pred, data.val.labels, extra),
        strategy=strategy,
        epochs=epochs,
    )


def _load_image(dataset_dir: Path, *, config: TrainConfig, cache_dir: Path, init_config, task):
    return load_dataset(
        dataset_dir,
        image_size=config.image_size,
        cache_dir=cache_dir,
        val_fraction=config.val_fraction,
        seed=config.seed,
        task=str(task.name),
    )


def _load_text(dataset_dir: Path, *, config: TrainConfig, cache_dir: Path, init_config, task):
    return text.load_text_dataset(
        dataset_dir,
        max_length=config.max_length,
        val_fraction=config.val_fraction,
        seed=config.seed,
        task=str(task.name),
    )


def _load_tabular(dataset_dir: Path, *, config: TrainConfig, cache_dir: Path, init_config, task):
    return tabular.load_tabular_dataset(
        dataset_dir,
        val_fraction=config.val_fraction,
        seed=config.seed,
        preprocessing=(init_config or {}).get("preprocessing"),
        task=str(task.name),
    )


# Per modality: the loader (-> ImageData / TensorData with the task's targets).
LOADERS = {Modality.IMAGE: _load_image, Modality.TEXT: _load_text, Modality.TABULAR: _load_tabular}


def _data_key(dataset_dir: Path, config: TrainConfig) -> str:
    """What the model's inputs depend on: the dataset's manifest (its samples, their
    labels and splits), how train is split into train/val, and the input size."""
    manifest = (Path(dataset_dir) / "manifest.json").read_bytes()
    parts = {
        "manifest": hashlib.sha256(manifest).hexdigest(),
        "val_fraction": config.val_fraction,
        "seed": config.seed,
        "image_size": config.image_size,
        "max_length": config.max_length,
    }
    return json.dumps(parts, sort_keys=True)


def _dataset_task(dataset_dir: Path) -> Task:
    try:
        manifest = json.loads((Path(dataset_dir) / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read dataset manifest in {dataset_dir}: {e}") from e
    return get_task(manifest.get("task", "image_classification"))


def _check_tabular_init(state: dict[str, torch.Tensor], num_inputs: int) -> None:
    first = state.get("blocks.0.0.weight")
    if first is not None and first.shape[1] != num_inputs:
        raise InvalidConfig(
            f"the base model takes {first.shape[1]} encoded features; this dataset has "
            f"{num_inputs}",
            field="base_model",
        )
