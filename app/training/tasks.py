"""Tasks as data: what each `<modality>_<kind>` task means to the engine, in one table.

A task is a modality (image, text, tabular: which loader and which base models) and a
kind (classification, multilabel, regression). The kind supplies everything the loop,
the probe, the metrics, predict and export need to know about the targets:

- classification: target a class index; one logit per class; cross-entropy (class
  weights, label smoothing); val score accuracy; probe multinomial LR (probe.py);
  predict softmax -> label, score, top_k.
- multilabel: target 0/1 per label; one logit per label; BCE (pos_weight from counts
  when class_weights="auto"); val score mAP; probe one LR per label (L-BFGS); per-label
  thresholds tuned on val for F1; predict sigmoid -> labels over thresholds, top_k.
- regression: target a number; one output on standardised targets; MSE or Huber; val
  score R²; probe ridge in closed form (penalty chosen on val); predict the value,
  de-standardised.

`TASKS[name]` gives the Task; `Task.objective(train_targets, options)` the per-job object
the loop asks (fitted on the training split: a regression's mean and std, a multi-label
pos_weight). Nothing outside this module branches on the kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import torch
import torch.nn.functional as F

from app.training import probe as lr_probe
from app.training.errors import DatasetError, InvalidInput
from app.training.evaluate import classification_metrics


class TaskName(StrEnum):
    IMAGE_CLASSIFICATION = "image_classification"
    IMAGE_MULTILABEL = "image_multilabel"
    IMAGE_REGRESSION = "image_regression"
    TEXT_CLASSIFICATION = "text_classification"
    TEXT_MULTILABEL = "text_multilabel"
    TEXT_REGRESSION = "text_regression"
    TABULAR_CLASSIFICATION = "tabular_classification"
    TABULAR_MULTILABEL = "tabular_multilabel"
    TABULAR_REGRESSION = "tabular_regression"


class Modality(StrEnum):
    IMAGE = "image"
    TEXT = "text"
    TABULAR = "tabular"


class Kind(StrEnum):
    CLASSIFICATION = "classification"
    MULTILABEL = "multilabel"
    REGRESSION = "regression"


DEFAULT_SEPARATOR = "|"
RIDGE_GRID = tuple(10.0**e for e in range(-3, 5))  # alpha, as scikit-learn's Ridge names it
MAX_POINTS = 500  # (true, predicted) pairs kept in regression metrics for the report


@dataclass
class Fitted:
    """What a probe returns to the loop (classification's probe.Probe has the same
    fields, `val_score` aside)."""

    weight: torch.Tensor
    bias: torch.Tensor
    C: float
    objective: float
    val_loss: float
    val_score: float
    iterations: int
    grid: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------ per-kind objectives


class Objective:
    """The per-job view of a kind: loss, outputs, score, probe, metrics, artifact."""

    kind: Kind
    score_name: str

    def __init__(self, *, classes: list[str], train_targets: torch.Tensor, options) -> None:
        self.classes = classes
        self.options = options

    @classmethod
    def head_size(cls, classes: list[str]) -> int:
        return len(classes)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def eval_loss(self, logits: torch.Tensor, y: torch.Tensor) -> float:
        """Summed plain loss of a batch (no weights), for the reported val loss."""
        raise NotImplementedError

    def outputs(self, logits: torch.Tensor) -> torch.Tensor:
        """What the model predicts, per sample (class, per-label scores, value)."""
        raise NotImplementedError

    def score(self, outputs: torch.Tensor, y: torch.Tensor) -> float:
        """The validation score early stopping watches (higher is better)."""
        raise NotImplementedError

    def probe(self, tx, ty, vx, vy, *, seed: int, grid=None) -> Fitted:
        raise NotImplementedError

    def finish(self, val_outputs: torch.Tensor, val_y: torch.Tensor) -> dict:
        """What the artifact keeps beyond the weights (fitted on train / val)."""
        return {}

    def metrics(self, outputs: torch.Tensor, y: torch.Tensor, extra: dict) -> dict:
        raise NotImplementedError


class Classification(Objective):
    kind = Kind.CLASSIFICATION
    score_name = "accuracy"

    def __init__(self, *, classes, train_targets, options) -> None:
        super().__init__(classes=classes, train_targets=train_targets, options=options)
        self.weight = None
        if getattr(options, "class_weights", None) == "auto":
            counts = torch.bincount(train_targets, minlength=len(classes)).float()
            self.weight = counts.sum() / (len(counts) * counts.clamp(min=1))
        self.label_smoothing = getattr(options, "label_smoothing", 0.0)

    def loss(self, logits, y):
        w = self.weight.to(logits.device) if self.weight is not None else None
        return F.cross_entropy(logits, y, weight=w, label_smoothing=self.label_smoothing)

    def eval_loss(self, logits, y):
        return float(F.cross_entropy(logits, y, reduction="sum"))

    def outputs(self, logits):
        return logits.argmax(1)

    def score(self, outputs, y):
        return float((outputs.cpu() == y.cpu()).float().mean())

    def probe(self, tx, ty, vx, vy, *, seed, grid=None) -> Fitted:
        kw = {"grid": grid} if grid else {}
        p = lr_probe.fit_probe(
            tx,
            ty,
            vx,
            vy,
            num_classes=len(self.classes),
            weight=self.weight,
            label_smoothing=self.label_smoothing,
            seed=seed,
            **kw,
        )
        return Fitted(
            weight=p.weight,
            bias=p.bias,
            C=p.C,
            objective=p.objective,
            val_loss=p.val_loss,
            val_score=p.val_accuracy,
            iterations=p.iterations,
            grid=[{**g, "val_score": g["val_accuracy"]} for g in p.grid],
        )

    def metrics(self, outputs, y, extra):
        return classification_metrics(y, outputs, self.classes)


class MultiLabel(Objective):
    kind = Kind.MULTILABEL
    score_name = "map"

    def __init__(self, *, classes, train_targets, options) -> None:
        super().__init__(classes=classes, train_targets=train_targets, options=options)
        self.pos_weight = None
        if getattr(options, "class_weights", None) == "auto":
            pos = train_targets.float().sum(0)
            neg = len(train_targets) - pos
            self.pos_weight = (neg / pos.clamp(min=1)).clamp(max=100.0)

    def loss(self, logits, y):
        pw = self.pos_weight.to(logits.device) if self.pos_weight is not None else None
        return F.binary_cross_entropy_with_logits(logits, y.float(), pos_weight=pw)

    def eval_loss(self, logits, y):
        # Per sample: the mean over labels, so the number reads like a BCE.
        return float(F.binary_cross_entropy_with_logits(logits, y.float(), reduction="sum")) / max(
            1, logits.shape[1]
        )

    def outputs(self, logits):
        return torch.sigmoid(logits)

    def score(self, outputs, y):
        return float(np.mean(average_precision(outputs, y)))

    def probe(self, tx, ty, vx, vy, *, seed, grid=None) -> Fitted:
        return fit_multilabel_probe(tx, ty, vx, vy, pos_weight=self.pos_weight, grid=grid)

    def finish(self, val_outputs, val_y):
        return {"thresholds": tune_thresholds(val_outputs, val_y)}

    def metrics(self, outputs, y, extra):
        return multilabel_metrics(outputs, y, self.classes, extra["thresholds"])


class Regression(Objective):
    kind = Kind.REGRESSION
    score_name = "r2"

    def __init__(self, *, classes, train_targets, options) -> None:
        super().__init__(classes=classes, train_targets=train_targets, options=options)
        t = train_targets.double()
        self.mean = float(t.mean())
        sd = float(t.std()) if len(t) > 1 else 1.0
        self.std = sd if sd > 1e-12 else 1.0
        self.huber = getattr(options, "loss", None) == "huber"

    @classmethod
    def head_size(cls, classes: list[str]) -> int:
        return 1

    def _z(self, y: torch.Tensor) -> torch.Tensor:
        return (y.float() - self.mean) / self.std

    def loss(self, logits, y):
        z = self._z(y)
        pred = logits.squeeze(1)
        return F.huber_loss(pred, z) if self.huber else F.mse_loss(pred, z)

    def eval_loss(self, logits, y):
        return float(F.mse_loss(logits.squeeze(1), self._z(y), reduction="sum"))

    def outputs(self, logits):
        return logits.squeeze(1).double() * self.std + self.mean

    def score(self, outputs, y):
        return regression_metrics(outputs, y)["r2"]

    def probe(self, tx, ty, vx, vy, *, seed, grid=None) -> Fitted:
        return fit_ridge(tx, self._z(ty), vx, self._z(vy), grid=grid)

    def finish(self, val_outputs, val_y):
        return {"target": {"mean": self.mean, "std": self.std}}

    def metrics(self, outputs, y, extra):
        return regression_metrics(outputs, y, points=True)


# ------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Task:
    name: TaskName
    modality: Modality
    kind: Kind

    @property
    def objective_class(self) -> type[Objective]:
        return OBJECTIVES[self.kind]

    def objective(self, *, classes: list[str], train_targets: torch.Tensor, options) -> Objective:
        return self.objective_class(classes=classes, train_targets=train_targets, options=options)

    def head_size(self, classes: list[str]) -> int:
        return self.objective_class.head_size(classes)

    @property
    def output(self) -> Output:
        return OUTPUTS[self.kind]

    @property
    def base_task(self) -> str:
        """The base models' task (base models are listed per modality)."""
        return f"{self.modality}_classification"


