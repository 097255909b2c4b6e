"""The job contract: every option of a training run, declared once.

Each field of `TrainConfig` carries its type, its default, what it means and its bounds
(`option`). Choices are Literals built from the engine's own registries: the strategies
of schedule.py (and auto.py's search), the optimizers and schedulers of optim.py, the
losses and class-weight modes the tasks read (tasks.py), the devices resolve_device
reads (loop.py). The API's JobSpec is derived from this declaration (app/jobs/schemas.py),
so the HTTP edge accepts exactly what the engine runs, and refuses the rest with a 422
naming the field.

`validate_config` checks the same declaration for callers that build a TrainConfig
themselves (the worker, the benches, the tests); it cannot drift from the edge's checks.
What needs the model or the dataset (trainable_blocks against the model's blocks, the
base model against the dataset's task, a regression-only loss) `train` checks itself.
"""

import re
import types
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Union, get_args, get_origin

from app.training.errors import InvalidConfig
from app.training.schedule import STRATEGIES

# This module imports no torch: the API's schema and the client (app/client) import it,
# and a CLI call must not pay seconds for torch. So the names of the optimizers and
# schedulers, and the text encoder's token limits, are declared here and read from here
# by their implementations (optim.py, text.py); tests/jobs/test_contract.py runs each.
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "step", "onecycle", "none")
TEXT_DEFAULT_MAX_LENGTH = 128  # tokens per input (longer is truncated)
# The base rate where the job names none (api.resolve_learning_rate); a base model may
# set its own for full fine-tuning of its pretrained weights (build.BaseModel).
DEFAULT_LEARNING_RATE = 1e-3
TEXT_POSITIONS = 512  # the encoder's position embeddings

# The registries the choices come from. "auto" searches over STRATEGIES (auto.py).
STRATEGY_CHOICES = (*STRATEGIES, "auto")
LOSSES = ("mse", "huber")  # regression (tasks.py); null is MSE
CLASS_WEIGHTS = ("auto",)  # inverse class frequency (tasks.py); null is unweighted
# resolve_device: auto (cuda when there is one), cpu, cuda (the current one) or cuda:N.
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"

Strategy = Literal[STRATEGY_CHOICES]  # type: ignore[valid-type]
Optimizer = Literal[OPTIMIZERS]  # type: ignore[valid-type]
Scheduler = Literal[SCHEDULERS]  # type: ignore[valid-type]
Loss = Literal[LOSSES]  # type: ignore[valid-type]
ClassWeights = Literal[CLASS_WEIGHTS]  # type: ignore[valid-type]

BOUNDS = ("ge", "gt", "le", "lt", "pattern")


def option(default: Any, doc: str = "", **bounds: float | str) -> Any:
    """A TrainConfig field: its default, what it means (the API's description), and its
    bounds: ge / gt / le / lt for numbers, pattern (a regex) for strings."""
    assert set(bounds) <= set(BOUNDS), bounds
    return field(default=default, metadata={"doc": doc, "bounds": bounds})


