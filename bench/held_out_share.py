"""What the service's held-out test split costs a small upload: logistic regression on
the frozen features trained on all of the bench's training rows, against the same trained
on the 80% the service trains on (the upload holds a stratified 20% out as its test
split), over seeded splits; both scored on the bench's own held-out rows. Beside them,
the service's exact probe on the same share, its C chosen by k-fold for each `--folds`
and refitted on the whole share, as a head-only job does.

    .venv/bin/python -m bench.held_out_share [--datasets digits,wordnet] [--seeds 3]
        [--folds 4,5,10]
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np
import torch

from app.training import probe
from bench import quality as q


def service_probe(f_train, y, f_test, *, folds: int, seed: int) -> np.ndarray:
    """Predictions of the service's probe: the share split 85/15 into train and val (the
    default val_fraction), C by `folds`-fold on both, then solved on all of them."""
    keep, held = q.stratified_split(y, 0.15, seed)
    x, yt = torch.from_numpy(f_train).float(), torch.from_numpy(y)
    k = int(y.max()) + 1
    saved, probe.FOLDS = probe.FOLDS, folds
    try:
        p = probe.fit_probe(x[keep], yt[keep], x[held], yt[held], num_classes=k, seed=seed)
    finally:
        probe.FOLDS = saved
    mu = x.mean(0)
    w, b, _ = probe.solve(x - mu, yt, C=p.C, num_classes=k)
    return ((torch.from_numpy(f_test).float() - mu) @ w.T + b).argmax(1).numpy()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="digits,wordnet")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--folds", default="4,5,10", help="the probe's k-fold counts to compare")
    a = ap.parse_args(argv)
    folds = [int(f) for f in a.folds.split(",") if f]
    args = SimpleNamespace(seed=0, fashion_train=1000, fashion_test=1000, fashion_size=224,
                           digits_size=64)  # fmt: skip
    probe_cols = "".join(f" probe {k}-fold, mean |" for k in folds)
    print(f"| dataset | LR on all rows | LR on the service's share, per seed | mean |{probe_cols}")
    print("| --- | ---: | --- | ---: |" + " ---: |" * len(folds))
    for name in a.datasets.split(","):
        data = q.load(name, False, args)
        enc = q.encode(data)
        model = q.build_backbone(data, len(data.classes), enc)
        f_train = q.pooled_features(model, enc.x_train, enc.prep).numpy()
        f_test = q.pooled_features(model, enc.x_test, enc.prep).numpy()
        y = np.asarray(data.y_train)
        pred, _ = q.lr_reference("classification", f_train, y, f_test, 0)
        full = q.accuracy(data.y_test, pred)
        share, ours = [], {k: [] for k in folds}
        for s in range(a.seeds):
            keep, _ = q.stratified_split(y, a.test_fraction, s)
            pred, _ = q.lr_reference("classification", f_train[keep], y[keep], f_test, 0)
            share.append(q.accuracy(data.y_test, pred))
            for k in folds:
                pred = service_probe(f_train[keep], y[keep], f_test, folds=k, seed=s)
                ours[k].append(q.accuracy(data.y_test, pred))
        cols = "".join(f" {np.mean(ours[k]):.3f} |" for k in folds)
        print(f"| {name} | {full:.3f} | {', '.join(f'{v:.3f}' for v in share)} "
              f"| {np.mean(share):.3f} |{cols}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