OBJECTIVES: dict[Kind, type[Objective]] = {
    Kind.CLASSIFICATION: Classification,
    Kind.MULTILABEL: MultiLabel,
    Kind.REGRESSION: Regression,
}

TASKS: dict[str, Task] = {
    t.value: Task(t, Modality(t.value.split("_")[0]), Kind(t.value.split("_", 1)[1]))
    for t in TaskName
}


def get_task(name: str | None) -> Task:
    task = TASKS.get(name or TaskName.IMAGE_CLASSIFICATION)
    if task is None:
        raise DatasetError(f"unknown dataset task {name!r}")
    return task


def task_for(modality: str, kind: str) -> Task:
    return TASKS[f"{modality}_{kind}"]


# ------------------------------------------------------------------ targets from manifests


def encode_targets(kind: Kind, values: list, classes: list[str]) -> tuple[torch.Tensor, np.ndarray]:
    """(targets tensor, labels to stratify splits by) from a manifest's per-sample values:
    a class index (classification), a list of label indices (multi-label) or a number."""
    n = len(values)
    if kind == Kind.CLASSIFICATION:
        labels = np.array([int(v) for v in values], dtype=np.int64)
        if n and (labels.min() < 0 or labels.max() >= len(classes)):
            raise DatasetError("a sample label is outside the class list")
        return torch.from_numpy(labels), labels
    if kind == Kind.MULTILABEL:
        y = torch.zeros(n, len(classes), dtype=torch.float32)
        for i, v in enumerate(values):
            for j in v:
                if not 0 <= int(j) < len(classes):
                    raise DatasetError("a sample label is outside the label list")
                y[i, int(j)] = 1.0
        return y, np.zeros(n, dtype=np.int64)
    y = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if n and not bool(torch.isfinite(y).all()):
        raise DatasetError("a regression target is not a finite number")
    return y.float(), np.zeros(n, dtype=np.int64)


