"""The exact probe reaches scikit-learn's optimum, respects class weights and label
smoothing, and picks its L2 strength on held-out data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from app.training import probe


def _blobs(n: int, d: int, k: int, seed: int, spread: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g, dtype=torch.float64)
    # Uneven classes, features neither centred nor unit scale (as pooled features are).
    y = torch.multinomial(torch.linspace(1, 3, k, dtype=torch.float64), n, True, generator=g)
    x = centers[y] + spread * torch.randn(n, d, generator=g, dtype=torch.float64)
    x = x * torch.linspace(0.2, 5, d, dtype=torch.float64) + 3.0
    return x, y


def _objective(x, y, w, b, C, weight=None) -> float:
    lam = probe._lam(C, y, weight)
    return float(probe._objective(x, y, w, b, lam, weight, 0.0))


@pytest.mark.parametrize(("C", "class_weight"), [(0.1, None), (1.0, None), (1.0, "balanced")])
def test_reaches_the_loss_of_sklearn_at_the_same_C(C, class_weight):
    x, y = _blobs(400, 24, 4, seed=0, spread=2.0)
    sk = LogisticRegression(C=C, tol=1e-10, max_iter=10_000, class_weight=class_weight)
    sk.fit(x.numpy(), y.numpy())
    weight = None
    if class_weight == "balanced":  # the loop's class_weights="auto", sklearn's formula
        counts = torch.bincount(y).double()
        weight = counts.sum() / (len(counts) * counts)
    mu = x.mean(0)
    w, b, _ = probe.solve(x - mu, y, num_classes=4, C=C, weight=weight, tol=1e-9, max_iter=500)
    b = b - w @ mu
    ours = _objective(x, y, w, b, C, weight)
    theirs = _objective(
        x, y, torch.from_numpy(sk.coef_), torch.from_numpy(sk.intercept_), C, weight
    )
    assert abs(ours - theirs) <= 1e-4, (ours, theirs)
    assert ours <= theirs + 1e-6  # not a worse optimum
    agree = (torch.from_numpy(sk.predict(x.numpy())) == (x @ w.T + b).argmax(1)).double().mean()
    assert agree >= 0.99


def test_the_written_out_gradient_is_the_loop_losses_gradient():
    """Class weights + label smoothing: the solver's gradient equals autograd's of the
    loop's F.cross_entropy objective, so the probe minimises what the loop trains."""
    x, y = _blobs(60, 5, 3, seed=1)
    x = x - x.mean(0)
    weight = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    w = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    lam = probe._lam(0.3, y, weight)
    loss = probe._objective(x, y, w, b, lam, weight, 0.2)
    loss.backward()
    # One evaluation of the solver's closure at the same point: max_iter=0 is not allowed,
    # so take the gradient L-BFGS would see by running the formula directly.
    wq, sq, norm = probe._targets(y, 3, weight, 0.2, torch.float64)
    logp = torch.log_softmax(x @ w.detach().T + b.detach(), 1)
    g = (sq.unsqueeze(1) * logp.exp() - wq) / norm
    torch.testing.assert_close(g.T @ x + lam * w.detach(), w.grad)
    torch.testing.assert_close(g.sum(0), b.grad)
    torch.testing.assert_close(
        -(wq * logp).sum() / norm + 0.5 * lam * w.detach().pow(2).sum(), loss.detach()
    )


def test_C_is_chosen_on_validation_and_beats_a_bad_fixed_C(monkeypatch):
    monkeypatch.setattr(probe, "KFOLD_MAX_ROWS", 500)  # 600 rows: the validation split
    x, y = _blobs(600, 40, 5, seed=2, spread=4.0)
    tx, ty, vx, vy = x[:400], y[:400], x[400:], y[400:]
    fit = probe.fit_probe(tx, ty, vx, vy, num_classes=5)
    assert fit.C in probe.C_GRID
    tried = {s["C"]: (s["val_accuracy"], -s["val_loss"]) for s in fit.grid}
    assert len(tried) >= 3 and fit.C == max(tried, key=tried.get)
    weak = probe.fit_probe(tx, ty, vx, vy, num_classes=5, grid=(probe.C_GRID[0],))
    assert (fit.val_accuracy, -fit.val_loss) >= (weak.val_accuracy, -weak.val_loss)
    # The returned head is in the original feature space.
    logits = vx @ fit.weight.T + fit.bias
    acc = float((logits.argmax(1) == vy).double().mean())
    assert acc == pytest.approx(fit.val_accuracy)


def test_a_small_upload_chooses_C_by_k_fold_on_all_of_train_and_val():
    # 200 validation rows would do for a holdout, but 600 rows in all are few enough
    # that k-fold over all of them is cheap and far less noisy.
    x, y = _blobs(600, 40, 5, seed=2, spread=4.0)
    fit = probe.fit_probe(x[:400], y[:400], x[400:], y[400:], num_classes=5)
    assert len(fit.grid) >= 3
    assert all(
        s["val_accuracy"] * 600 == pytest.approx(round(s["val_accuracy"] * 600)) for s in fit.grid
    )
    assert any(  # not a multiple of 1/200: the scores are not the validation split's
        s["val_accuracy"] * 200 != pytest.approx(round(s["val_accuracy"] * 200)) for s in fit.grid
    )


def test_a_tiny_validation_split_chooses_C_by_k_fold():
    x, y = _blobs(120, 10, 3, seed=3, spread=3.0)
    fit = probe.fit_probe(x[:110], y[:110], x[110:], y[110:], num_classes=3)
    assert len(fit.grid) >= 3
    # k-fold scores cover train + val, not only the 10 validation samples.
    assert all(
        s["val_accuracy"] * 120 == pytest.approx(round(s["val_accuracy"] * 120)) for s in fit.grid
    )
    assert np.isfinite(fit.objective)


def test_fewer_rows_than_features_is_solved_in_their_span_to_sklearns_optimum():
    # 60 rows, 200 features: fit_probe works in the rows' own basis (_row_space). The
    # weights it gives back, in the features as they are, reach scikit-learn's objective
    # at the C it chose, and a solve of the same problem in all 200 features.
    x, y = _blobs(60, 200, 3, seed=5, spread=3.0)
    fit = probe.fit_probe(x[:50], y[:50], x[50:], y[50:], num_classes=3)
    xt, yt = x[:50], y[:50]
    scores, basis = probe._row_space(xt - xt.mean(0))
    assert basis is not None and basis.shape[0] <= 50
    assert torch.allclose(basis @ basis.T, torch.eye(basis.shape[0], dtype=x.dtype), atol=1e-8)
    sk = LogisticRegression(C=fit.C, tol=1e-10, max_iter=10_000).fit(xt.numpy(), yt.numpy())
    ours = _objective(xt, yt, fit.weight, fit.bias, fit.C)
    theirs = _objective(xt, yt, torch.from_numpy(sk.coef_), torch.from_numpy(sk.intercept_), fit.C)
    mu = xt.mean(0)
    w, b, _ = probe.solve(xt - mu, yt, num_classes=3, C=fit.C, tol=1e-9, max_iter=2000)
    direct = _objective(xt, yt, w, b - w @ mu, fit.C)
    assert abs(ours - theirs) <= 1e-4, (ours, theirs)
    assert abs(ours - direct) <= 1e-4, (ours, direct)
    # Nothing of the weights lies outside the rows' span: the penalty is not paid twice.
    outside = fit.weight - (fit.weight @ basis.T) @ basis
    assert float(outside.abs().max()) <= 1e-6 * float(fit.weight.abs().max())