@dataclass
class TrainConfig:
    base_model: str = option(
        "efficientnet_lite0", "the architecture, a name from build.list_base_models()"
    )
    pretrained: bool = option(True, "start from the base model's pretrained weights")
    strategy: Strategy | None = option(
        None,
        "null: chosen from the base model (partial, i.e. the exact linear probe, "
        "for pretrained weights; full for random ones); the chosen one is stored",
    )
    trainable_blocks: int = option(
        0,
        "partial: how many units below the head train, from the top (0: the linear probe); "
        "at most the model's blocks + 1 (the stem)",
        ge=0,
        le=64,
    )
    unfreeze_every: int = option(
        1, "layerwise, progressive: epochs between unfreezing one more unit", ge=1, le=1000
    )
    epochs: int | None = option(
        None, "null: chosen from the dataset size (a floor of steps)", ge=1, le=1000
    )
    learning_rate: float | None = option(
        None,
        f"null: chosen from the base model and the strategy ({DEFAULT_LEARNING_RATE:g}; "
        "the base model's own rate for full fine-tuning of its pretrained weights, "
        "minilm-l6: 1e-4); the chosen one is stored",
        gt=0,
        le=10,
    )
    batch_size: int = option(32, ge=1, le=4096)
    optimizer: Optimizer = option("adamw")
    weight_decay: float = option(1e-4, ge=0, le=1)
    scheduler: Scheduler = option(
        "cosine", "the learning-rate factor over the whole run (onecycle: warm up, then cosine)"
    )
    val_fraction: float = option(
        0.15,
        "a dataset without a val split: the stratified fraction of train held out for it",
        gt=0,
        lt=1,
    )
    early_stopping_patience: int | None = option(
        5, "epochs without a better validation score before stopping; null: never", ge=1, le=1000
    )
    image_size: int = option(224, ge=16, le=1024)
    augment: bool = option(False)
    seed: int = option(0, ge=0, le=2**31 - 1)
    device: str = option("auto", pattern=DEVICE_PATTERN)
    label_smoothing: float = option(0.0, ge=0, lt=1)
    class_weights: ClassWeights | None = option(
        None, "auto: weigh classes by inverse frequency; null: unweighted"
    )
    lr_decay: float = option(0.5, "per-block rate factor (progressive)", gt=0, le=1)
    linear_baseline: bool = option(
        True,
        "tabular MLP from random weights, strategy full: also fit its linear form (logistic "
        "regression, ridge) and keep it unless the MLP beats it on validation",
    )
    auto_budget_epochs: int = option(
        18, "epochs of the search and its winner's last rung (auto)", ge=1, le=1000
    )
    auto_budget_seconds: float | None = option(
        None, "search budget in seconds (auto)", gt=0, le=7 * 24 * 3600
    )
    probe: bool = option(
        True,
        "fit the head exactly first (L-BFGS logistic regression on the frozen "
        "features): the whole job when only the head trains, the start of any fine-tune",
    )
    refit: bool = option(
        True,
        "a head-only job: once validation chose the L2 strength, refit the head "
        "on train + validation (validation metrics stay those of the head it chose)",
    )
    max_length: int = option(
        TEXT_DEFAULT_MAX_LENGTH,
        "text: tokens per input; longer texts are truncated",
        ge=8,
        le=TEXT_POSITIONS,
    )
    loss: Loss | None = option(None, "regression: mean squared error (null, the default) or Huber")


def choices(annotation: Any) -> tuple | None:
    """The values a field's Literal allows (None among them when it is nullable), or
    None when the field is not a choice."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and get_origin(args[0]) is Literal:
            return (*get_args(args[0]), None)
    return None


def _value_types(annotation: Any) -> tuple[type, ...]:
    """The Python types a plain (not a choice) field's value may have, None aside; an
    int is a float too."""
    (kind,) = [a for a in get_args(annotation) if a is not type(None)] or [annotation]
    return (int, float) if kind is float else (kind,)


def nullable(annotation: Any) -> bool:
    return type(None) in get_args(annotation)


_NEEDS = {
    "ge": (lambda v, b: v >= b, "at least {}"),
    "gt": (lambda v, b: v > b, "greater than {}"),
    "le": (lambda v, b: v <= b, "at most {}"),
    "lt": (lambda v, b: v < b, "less than {}"),
    "pattern": (lambda v, b: re.fullmatch(b, v) is not None, "of the form {}"),
}


def validate_config(config: TrainConfig) -> None:
    """Raise InvalidConfig naming the field for a value outside the declaration above."""
    for f in fields(config):
        value = getattr(config, f.name)
        if value is None and nullable(f.type):
            continue
        allowed = choices(f.type)
        if allowed is not None:
            if value not in allowed:
                listed = ", ".join("null" if a is None else str(a) for a in allowed)
                raise InvalidConfig(f"{f.name} must be one of {listed}", field=f.name)
            continue
        types_ = _value_types(f.type)
        if not isinstance(value, types_) or (isinstance(value, bool) and bool not in types_):
            need = " or ".join(t.__name__ for t in types_)
            raise InvalidConfig(f"{f.name} must be {need}, not {value!r}", field=f.name)
        for name, bound in f.metadata["bounds"].items():
            ok, need = _NEEDS[name]
            if not ok(value, bound):
                raise InvalidConfig(f"{f.name} must be {need.format(bound)}", field=f.name)
    from app.training.loop import resolve_device  # torch: only when validating

    resolve_device(config.device)  # cuda on a machine without one: refused here