def parse_cell(kind: Kind, cell: str, index: dict[str, int], separator: str, row: int):
    """A CSV label cell as encode_targets takes it (text written by ingestion)."""
    cell = cell.strip()
    if kind == Kind.CLASSIFICATION:
        if cell not in index:
            raise DatasetError(f"row {row}: label {cell!r} is not in the class list")
        return index[cell]
    if kind == Kind.MULTILABEL:
        names = [p.strip() for p in cell.split(separator) if p.strip()] if cell else []
        unknown = [p for p in names if p not in index]
        if unknown:
            raise DatasetError(f"row {row}: labels {unknown} are not in the label list")
        return sorted({index[p] for p in names})
    try:
        return float(cell)
    except ValueError:
        raise DatasetError(f"row {row}: target {cell!r} is not a number") from None


def stratify_classes(kind: Kind, classes: list[str]) -> list[str]:
    """The classes splits are stratified over (one pseudo-class unless classification)."""
    return classes if kind == Kind.CLASSIFICATION else ["all"]


# ------------------------------------------------------------------ probes


def fit_ridge(
    tx: torch.Tensor, tz: torch.Tensor, vx: torch.Tensor, vz: torch.Tensor, *, grid=None
) -> Fitted:
    """Ridge regression in closed form (one SVD, every penalty from it), the penalty
    (`alpha` in ||y - Xw||^2 + alpha ||w||^2, features centred, bias unpenalised) chosen
    by validation MSE; `C` reports 1 / alpha."""
    x = tx.detach().double().cpu()
    z = tz.detach().double().cpu()
    v = vx.detach().double().cpu()
    vz = vz.detach().double().cpu()
    mu, zm = x.mean(0), z.mean()
    xc = x - mu
    u, s, vt = torch.linalg.svd(xc, full_matrices=False)
    uty = u.T @ (z - zm)
    alphas = tuple(1.0 / c for c in grid) if grid else RIDGE_GRID
    scores, best = [], None
    for alpha in alphas:
        w = vt.T @ (s / (s.pow(2) + alpha) * uty)
        b = zm - w @ mu
        pred = v @ w + b
        mse = float((pred - vz).pow(2).mean())
        r2 = _r2(pred, vz)
        scores.append({"C": 1.0 / alpha, "val_loss": mse, "val_score": r2})
        if best is None or mse < best[0]:
            best = (mse, r2, alpha, w, b)
    mse, r2, alpha, w, b = best  # type: ignore[misc]
    resid = xc @ w + zm - z
    objective = float(resid.pow(2).mean() + alpha * w.pow(2).sum() / len(z))
    return Fitted(
        weight=w.float().unsqueeze(0),
        bias=b.float().reshape(1),
        C=1.0 / alpha,
        objective=objective,
        val_loss=mse,
        val_score=r2,
        iterations=1,
        grid=scores,
    )


