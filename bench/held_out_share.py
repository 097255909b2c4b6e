"""What the service's held-out test split costs a small upload: logistic regression on
the frozen features trained on all of the bench's training rows, against the same trained
on the 80% the service trains on (the upload holds a stratified 20% out as its test
split), over seeded splits; both scored on the bench's own held-out rows.

    .venv/bin/python -m bench.held_out_share [--datasets digits,wordnet] [--seeds 3]
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np

from bench import quality as q


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="digits,wordnet")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    a = ap.parse_args(argv)
    args = SimpleNamespace(seed=0, fashion_train=1000, fashion_test=1000, fashion_size=224,
                           digits_size=64)  # fmt: skip
    print("| dataset | LR on all rows | LR on the service's share, per seed | mean |")
    print("| --- | ---: | --- | ---: |")
    for name in a.datasets.split(","):
        data = q.load(name, False, args)
        enc = q.encode(data)
        model = q.build_backbone(data, len(data.classes), enc)
        f_train = q.pooled_features(model, enc.x_train, enc.prep).numpy()
        f_test = q.pooled_features(model, enc.x_test, enc.prep).numpy()
        y = np.asarray(data.y_train)
        pred, _ = q.lr_reference("classification", f_train, y, f_test, 0)
        full = q.accuracy(data.y_test, pred)
        share = []
        for s in range(a.seeds):
            keep, _ = q.stratified_split(y, a.test_fraction, s)
            pred, _ = q.lr_reference("classification", f_train[keep], y[keep], f_test, 0)
            share.append(q.accuracy(data.y_test, pred))
        print(f"| {name} | {full:.3f} | {', '.join(f'{v:.3f}' for v in share)} "
              f"| {np.mean(share):.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
