"""The one training loop. Strategies reach it only as a list of EpochPlans.

Per epoch: apply the plan (freeze/unfreeze, BN modes, new optimizer groups), train,
validate, keep the best weights (the task's val score: accuracy, mAP or R², ties
broken by lower val loss; the loss, score and probe come from the task, tasks.py), write an
atomic checkpoint, report, and stop early when patience runs out. A checkpoint found in
`work_dir` at start is resumed; with the same seed the result matches an uninterrupted
run exactly on the CPU.

Frozen-feature cache: when augmentation is off, the prefix of the network that no epoch
of the job ever trains (stem + lowest blocks, or the whole backbone for a linear probe)
runs once per sample per job; training then starts from the cached features.

Exact probe (`LoopOptions.probe`): before the first epoch, the head is fitted to the
optimum of its convex loss on the frozen backbone's pooled features (probe.py), and
that head is the bar every later epoch must beat on validation. When no epoch trains
more than the head and the features are cached, the probe is the whole job; otherwise
fine-tuning starts from it (LP-FT, Kumar et al. 2022). It is the history's first entry
(`"stage": "probe"`, epoch 0) and is checkpointed like an epoch.

Modalities: images arrive as uint8 tensors and go through the train/eval presets; text
(token ids + mask) and tabular (encoded features) tensors go to the model as they are
(`LoopOptions.modality`). Everything else is the same loop, over any dataset that has
the data protocol (data.TrainData: classes and train / val / test splits of inputs and
labels).

Reading order, as in torchvision's reference train.py: `prepare` (device, layout,
presets), the frozen features, `Checkpoints.resume`, `fit_probe`, then per epoch
`train_one_epoch` and `evaluate`; `fit` at the end calls them in that order.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn

from app.training import checkpoint as ckpt
from app.training import text
from app.training.build import TransferModel
from app.training.data import SplitData, TrainData
from app.training.errors import Cancelled, CheckpointMismatch, InvalidConfig
from app.training.feature_store import FeatureStore, cached
from app.training.features import cache_features
from app.training.freeze import (
    apply_plan,
    count_params,
    group_modules,
    set_train_mode,
    sync_optimizer,
    trainable_param_groups,
)
from app.training.optim import create_optimizer, create_scheduler
from app.training.presets import EvalPreset, TrainPreset
from app.training.runtime import signature, train_autocast, train_channels_last
from app.training.schedule import EpochPlan, frozen_level
from app.training.tasks import Fitted, Objective, get_task

log = logging.getLogger(__name__)

FROZEN_PASS_KEYS = ("prepare_seconds", "seconds", "threads", "chosen_by")
SPLIT_NAMES = ["train", "val", "test"]


@dataclass
class LoopOptions:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    batch_size: int = 32
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    scheduler: str = "cosine"
    early_stopping_patience: int | None = 5
    augment: bool = False
    seed: int = 0
    device: str = "auto"
    label_smoothing: float = 0.0
    class_weights: str | None = None
    feature_cache_limit_bytes: int = 2 * 1024**3
    eval_batch_size: int = 256
    train_bn: bool = True  # False: BN keeps pretrained statistics (see freeze.py)
    modality: str = "image"  # "text" / "tabular": inputs need no preset (see above)
    probe: bool = False  # fit the head exactly first (see above)
    refit: bool = False  # a probe-only job: refit its head on train + val (see fit)
    task: str = "image_classification"  # its kind supplies loss, score, probe (tasks.py)
    loss: str | None = None  # regression: "huber" instead of MSE


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class FitResult:
    history: list[dict]
    best_epoch: int  # 1-based, as in the reports
    best_val_score: float  # the task's validation score (accuracy, mAP, R²)
    best_val_loss: float
    val_pred: torch.Tensor  # the task's outputs (classes, per-label scores, values)
    test_pred: torch.Tensor | None
    feature_level: int  # -1 when no frozen-feature cache was used
    extra: dict | None = None  # what the task fitted for the artifact (thresholds, target)


def resolve_device(name: str) -> torch.device:
    """auto | cpu | cuda | cuda:N -> a concrete device (cuda always with its index)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name != "cpu" and not name.startswith("cuda"):
        raise InvalidConfig(f"unknown device {name!r}; auto, cpu, cuda or cuda:N", field="device")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise InvalidConfig(f"bad device {name!r}: {e}", field="device") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidConfig("device is cuda but no CUDA device is available", field="device")
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise InvalidConfig(f"no CUDA device {index} on this machine", field="device")
        device = torch.device("cuda", index)
    return device