def fit_multilabel_probe(
    tx: torch.Tensor,
    ty: torch.Tensor,
    vx: torch.Tensor,
    vy: torch.Tensor,
    *,
    pos_weight: torch.Tensor | None = None,
    grid=None,
    max_iter: int = 200,
) -> Fitted:
    """One logistic regression per label (independent problems, solved together by
    full-batch L-BFGS on the summed BCE), C shared across labels and chosen by the
    validation BCE, as probe.py names strengths (lam = 1 / (C * N))."""
    # (Copies: features computed under inference_mode cannot enter autograd.)
    x = tx.detach().float().cpu().clone()
    y = ty.detach().float().cpu().clone()
    v = vx.detach().float().cpu().clone()
    vy = vy.detach().float().cpu().clone()
    mu = x.mean(0)
    sd = x.std(0).clamp(min=1e-6)
    xs, vs = (x - mu) / sd, (v - mu) / sd
    pw = pos_weight.float().cpu() if pos_weight is not None else None
    n, d = xs.shape
    k = y.shape[1]
    w = torch.zeros(k, d, requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    scores, best = [], None
    for C in grid or lr_probe.C_GRID:
        lam = 1.0 / (C * n)
        opt = torch.optim.LBFGS(
            [w, b],
            lr=1.0,
            max_iter=max_iter,
            tolerance_grad=1e-5,
            tolerance_change=1e-10,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def closure(opt=opt, lam=lam) -> torch.Tensor:
            opt.zero_grad()
            logits = xs @ w.T + b
            data = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pw, reduction="sum")
            loss = data / n + 0.5 * lam * w.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
            objective = float(closure().detach())
        iters = int(opt.state[w].get("n_iter", 0))
        with torch.no_grad():
            vl = vs @ w.T + b
            val_loss = float(F.binary_cross_entropy_with_logits(vl, vy))
            val_score = float(np.mean(average_precision(torch.sigmoid(vl), vy)))
        scores.append({"C": C, "val_loss": val_loss, "val_score": val_score})
        if best is None or val_loss < best[0]:
            best = (
                val_loss,
                val_score,
                C,
                w.detach().clone(),
                b.detach().clone(),
                objective,
                iters,
            )
    val_loss, val_score, C, wb, bb, objective, iters = best  # type: ignore[misc]
    weight = wb / sd
    return Fitted(
        weight=weight,
        bias=bb - weight @ mu,
        C=C,
        objective=objective,
        val_loss=val_loss,
        val_score=val_score,
        iterations=iters,
        grid=scores,
    )


# ------------------------------------------------------------------ metrics


def _r2(pred: torch.Tensor, y: torch.Tensor) -> float:
    ss_res = float((y - pred).pow(2).sum())
    ss_tot = float((y - y.mean()).pow(2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0


def regression_metrics(pred: torch.Tensor, y: torch.Tensor, *, points: bool = False) -> dict:
    """rmse, mae, r2 and the residuals' spread (std, 10th/90th percentile); with
    `points`, up to MAX_POINTS (true, predicted) pairs for the report's scatter."""
    p, t = pred.double().cpu().flatten(), y.double().cpu().flatten()
    r = p - t
    out = {
        "rmse": float(r.pow(2).mean().sqrt()) if len(r) else 0.0,
        "mae": float(r.abs().mean()) if len(r) else 0.0,
        "r2": _r2(p, t),
        "residual_std": float(r.std()) if len(r) > 1 else 0.0,
        "residual_p10": float(r.quantile(0.1)) if len(r) else 0.0,
        "residual_p90": float(r.quantile(0.9)) if len(r) else 0.0,
        "count": len(r),
    }
    if points:
        step = max(1, math.ceil(len(t) / MAX_POINTS))
        out["points"] = [[float(a), float(b)] for a, b in zip(t[::step], p[::step], strict=True)]
    return out


def average_precision(scores: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Per-label average precision (scikit-learn's definition; 0 for a label with no
    positive sample)."""
    s, t = scores.double().cpu(), y.double().cpu()
    out = []
    for j in range(s.shape[1]):
        order = torch.argsort(s[:, j], descending=True, stable=True)
        hits = t[order, j]
        pos = float(hits.sum())
        if pos == 0:
            out.append(0.0)
            continue
        tp = hits.cumsum(0)
        precision = tp / torch.arange(1, len(hits) + 1, dtype=torch.float64)
        out.append(float((precision * hits).sum() / pos))
    return out


def tune_thresholds(scores: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Per label, the score threshold (predict >= it) that maximises F1 on (validation)
    `scores`: midway between the last score kept and the next; 0.5 for a label with no
    positive sample."""
    s, t = scores.double().cpu(), y.double().cpu()
    out = []
    for j in range(s.shape[1]):
        pos = float(t[:, j].sum())
        if pos == 0:
            out.append(0.5)
            continue
        vals, order = torch.sort(s[:, j], descending=True, stable=True)
        tp = t[order, j].cumsum(0)
        k = torch.arange(1, len(vals) + 1, dtype=torch.float64)
        f1 = 2 * tp / (k + pos)
        i = int(torch.argmax(f1))
        nxt = float(vals[i + 1]) if i + 1 < len(vals) else 0.0
        out.append(float((vals[i] + nxt) / 2) if float(vals[i]) > nxt else float(vals[i]))
    return out


def multilabel_metrics(
    scores: torch.Tensor, y: torch.Tensor, labels: list[str], thresholds: list[float]
) -> dict:
    """micro_f1, macro_f1, map (mean average precision) and per_label {precision,
    recall, f1, threshold, support, ap}, predictions at the tuned thresholds."""
    s, t = scores.double().cpu(), y.double().cpu()
    pred = (s >= torch.tensor(thresholds, dtype=torch.float64)).double()
    tp, fp, fn = (pred * t).sum(0), (pred * (1 - t)).sum(0), ((1 - pred) * t).sum(0)

    def f1_of(tp, fp, fn):
        d = 2 * tp + fp + fn
        return torch.where(d > 0, 2 * tp / d.clamp(min=1e-12), torch.zeros_like(tp))

    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1e-12), torch.zeros_like(tp))
    recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1e-12), torch.zeros_like(tp))
    f1 = f1_of(tp, fp, fn)
    ap = average_precision(s, t)
    micro = f1_of(tp.sum(), fp.sum(), fn.sum())
    return {
        "micro_f1": float(micro),
        "macro_f1": float(f1.mean()),
        "map": float(np.mean(ap)),
        "subset_accuracy": float((pred == t).all(1).double().mean()) if len(t) else 0.0,
        "per_label": {
            label: {
                "precision": float(precision[j]),
                "recall": float(recall[j]),
                "f1": float(f1[j]),
                "threshold": float(thresholds[j]),
                "support": int(t[:, j].sum()),
                "ap": ap[j],
            }
            for j, label in enumerate(labels)
        },
    }


