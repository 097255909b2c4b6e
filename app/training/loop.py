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
(`LoopOptions.modality`). Everything else is the same loop.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from app.training import checkpoint as ckpt
from app.training.build import TransferModel
from app.training.data import ImageData
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
from app.training.runtime import train_channels_last
from app.training.schedule import EpochPlan, frozen_level
from app.training.tasks import get_task

log = logging.getLogger(__name__)

FROZEN_PASS_KEYS = ("prepare_seconds", "seconds")


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


def fit(
    *,
    model: TransferModel,
    plans: list[EpochPlan],
    data: ImageData,
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
    device = resolve_device(o.device)
    cuda = device.type == "cuda"
    ckpt.seed_everything(o.seed)
    image = o.modality == "image"
    shape = (min(o.batch_size, 16), 3, o.image_size, o.image_size)
    # channels_last where it measures faster (runtime.py); a head on cached features: moot
    head_only = not o.augment and frozen_level(plans, len(model.blocks)) == model.pooled_level
    work = 0 if head_only else len(data.train) * len(plans)
    channels_last = image and train_channels_last(model, shape, device=device, work=work)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # faster convs with cuDNN
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    num_blocks = len(model.blocks)
    if image:
        train_preset = TrainPreset(
            mean=o.mean, std=o.std, image_size=o.image_size, augment=o.augment
        )
        eval_preset = EvalPreset(mean=o.mean, std=o.std)
    else:
        train_preset = eval_preset = _identity  # type: ignore[assignment]

    def check_stop() -> None:
        if should_stop():
            raise Cancelled("stopped by request")

    def to_device(t: torch.Tensor) -> torch.Tensor:
        if cuda and not t.is_cuda:  # pinned host memory lets the copy overlap compute
            return t.pin_memory().to(device, non_blocking=True)
        return t.to(device)  # no-op on the CPU and for features cached on the GPU

    # ---- frozen-feature cache (features.py), else raw images through the whole model
    level = -1 if (o.augment and image) else frozen_level(plans, num_blocks)
    # Test inputs go through the frozen pass even when this run is not evaluated on them
    # (an `auto` candidate): frozen features leak nothing, and the winner's final run
    # then reads all three splits from the store instead of running the pass again.
    splits = [data.train, data.val, data.test]
    feature_runtime: dict = {}  # which runtime ran the frozen pass (runtime.py)
    names = ["train", "val", "test"]

    def frozen_features(at: int, parts: list) -> list[torch.Tensor] | None:
        """Features at level `at` of `parts` (splits), from the store or computed."""

        def compute() -> list[torch.Tensor] | None:
            return cache_features(
                model=model,
                splits=[s.inputs for s in parts],
                level=at,
                preset=eval_preset,
                to_device=to_device,
                batch_size=o.eval_batch_size,
                limit_bytes=o.feature_cache_limit_bytes,
                check_stop=check_stop,
                amp=amp,
                channels_last=channels_last,
                info=feature_runtime,
            )

        return cached(
            store=feature_store,
            model=model,
            level=at,
            names=names[: len(parts)],
            extra={"modality": o.modality, "mean": o.mean, "std": o.std, "amp": cuda},
            compute=compute,
        )

    features = frozen_features(level, splits) if level >= 0 else None
    if features is None:
        level = -1
        inputs = [_Inputs(s.inputs, s.labels, -1) for s in splits]
    else:
        inputs = [_Inputs(t, s.labels, level) for t, s in zip(features, splits, strict=True)]
    train_in, val_in = inputs[0], inputs[1]
    test_in = inputs[2] if evaluate_test else None

    def logits_of(inp: _Inputs, idx: torch.Tensor, train: bool) -> torch.Tensor:
        x = to_device(inp.tensor[idx])
        if inp.level >= 0:
            return model.forward_from(x, inp.level)
        x = train_preset(x) if train else eval_preset(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return model(x)

    def pooled(inp: _Inputs) -> torch.Tensor:
        """Pooled features of cached inputs, through the (frozen, eval mode) top blocks."""
        if inp.level == model.pooled_level:
            return inp.tensor
        model.eval()
        out = []
        with torch.inference_mode(), amp:
            for b in torch.arange(len(inp)).split(o.eval_batch_size):
                h = to_device(inp.tensor[b])
                for block in model.blocks[inp.level :]:
                    h = block(h)
                out.append(model.pool(h).float())
        return torch.cat(out)

    def probe_features() -> tuple[torch.Tensor, torch.Tensor]:
        """(train, val) pooled features of the backbone as it is now (frozen)."""
        if level >= 0:
            return pooled(train_in), pooled(val_in)
        parts = [data.train, data.val]
        got = frozen_features(model.pooled_level, parts)
        if got is None:  # pooled vectors over the cache limit: compute them regardless
            got = cache_features(
                model=model,
                splits=[s.inputs for s in parts],
                level=model.pooled_level,
                preset=eval_preset,
                to_device=to_device,
                batch_size=o.eval_batch_size,
                limit_bytes=2**62,
                check_stop=check_stop,
                amp=amp,
                channels_last=channels_last,
            )
            assert got is not None
        return got[0], got[1]

    def predict(inp: _Inputs) -> tuple[torch.Tensor, float]:
        """(the task's outputs, mean plain loss) with the whole model in eval."""
        model.eval()
        preds, loss_sum = [], 0.0
        with torch.inference_mode(), amp:
            for b in _batches(len(inp), o.eval_batch_size):
                logits = logits_of(inp, b, train=False).float()
                y = inp.labels[b].to(device)
                loss_sum += objective.eval_loss(logits, y)
                preds.append(objective.outputs(logits).cpu())
        return torch.cat(preds), loss_sum / max(1, len(inp))

    # ---- the task: loss, outputs, validation score, probe (tasks.py)
    if o.class_weights not in (None, "auto"):
        raise InvalidConfig("class_weights must be null or 'auto'", field="class_weights")
    objective = get_task(o.task).objective(
        classes=data.classes, train_targets=data.train.labels, options=o
    )
    score_name = objective.score_name

    # ---- optimizer, scheduler, and (maybe) the state to resume from
    optimizer = create_optimizer(
        name=o.optimizer,
        param_groups=trainable_param_groups(model, plans[0]),
        lr=plans[0].lr("head"),
        weight_decay=o.weight_decay,
    )
    steps_per_epoch = len(_batches(len(train_in), o.batch_size))
    factor = create_scheduler(name=o.scheduler, total_steps=steps_per_epoch * len(plans))
    # Only groups that train at some point change; the rest is rebuilt identically by the
    # caller on resume, so checkpoints stay small for a linear probe.
    ever = [g.group for g in plans[0].groups if any(p.trainable(g.group) for p in plans)]
    modules = group_modules(model)

    def trainable_state() -> dict[str, torch.Tensor]:
        return _group_state(modules, ever)

    def load_trainable_state(state: dict[str, torch.Tensor]) -> None:
        _load_group_state(modules, ever, state)

    fingerprint = {
        "plans": [p.to_dict() for p in plans],
        "options": asdict(o),
        **(fingerprint or {}),
    }
    path = Path(work_dir) / ckpt.CHECKPOINT_NAME
    state = ckpt.load_checkpoint(path)
    start, step, history = 0, 0, []
    best = {"epoch": 0, "val_score": -math.inf, "val_loss": math.inf, "state": trainable_state()}
    bad_epochs = 0
    if state is not None:
        if state["fingerprint"] != fingerprint:
            raise CheckpointMismatch(f"{path} was written by a different job configuration")
        for plan in plans[: state["epoch"]]:  # re-add groups in the order they joined
            apply_plan(model, plan)
            sync_optimizer(optimizer, model, plan)
        load_trainable_state(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, step, history = state["epoch"], state["step"], state["history"]
        best, bad_epochs = state["best"], state["bad_epochs"]
        ckpt.set_rng_state(state["rng"])
        log.info("resumed from %s after epoch %d", path, start)
    stopped = (
        bool(history)
        and o.early_stopping_patience is not None
        and bad_epochs >= o.early_stopping_patience
    )

    def save(epoch: int) -> None:
        """Checkpoint after `epoch` epochs (0: after the probe)."""
        ckpt.save_checkpoint(
            path,
            {
                "fingerprint": fingerprint,
                "epoch": epoch,
                "step": step,
                "model": trainable_state(),
                "optimizer": optimizer.state_dict(),
                "scheduler": {"name": o.scheduler, "step": step},
                "best": best,
                "bad_epochs": bad_epochs,
                "history": history,
                "rng": ckpt.rng_state(),
                "refit": refit_head,
            },
        )

    # ---- the exact probe: the head at its optimum on the frozen backbone's features
    head_only = all(p.trainable_groups() == ["head"] for p in plans)
    probe_only = o.probe and head_only and level == model.pooled_level
    # Refit: once validation has chosen C, the head is fitted again on train + val with
    # it. Validation metrics stay those of the train-only head (the one it chose); only
    # the test split, never seen, measures the refitted one.
    refit_head = state.get("refit") if state is not None else None
    if o.probe and state is None:
        check_stop()
        t0 = time.perf_counter()
        tx, vx = probe_features()
        fitted = objective.probe(tx, data.train.labels, vx, data.val.labels, seed=o.seed)
        _set_head(model, fitted.weight, fitted.bias)
        if probe_only and o.refit:
            both = objective.probe(
                torch.cat([tx, vx]),
                torch.cat([data.train.labels, data.val.labels]),
                vx,
                data.val.labels,
                seed=o.seed,
                grid=(fitted.C,),
            )
            refit_head = {"weight": both.weight, "bias": both.bias}
        best = {
            "epoch": 0,
            "val_score": fitted.val_score,
            "val_loss": fitted.val_loss,
            "state": trainable_state(),
        }
        report = {
            "epoch": 0,
            "epochs": 0 if probe_only else len(plans),  # probe-only: no epoch follows
            "stage": "probe",
            "train_loss": fitted.objective,
            "val_loss": fitted.val_loss,
            "val_score": fitted.val_score,
            f"val_{score_name}": fitted.val_score,
            "seconds": time.perf_counter() - t0,
            "eta_seconds": None,
            "C": fitted.C,
            "grid": fitted.grid,
            "iterations": fitted.iterations,
            "trainable_params": count_params(model.head),
            "refit": refit_head is not None,
        }
        history.append(report)
        save(0)
        on_epoch(report)

    # ---- epochs
    epoch_seconds = [h["seconds"] for h in history if h.get("stage") != "probe"]
    # A linear head on cached feature vectors is too little work per step to split over
    # threads: the hand-offs cost more than the math (most of all on a shared CPU).
    single = level == model.pooled_level and not cuda
    with _threads(1) if single else contextlib.nullcontext():
        last = len(plans) if stop_after is None else min(len(plans), stop_after)
        for epoch in range(start, 0 if stopped or probe_only else last):
            t0 = time.perf_counter()
            plan = plans[epoch]
            apply_plan(model, plan)
            sync_optimizer(optimizer, model, plan)
            set_train_mode(model, plan, train_bn=o.train_bn)
            order = torch.randperm(
                len(train_in), generator=torch.Generator().manual_seed(o.seed * 7919 + epoch)
            )
            loss_sum, seen = 0.0, 0
            for b in _batches(len(train_in), o.batch_size, order):
                check_stop()
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * factor(step)
                y = to_device(train_in.labels[b])
                with amp:
                    logits = logits_of(train_in, b, train=True)
                loss = objective.loss(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                loss_sum += float(loss.detach()) * len(b)
                seen += len(b)

            train_seconds = time.perf_counter() - t0
            epoch_pred, val_loss = predict(val_in)
            val_score = objective.score(epoch_pred, val_in.labels)
            # Ties in the score (common on small val sets) go to the lower loss.
            if (val_score, -val_loss) > (best["val_score"], -best["val_loss"]):
                best = {
                    "epoch": epoch + 1,
                    "val_score": val_score,
                    "val_loss": val_loss,
                    "state": trainable_state(),
                }
                bad_epochs = 0
            else:
                bad_epochs += 1

            epoch_seconds.append(time.perf_counter() - t0)
            report = _epoch_report(
                epoch=epoch,
                plans=plans,
                model=model,
                train_loss=loss_sum / max(1, seen),
                val_loss=val_loss,
                val_score=val_score,
                score_name=score_name,
                epoch_seconds=epoch_seconds,
            )
            # The training steps alone (no validation), for throughput: len(train) / this.
            report["train_seconds"] = train_seconds
            report["train_samples"] = seen
            stored = feature_runtime.get("runtime", "stored")  # no pass ran: read from disk
            report["runtime"] = (features is not None and stored) or (
                "eager_channels_last" if channels_last else "eager"
            )
            if cached is not None:  # the frozen pass: choosing its runtime, then running it
                report["frozen_pass"] = {k: feature_runtime.get(k) for k in FROZEN_PASS_KEYS}
            history.append(report)
            stopped = (
                o.early_stopping_patience is not None and bad_epochs >= o.early_stopping_patience
            )
            # Checkpoint before reporting: a crash in between repeats a report (same epoch
            # number, the consumer can dedupe) rather than losing an epoch.
            save(epoch + 1)
            on_epoch(report)
            if stopped:
                log.info("early stop after epoch %d (best %d)", epoch + 1, best["epoch"])
                break

    load_trainable_state(best["state"])
    val_pred, _ = predict(val_in)
    extra = objective.finish(val_pred, val_in.labels)  # from the validated head, not a refit
    if refit_head is not None:
        _set_head(model, refit_head["weight"], refit_head["bias"])
    test_pred = predict(test_in)[0] if test_in is not None else None
    return FitResult(
        history=history,
        best_epoch=best["epoch"],
        best_val_score=best["val_score"],
        best_val_loss=best["val_loss"],
        val_pred=val_pred,
        test_pred=test_pred,
        feature_level=level,
        extra=extra,
    )
