"""Classification metrics with torch only (no scikit-learn at runtime)."""

from __future__ import annotations

import torch


def classification_metrics(y_true: torch.Tensor, y_pred: torch.Tensor, classes: list[str]) -> dict:
    """accuracy, macro_f1, per_class {label: {precision, recall, f1, support}},
    confusion_matrix (rows = true class, columns = predicted), as plain Python types."""
    k = len(classes)
    y_true = y_true.long().cpu()
    y_pred = y_pred.long().cpu()
    cm = torch.bincount(y_true * k + y_pred, minlength=k * k).view(k, k)
    tp = cm.diag().double()
    predicted = cm.sum(0).double()
    support = cm.sum(1).double()
    # 0/0 counts as 0, as scikit-learn's zero_division=0 does.
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(
        denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp)
    )
    total = int(support.sum())
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1.mean()),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
    }