# ------------------------------------------------------------------ predict and export


def _check_finite(outputs: torch.Tensor) -> None:
    if not bool(torch.isfinite(outputs).all()):  # never a NaN score in a response
        raise InvalidInput("the model's output is not finite for these inputs")


def _ranked(outputs: torch.Tensor, classes: list[str], top_k: int) -> list[list[dict]]:
    k = max(1, min(top_k, len(classes)))
    scores, idx = outputs.topk(k, dim=1)
    return [
        [{"label": classes[i], "score": s} for s, i in zip(s_row, i_row, strict=True)]
        for s_row, i_row in zip(scores.tolist(), idx.tolist(), strict=True)
    ]


class Softmax(torch.nn.Module):
    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(1)


class Sigmoid(torch.nn.Module):
    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)


class Destandardise(torch.nn.Module):
    def __init__(self, mean: float, std: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits * self.std + self.mean


def _classification_present(outputs, config, top_k):
    _check_finite(outputs)
    return [
        {"label": r[0]["label"], "score": r[0]["score"], "top_k": r}
        for r in _ranked(outputs, config["classes"], top_k)
    ]


def _multilabel_present(outputs, config, top_k):
    _check_finite(outputs)
    classes = config["classes"]
    thresholds = config.get("thresholds") or [0.5] * len(classes)
    return [
        {
            "labels": [c for c, p, th in zip(classes, row, thresholds, strict=True) if p >= th],
            "top_k": ranked,
        }
        for row, ranked in zip(outputs.tolist(), _ranked(outputs, classes, top_k), strict=True)
    ]


def _regression_present(outputs, config, top_k):
    _check_finite(outputs)
    return [{"value": float(v)} for v in outputs[:, 0].tolist()]


def _regression_layer(config: dict) -> torch.nn.Module:
    target = config.get("target") or {"mean": 0.0, "std": 1.0}
    return Destandardise(target["mean"], target["std"])


@dataclass(frozen=True)
class Output:
    """A kind's predict and export output: the layer after the logits (also in the
    exported graph), its name in ONNX, and the response objects built from it."""

    layer: object  # config -> nn.Module
    name: str
    present: object  # (outputs (N, head), config, top_k) -> [dict]


OUTPUTS: dict[Kind, Output] = {
    Kind.CLASSIFICATION: Output(lambda c: Softmax(), "probabilities", _classification_present),
    Kind.MULTILABEL: Output(lambda c: Sigmoid(), "scores", _multilabel_present),
    Kind.REGRESSION: Output(_regression_layer, "values", _regression_present),
}
