"""Our torch metrics agree with scikit-learn's (used only here, in tests)."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from app.training.evaluate import classification_metrics


def test_metrics_match_sklearn() -> None:
    g = torch.Generator().manual_seed(0)
    y_true = torch.randint(0, 4, (200,), generator=g)
    y_pred = torch.where(
        torch.rand(200, generator=g) < 0.6, y_true, torch.randint(0, 4, (200,), generator=g)
    )
    y_pred[y_pred == 3] = 2  # class 3 never predicted: precision 0/0 -> 0
    classes = ["a", "b", "c", "d"]
    m = classification_metrics(y_true, y_pred, classes)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=range(4), zero_division=0)
    assert m["accuracy"] == pytest.approx(float((y_true == y_pred).float().mean()))
    assert m["macro_f1"] == pytest.approx(
        f1_score(y_true, y_pred, average="macro", zero_division=0)
    )
    for i, c in enumerate(classes):
        assert m["per_class"][c]["precision"] == pytest.approx(p[i])
        assert m["per_class"][c]["recall"] == pytest.approx(r[i])
        assert m["per_class"][c]["f1"] == pytest.approx(f[i])
        assert m["per_class"][c]["support"] == s[i]
    assert m["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=range(4)).tolist()