class _Inputs:
    """What the trainable part of the model consumes for one split: raw uint8 images
    (run through a preset and the full model) or cached features at `level`."""

    def __init__(self, tensor: torch.Tensor, labels: torch.Tensor, level: int):
        self.tensor, self.labels, self.level = tensor, labels, level

    def __len__(self) -> int:
        return len(self.labels)


def _batches(n: int, size: int, order: torch.Tensor | None = None) -> list[torch.Tensor]:
    idx = order if order is not None else torch.arange(n)
    parts = list(idx.split(size))
    # A trailing batch of one breaks BatchNorm in train mode; fold it into the previous.
    if len(parts) > 1 and len(parts[-1]) == 1:
        parts[-2:] = [torch.cat(parts[-2:])]
    return parts


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _group_state(modules: dict[str, nn.Module], groups: list[str]) -> dict[str, torch.Tensor]:
    """CPU copies of the state of `groups`, keys prefixed with the group name."""
    return {
        f"{g}.{k}": v.detach().to("cpu", copy=True)
        for g in groups
        for k, v in modules[g].state_dict().items()
    }


def _load_group_state(
    modules: dict[str, nn.Module], groups: list[str], state: dict[str, torch.Tensor]
) -> None:
    for g in groups:
        prefix = f"{g}."
        modules[g].load_state_dict(
            {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        )


def _set_head(model: TransferModel, weight: torch.Tensor, bias: torch.Tensor) -> None:
    with torch.no_grad():
        model.head.weight.copy_(weight.to(model.head.weight))
        model.head.bias.copy_(bias.to(model.head.bias))


def _epoch_report(
    *,
    epoch: int,
    plans: list[EpochPlan],
    model: TransferModel,
    train_loss: float,
    val_loss: float,
    val_score: float,
    score_name: str,
    epoch_seconds: list[float],
) -> dict:
    """The on_epoch payload; ETA from the mean epoch time so far."""
    modules = group_modules(model)
    return {
        "epoch": epoch + 1,
        "epochs": len(plans),
        "train_loss": train_loss,
        "val_loss": val_loss,
        "val_score": val_score,
        f"val_{score_name}": val_score,
        "seconds": epoch_seconds[-1],
        "eta_seconds": (len(plans) - epoch - 1) * sum(epoch_seconds) / len(epoch_seconds),
        "schedule": [
            {
                "group": g.group,
                "trainable": g.trainable,
                "lr": g.lr,
                "params": count_params(modules[g.group]),
            }
            for g in plans[epoch].groups
        ],
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


# ---------------------------------------------------------------- feeding the model


@dataclass
class Feed:
    """How a batch reaches the model: on its device (pinned copies to CUDA), under bf16
    autocast on CUDA (and for training steps on a CPU where that measured faster),
    channels_last where that measured faster, through the image presets (the identity
    for text and tabular tensors)."""

    device: torch.device
    amp: contextlib.AbstractContextManager
    channels_last: bool
    train_preset: Callable[[torch.Tensor], torch.Tensor]
    eval_preset: Callable[[torch.Tensor], torch.Tensor]
    is_text: bool = False  # batches of texts are cut to their longest one (text.trim)
    # Training steps' autocast when it differs from `amp` (choose_train_amp: bf16 on a
    # CPU that runs it faster; evaluation stays fp32 there, as predict runs)
    train_amp: contextlib.AbstractContextManager | None = None

    @property
    def training_amp(self) -> contextlib.AbstractContextManager:
        return self.train_amp if self.train_amp is not None else self.amp

    @property
    def precision(self) -> str:
        """What training steps compute in: bf16 (autocast) or fp32."""
        return "bf16" if self.cuda or self.train_amp is not None else "fp32"

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def eval_order(self, inp: _Inputs) -> torch.Tensor | None:
        """Texts (tokens, or per-token features at a cut) shortest first, so that each
        evaluation batch is cut short; None for anything else."""
        if not self.is_text or inp.tensor.dim() != 3:
            return None
        return text.shortest_first(inp.tensor)

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.cuda and not t.is_cuda:  # pinned host memory lets the copy overlap compute
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)  # no-op on the CPU and for features cached on the GPU

    def logits(
        self, model: TransferModel, inp: _Inputs, idx: torch.Tensor, *, train: bool
    ) -> torch.Tensor:
        x = self.to_device(inp.tensor[idx])
        if self.is_text and x.dim() == 3:
            x = text.trim(x)
        if inp.level >= 0:
            return model.forward_from(x, inp.level)
        x = self.train_preset(x) if train else self.eval_preset(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return model(x)


def prepare(
    model: TransferModel, plans: list[EpochPlan], data: TrainData, options: LoopOptions
) -> Feed:
    """Move `model` to its device (channels_last where it measures faster, runtime.py)
    and say how batches reach it."""
    o = options
    device = resolve_device(o.device)
    image = o.modality == "image"
    shape = (min(o.batch_size, 16), 3, o.image_size, o.image_size)
    # A head on cached features: no convolution runs in training, the layout is moot.
    head_on_cache = not o.augment and frozen_level(plans, len(model.blocks)) == model.pooled_level
    work = 0 if head_on_cache else len(data.train) * len(plans)
    channels_last = image and train_channels_last(model, shape, device=device, work=work)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # faster convs with cuDNN
    cuda = device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    if not image:
        return Feed(device, amp, False, _identity, _identity, is_text=o.modality == "text")
    return Feed(
        device,
        amp,
        channels_last,
        TrainPreset(mean=o.mean, std=o.std, image_size=o.image_size, augment=o.augment),
        EvalPreset(mean=o.mean, std=o.std),
    )


def choose_train_amp(
    model: TransferModel, plan: EpochPlan, feed: Feed, data: _Inputs, objective, options, work: int
) -> None:
    """On the CPU, set `feed.train_amp` to bf16 autocast where a timed trial of this
    training step (on a copy of the model: what `plan` trains, on 16 of `data`, at its
    level) says it is faster (runtime.train_autocast); `work`: samples x epochs to run."""
    if feed.cuda or not len(data):
        return
    idx = torch.arange(min(16, len(data)))
    y = feed.to_device(data.labels[idx])
    x = data.tensor[idx]
    shape = tuple((text.trim(x) if feed.is_text and x.dim() == 3 else x).shape)
    copies: list[TransferModel] = []  # the model's copy, made only when a trial runs

    def step(bf16: bool) -> None:
        if not copies:
            trial = copy.deepcopy(model)
            apply_plan(trial, plan)
            set_train_mode(trial, plan, train_bn=options.train_bn)
            copies.append(trial)
        trial = copies[0]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = feed.logits(trial, data, idx, train=True)
        objective.loss(logits.float(), y).backward()
        trial.zero_grad(set_to_none=True)

    key = f"{signature(model)}/{'+'.join(plan.trainable_groups())}/{data.level}/{shape}"
    if train_autocast(key, step, device=feed.device, work=work):
        feed.train_amp = torch.autocast("cpu", dtype=torch.bfloat16)


# ---------------------------------------------------------------- frozen features


@dataclass
class FrozenFeatures:
    """Features of the frozen prefix of `model` (features.py): one pass over each split,
    kept in `store` across jobs when there is one. `info` receives the runtime the pass
    ran on and how long it took, for the history."""

    model: TransferModel
    feed: Feed
    options: LoopOptions
    store: FeatureStore | None
    check_stop: Callable[[], None]
    info: dict = field(default_factory=dict)

    def at(self, level: int, parts: list[SplitData]) -> list[torch.Tensor] | None:
        """Features at `level` of `parts`, from the store or computed; None when they
        would exceed the cache limit."""
        o = self.options
        return cached(
            store=self.store,
            model=self.model,
            level=level,
            names=SPLIT_NAMES[: len(parts)],
            extra={"modality": o.modality, "mean": o.mean, "std": o.std, "amp": self.feed.cuda},
            compute=lambda: self._pass(level, parts, o.feature_cache_limit_bytes, self.info),
        )

    def pooled(self, parts: list[SplitData]) -> list[torch.Tensor]:
        """Pooled features of `parts`, whatever their size (the probe needs them)."""
        got = self.at(self.model.pooled_level, parts)
        if got is None:  # over the cache limit: compute them regardless, not stored
            got = self._pass(self.model.pooled_level, parts, 2**62, None)
            assert got is not None
        return got

    def _pass(
        self, level: int, parts: list[SplitData], limit_bytes: int, info: dict | None
    ) -> list[torch.Tensor] | None:
        return cache_features(
            model=self.model,
            splits=[s.inputs for s in parts],
            level=level,
            preset=self.feed.eval_preset,
            to_device=self.feed.to_device,
            batch_size=self.options.eval_batch_size,
            limit_bytes=limit_bytes,
            check_stop=self.check_stop,
            amp=self.feed.amp,
            channels_last=self.feed.channels_last,
            info=info,
            by_length=self.feed.is_text,
        )

    def runtime(self, used: bool) -> str:
        """What the training inputs came from: the frozen pass's runtime ("stored" when
        it was read from the store), else the eager model's layout."""
        if used:
            return self.info.get("runtime", "stored")
        return "eager_channels_last" if self.feed.channels_last else "eager"


def model_inputs(
    frozen: FrozenFeatures, splits: list[SplitData], plans: list[EpochPlan]
) -> tuple[list[_Inputs], int]:
    """What training feeds the model for each split, and at which level: the frozen
    features below the lowest block any epoch trains (the whole backbone for a linear
    probe), else (-1) the raw inputs through the whole model: with augmentation, or when
    the features would exceed the cache limit."""
    model, o = frozen.model, frozen.options
    level = -1 if (o.augment and o.modality == "image") else frozen_level(plans, len(model.blocks))
    features = frozen.at(level, splits) if level >= 0 else None
    if features is None:
        return [_Inputs(s.inputs, s.labels, -1) for s in splits], -1
    return [_Inputs(t, s.labels, level) for t, s in zip(features, splits, strict=True)], level


def _pooled(model: TransferModel, inp: _Inputs, feed: Feed, batch_size: int) -> torch.Tensor:
    """Pooled features of cached inputs, through the (frozen, eval mode) top blocks."""
    if inp.level == model.pooled_level:
        return inp.tensor
    model.eval()
    out = []
    with torch.inference_mode(), feed.amp:
        for b in torch.arange(len(inp)).split(batch_size):
            h = feed.to_device(inp.tensor[b])
            for block in model.blocks[inp.level :]:
                h = block(h)
            out.append(model.pool(h).float())
    return torch.cat(out)


def probe_features(
    frozen: FrozenFeatures, train_in: _Inputs, val_in: _Inputs, data: TrainData
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) pooled features of the backbone as it is now (frozen): from the
    cached training inputs, else one pass of their own."""
    if train_in.level >= 0:
        batch_size = frozen.options.eval_batch_size
        return (
            _pooled(frozen.model, train_in, frozen.feed, batch_size),
            _pooled(frozen.model, val_in, frozen.feed, batch_size),
        )
    train_x, val_x = frozen.pooled([data.train, data.val])
    return train_x, val_x


# ---------------------------------------------------------------- resume


@dataclass
class Progress:
    """Where a run stands after `epoch` epochs (0: none yet, or only the probe): what a
    checkpoint carries beside the weights, the optimizer and the RNG states."""

    epoch: int
    step: int
    history: list[dict]
    best: dict  # epoch (1-based; 0: the probe), val_score, val_loss, state (its weights)
    bad_epochs: int  # epochs since `best` last improved
    refit: dict | None  # a probe-only job's head refitted on train + val

    @classmethod
    def fresh(cls, weights: dict[str, torch.Tensor]) -> Progress:
        best = {"epoch": 0, "val_score": -math.inf, "val_loss": math.inf, "state": weights}
        return cls(epoch=0, step=0, history=[], best=best, bad_epochs=0, refit=None)

    def out_of_patience(self, patience: int | None) -> bool:
        return patience is not None and self.bad_epochs >= patience

    def keep_if_best(
        self,
        *,
        epoch: int,
        val_score: float,
        val_loss: float,
        weights: Callable[[], dict[str, torch.Tensor]],
    ) -> None:
        """Best-so-far: `epoch` (1-based) becomes the best when it beats it on the score;
        ties (common on small val sets) go to the lower loss."""
        if (val_score, -val_loss) > (self.best["val_score"], -self.best["val_loss"]):
            self.best = {
                "epoch": epoch,
                "val_score": val_score,
                "val_loss": val_loss,
                "state": weights(),
            }
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1


class Checkpoints:
    """The run's checkpoint, `work_dir`/checkpoint.pt (checkpoint.py), written after the
    probe and after every epoch. Only the groups that train at some point are saved;
    the rest is rebuilt identically by the caller on resume, so a linear probe's
    checkpoints stay small."""

    def __init__(
        self, work_dir: Path, *, model: TransferModel, plans: list[EpochPlan], fingerprint: dict
    ):
        self.path = Path(work_dir) / ckpt.CHECKPOINT_NAME
        self.fingerprint = fingerprint
        self.modules = group_modules(model)
        self.groups = [g.group for g in plans[0].groups if any(p.trainable(g.group) for p in plans)]

    def weights(self) -> dict[str, torch.Tensor]:
        return _group_state(self.modules, self.groups)

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        _load_group_state(self.modules, self.groups, state)

    def resume(
        self, *, model: TransferModel, optimizer: torch.optim.Optimizer, plans: list[EpochPlan]
    ) -> Progress | None:
        """The progress of the checkpoint found, with the model, the optimizer and the RNG
        states put back as they were when it was written; None when there is none."""
        state = ckpt.load_checkpoint(self.path)
        if state is None:
            return None
        if state["fingerprint"] != self.fingerprint:
            raise CheckpointMismatch(f"{self.path} was written by a different job configuration")
        for plan in plans[: state["epoch"]]:  # re-add groups in the order they joined
            apply_plan(model, plan)
            sync_optimizer(optimizer, model, plan)
        self.load_weights(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        ckpt.set_rng_state(state["rng"])
        log.info("resumed from %s after epoch %d", self.path, state["epoch"])
        return Progress(
            epoch=state["epoch"],
            step=state["step"],
            history=state["history"],
            best=state["best"],
            bad_epochs=state["bad_epochs"],
            refit=state.get("refit"),
        )

    def save(self, progress: Progress, *, optimizer: torch.optim.Optimizer, scheduler: str) -> None:
        ckpt.save_checkpoint(
            self.path,
            {
                "fingerprint": self.fingerprint,
                "epoch": progress.epoch,
                "step": progress.step,
                "model": self.weights(),
                "optimizer": optimizer.state_dict(),
                "scheduler": {"name": scheduler, "step": progress.step},
                "best": progress.best,
                "bad_epochs": progress.bad_epochs,
                "history": progress.history,
                "rng": ckpt.rng_state(),
                "refit": progress.refit,
            },
        )


# ---------------------------------------------------------------- probe, train, evaluate


def fit_probe(
    *,
    model: TransferModel,
    objective: Objective,
    train_x: torch.Tensor,
    val_x: torch.Tensor,
    data: TrainData,
    seed: int,
    refit: bool,
) -> tuple[Fitted, dict | None]:
    """Set the head at the optimum of its convex loss on the frozen backbone's pooled
    features (`train_x`, `val_x`). With `refit`, also the head fitted again on train + val
    with the C validation chose: validation metrics stay those of the train-only head
    (the one it chose); only the test split, never seen, measures the refitted one."""
    fitted = objective.probe(train_x, data.train.labels, val_x, data.val.labels, seed=seed)
    _set_head(model, fitted.weight, fitted.bias)
    if not refit:
        return fitted, None
    both = objective.probe(
        torch.cat([train_x, val_x]),
        torch.cat([data.train.labels, data.val.labels]),
        val_x,
        data.val.labels,
        seed=seed,
        grid=(fitted.C,),
    )
    return fitted, {"weight": both.weight, "bias": both.bias}


def train_one_epoch(
    *,
    model: TransferModel,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    data: _Inputs,
    feed: Feed,
    plan: EpochPlan,
    epoch: int,
    step: int,
    factor: Callable[[int], float],
    options: LoopOptions,
    check_stop: Callable[[], None],
) -> tuple[float, int, int]:
    """One pass over `data` in an order seeded by the epoch, each step at its base lr
    times `factor(step)`: (mean train loss, samples seen, the step count after it)."""
    o = options
    set_train_mode(model, plan, train_bn=o.train_bn)
    order = torch.randperm(
        len(data), generator=torch.Generator().manual_seed(o.seed * 7919 + epoch)
    )
    loss_sum, seen = 0.0, 0
    for b in _batches(len(data), o.batch_size, order):
        check_stop()
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor(step)
        y = feed.to_device(data.labels[b])
        with feed.training_amp:
            logits = feed.logits(model, data, b, train=True)
        loss = objective.loss(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        loss_sum += float(loss.detach()) * len(b)
        seen += len(b)
    return loss_sum / max(1, seen), seen, step


def evaluate(
    *, model: TransferModel, objective: Objective, data: _Inputs, feed: Feed, batch_size: int
) -> tuple[torch.Tensor, float]:
    """(the task's outputs, mean plain loss) over `data`, the whole model in eval mode."""
    model.eval()
    preds, loss_sum = [], 0.0
    order = feed.eval_order(data)
    with torch.inference_mode(), feed.amp:
        for b in _batches(len(data), batch_size, order):
            logits = feed.logits(model, data, b, train=False).float()
            y = data.labels[b].to(feed.device)
            loss_sum += objective.eval_loss(logits, y)
            preds.append(objective.outputs(logits).cpu())
    out = torch.cat(preds)
    if order is not None:
        out = text.in_order(out, order)
    return out, loss_sum / max(1, len(data))


def _probe_report(
    fitted: Fitted,
    *,
    epochs: int,
    score_name: str,
    seconds: float,
    model: TransferModel,
    refit: bool,
) -> dict:
    """The history's entry 0 for the probe."""
    return {
        "epoch": 0,
        "epochs": epochs,
        "stage": "probe",
        "train_loss": fitted.objective,
        "val_loss": fitted.val_loss,
        "val_score": fitted.val_score,
        f"val_{score_name}": fitted.val_score,
        "seconds": seconds,
        "eta_seconds": None,
        "C": fitted.C,
        "grid": fitted.grid,
        "iterations": fitted.iterations,
        "trainable_params": count_params(model.head),
        "refit": refit,
    }


# ---------------------------------------------------------------- fit


def fit(
    *,
    model: TransferModel,
    plans: list[EpochPlan],
    data: TrainData,
    options: LoopOptions,
    work_dir: Path,
    fingerprint: dict | None = None,
    evaluate_test: bool = True,
    on_epoch: Callable[[dict], None] = lambda r: None,
    should_stop: Callable[[], bool] = lambda: False,
    feature_store: FeatureStore | None = None,
    stop_after: int | None = None,
) -> FitResult:
    """Train `model` in place along `plans`; the best epoch's weights end up in it.

    `stop_after`: train no further than this epoch of the plans in this call (an `auto`
    winner is evaluated where the search left it, its plans as they were).

    `feature_store`: where frozen features of this data are kept between jobs."""
    o = options
    if o.class_weights not in (None, "auto"):
        raise InvalidConfig("class_weights must be null or 'auto'", field="class_weights")

    def check_stop() -> None:
        if should_stop():
            raise Cancelled("stopped by request")

    ckpt.seed_everything(o.seed)
    feed = prepare(model, plans, data, o)

    frozen = FrozenFeatures(model, feed, o, feature_store, check_stop)
    # Test inputs go through the frozen pass even when this run is not evaluated on them
    # (an `auto` candidate): frozen features leak nothing, and the winner's final run
    # then reads all three splits from the store instead of running the pass again.
    splits = [data.train, data.val, data.test]
    inputs, level = model_inputs(frozen, splits, plans)
    train_in, val_in = inputs[0], inputs[1]
    test_in = inputs[2] if evaluate_test else None

    # The task: loss, outputs, validation score, probe (tasks.py).
    objective = get_task(o.task).objective(
        classes=data.classes, train_targets=data.train.labels, options=o
    )
    optimizer = create_optimizer(
        name=o.optimizer,
        param_groups=trainable_param_groups(model, plans[0]),
        lr=plans[0].lr("head"),
        weight_decay=o.weight_decay,
    )
    validate = partial(
        evaluate, model=model, objective=objective, feed=feed, batch_size=o.eval_batch_size
    )
    steps_per_epoch = len(_batches(len(train_in), o.batch_size))
    factor = create_scheduler(name=o.scheduler, total_steps=steps_per_epoch * len(plans))

    # Resume from the checkpoint in work_dir, or start afresh.
    checkpoints = Checkpoints(
        work_dir,
        model=model,
        plans=plans,
        fingerprint={
            "plans": [p.to_dict() for p in plans],
            "options": asdict(o),
            **(fingerprint or {}),
        },
    )
    resumed = checkpoints.resume(model=model, optimizer=optimizer, plans=plans)
    progress = resumed if resumed is not None else Progress.fresh(checkpoints.weights())
    stopped = bool(progress.history) and progress.out_of_patience(o.early_stopping_patience)

    def save() -> None:
        checkpoints.save(progress, optimizer=optimizer, scheduler=o.scheduler)

    # The exact probe: the history's epoch 0 (see above). Probe-only: the whole job.
    head_only = all(p.trainable_groups() == ["head"] for p in plans)
    probe_only = o.probe and head_only and level == model.pooled_level
    if o.probe and resumed is None:
        check_stop()
        t0 = time.perf_counter()
        tx, vx = probe_features(frozen, train_in, val_in, data)
        fitted, progress.refit = fit_probe(
            model=model,
            objective=objective,
            train_x=tx,
            val_x=vx,
            data=data,
            seed=o.seed,
            refit=probe_only and o.refit,
        )
        progress.best = {
            "epoch": 0,
            "val_score": fitted.val_score,
            "val_loss": fitted.val_loss,
            "state": checkpoints.weights(),
        }
        report = _probe_report(
            fitted,
            epochs=0 if probe_only else len(plans),  # probe-only: no epoch follows
            score_name=objective.score_name,
            seconds=time.perf_counter() - t0,
            model=model,
            refit=progress.refit is not None,
        )
        # The probe reads the frozen pass's features: its runtime, and the pass's time
        # (a head-only job has no other entry to say it).
        report["runtime"] = frozen.runtime(used=True)
        if "seconds" in frozen.info:
            report["frozen_pass"] = {k: frozen.info.get(k) for k in FROZEN_PASS_KEYS}
        progress.history.append(report)
        save()
        on_epoch(report)

    # The epochs.
    epoch_seconds = [h["seconds"] for h in progress.history if h.get("stage") != "probe"]
    runtime = frozen.runtime(used=level >= 0)
    # A linear head on cached feature vectors is too little work per step to split over
    # threads: the hand-offs cost more than the math (most of all on a shared CPU).
    single = level == model.pooled_level and not feed.cuda
    with _threads(1) if single else contextlib.nullcontext():
        last = len(plans) if stop_after is None else min(len(plans), stop_after)
        to_run = 0 if stopped or probe_only else max(0, last - progress.epoch)
        if to_run and not single:
            # The work the plans have left (an auto candidate's rungs are parts of one
            # plan, as the memory format's trial counts them).
            work = len(train_in) * (len(plans) - progress.epoch)
            choose_train_amp(model, plans[last - 1], feed, train_in, objective, o, work)
        for epoch in range(progress.epoch, progress.epoch + to_run):
            t0 = time.perf_counter()
            plan = plans[epoch]
            apply_plan(model, plan)
            sync_optimizer(optimizer, model, plan)
            train_loss, seen, progress.step = train_one_epoch(
                model=model,
                objective=objective,
                optimizer=optimizer,
                data=train_in,
                feed=feed,
                plan=plan,
                epoch=epoch,
                step=progress.step,
                factor=factor,
                options=o,
                check_stop=check_stop,
            )
            train_seconds = time.perf_counter() - t0
            val_pred, val_loss = validate(data=val_in)
            val_score = objective.score(val_pred, val_in.labels)
            progress.keep_if_best(
                epoch=epoch + 1, val_score=val_score, val_loss=val_loss, weights=checkpoints.weights
            )

            epoch_seconds.append(time.perf_counter() - t0)
            report = _epoch_report(
                epoch=epoch,
                plans=plans,
                model=model,
                train_loss=train_loss,
                val_loss=val_loss,
                val_score=val_score,
                score_name=objective.score_name,
                epoch_seconds=epoch_seconds,
            )
            # The training steps alone (no validation), for throughput: len(train) / this.
            report["train_seconds"] = train_seconds
            report["train_samples"] = seen
            report["runtime"] = runtime
            report["precision"] = feed.precision
            if "seconds" in frozen.info:  # the frozen pass: choosing its runtime, then running it
                report["frozen_pass"] = {k: frozen.info.get(k) for k in FROZEN_PASS_KEYS}
            progress.history.append(report)
            progress.epoch = epoch + 1
            stopped = progress.out_of_patience(o.early_stopping_patience)
            # Checkpoint before reporting: a crash in between repeats a report (same epoch
            # number, the consumer can dedupe) rather than losing an epoch.
            save()
            on_epoch(report)
            if stopped:
                log.info("early stop after epoch %d (best %d)", epoch + 1, progress.best["epoch"])
                break

    # The best epoch's weights; the validated head's outputs; the test split once.
    checkpoints.load_weights(progress.best["state"])
    val_pred, _ = validate(data=val_in)
    extra = objective.finish(val_pred, val_in.labels)  # from the validated head, not a refit
    if progress.refit is not None:
        _set_head(model, progress.refit["weight"], progress.refit["bias"])
    test_pred = validate(data=test_in)[0] if test_in is not None else None
    best = progress.best
    return FitResult(
        history=progress.history,
        best_epoch=best["epoch"],
        best_val_score=best["val_score"],
        best_val_loss=best["val_loss"],
        val_pred=val_pred,
        test_pred=test_pred,
        feature_level=level,
        extra=extra,
    )
