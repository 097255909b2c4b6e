"""What transfer buys on a tiny dataset: ImageNet-pretrained EfficientNet-Lite0 vs the
same architecture from random init (`pretrained=False`), 10 digit images per class,
accuracy on a held-out test split of 30 per class.

    PYTHONPATH=. python bench/transfer.py [--size 64] [--epochs 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from digits import write_digits  # noqa: E402

from app.training.api import TrainConfig, train  # noqa: E402

RUNS = [
    # (strategy, trainable_blocks, learning_rate)
    ("partial", 0, 3e-3),  # linear probe
    ("partial", 2, 1e-3),
    ("progressive", 0, 1e-3),
    ("full", 0, 3e-4),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ds = write_digits(root / "ds", per_class={"train": 10, "test": 30}, size=args.size)
        for strategy, blocks, lr in RUNS:
            accs = []
            for pretrained in (True, False):
                config = TrainConfig(
                    strategy=strategy,
                    trainable_blocks=blocks,
                    learning_rate=lr,
                    epochs=args.epochs,
                    image_size=args.size,
                    pretrained=pretrained,
                    batch_size=16,
                    early_stopping_patience=None,
                    device="cpu",
                )
                t0 = time.perf_counter()
                result = train(
                    config=config,
                    dataset_dir=ds,
                    cache_dir=root / "cache",
                    work_dir=root / f"{strategy}-{blocks}-{pretrained}",
                )
                accs.append(
                    (
                        result.metrics["accuracy"],
                        result.metrics["macro_f1"],
                        time.perf_counter() - t0,
                    )
                )
            rows.append((strategy, blocks, lr, accs))
    print(
        f"EfficientNet-Lite0 on digits, 10 train images per class (8 train + 2 val), "
        f"300 test images, {args.size}px, {args.epochs} epochs, best val epoch kept\n"
    )
    print(
        "| strategy | trainable_blocks | lr | pretrained acc (F1) | scratch acc (F1) | "
        "gain | seconds (pre / scratch) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for strategy, blocks, lr, ((pa, pf, ps), (sa, sf, ss)) in rows:
        print(
            f"| {strategy} | {blocks} | {lr:g} | {pa:.3f} ({pf:.3f}) | {sa:.3f} ({sf:.3f}) "
            f"| {pa - sa:+.3f} | {ps:.1f} / {ss:.1f} |"
        )


if __name__ == "__main__":
    main()
