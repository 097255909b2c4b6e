"""Time the exact probe (app/training/probe.py) on 10,000 x 1,280 features, 10 classes.

    python -m bench.exact_probe [--n 10000] [--d 1280] [--k 10] [--repeat 3]

Features are synthetic but shaped like pooled CNN features (non-negative, class-shifted);
a warm-up fit runs first (the first torch optimizer a process makes imports
torch._dynamo, about 2 s once per process). Prints the median of `repeat` runs of the
whole `fit_probe` (C grid on validation + final fit) and of one final fit alone.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from app.training import probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--d", type=int, default=1280)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    n_val = a.n // 5
    y = torch.randint(0, a.k, (a.n + n_val,), generator=g)
    centers = 0.15 * torch.randn(a.k, a.d, generator=g)
    x = torch.relu(centers[y] + torch.randn(a.n + n_val, a.d, generator=g))
    tx, ty, vx, vy = x[: a.n], y[: a.n], x[a.n :], y[a.n :]
    probe.fit_probe(tx[:500], ty[:500], vx[:100], vy[:100], num_classes=a.k)  # warm-up
    whole, final = [], []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        fitted = probe.fit_probe(tx, ty, vx, vy, num_classes=a.k)
        whole.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        probe.solve(tx - tx.mean(0), ty, num_classes=a.k, C=fitted.C)
        final.append(time.perf_counter() - t0)
    print(
        f"fit_probe {a.n} x {a.d}, {a.k} classes: median {statistics.median(whole):.3f} s "
        f"(C grid on {min(a.n, probe.GRID_ROWS)} rows + final fit); one final fit from "
        f"zero: {statistics.median(final):.3f} s; chose C={fitted.C}, "
        f"val accuracy {fitted.val_accuracy:.4f}; torch threads inside: 1"
    )


if __name__ == "__main__":
    main()
