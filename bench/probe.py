"""Linear probe through the engine vs. one bare PyTorch forward pass.

Head-only `partial` fine-tuning of EfficientNet-Lite0 on 1,000 digit images for 10
epochs, end to end through `train(...)`, against a single bare forward pass of the same
backbone over the same images. With the frozen-feature cache, the 10 epochs should cost
about one forward pass (target: ratio <= 1.3).

    PYTHONPATH=. python bench/probe.py [--size 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from digits import write_digits  # noqa: E402

from app.training.api import TrainConfig, train  # noqa: E402
from app.training.build import build_model, get_base_model  # noqa: E402
from app.training.data import load_dataset  # noqa: E402
from app.training.presets import EvalPreset  # noqa: E402


def timed(fn) -> tuple[float, float]:  # noqa: ANN001
    """(wall seconds, process CPU seconds) of fn()."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def bare_forward(
    model: torch.nn.Module, images: torch.Tensor, device: str, batch: int = 256
) -> None:
    """The floor: the backbone, already built and loaded, over pre-decoded images."""
    spec = get_base_model("efficientnet_lite0")
    preset = EvalPreset(mean=spec.mean, std=spec.std)
    with torch.inference_mode():
        for chunk in images.split(batch):
            model.forward_features(preset(chunk.to(device)))
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ds = write_digits(root / "ds", per_class={"train": 80, "test": 20}, size=args.size)
        config = TrainConfig(
            strategy="partial",
            trainable_blocks=0,
            epochs=10,
            image_size=args.size,
            early_stopping_patience=None,
            device=args.device,
        )

        runs = iter(range(1000))

        def run() -> float:
            result = train(
                config=config,
                dataset_dir=ds,
                work_dir=root / f"w{next(runs)}",
                cache_dir=root / "cache",
            )
            return result.metrics["accuracy"]

        cold = timed(run)  # decodes the PNGs and fills the decode cache
        data = load_dataset(ds, image_size=args.size, cache_dir=root / "cache")
        every = torch.cat([data.train.images, data.val.images, data.test.images])
        # Alternate the two and keep the best of each: shared CPUs make single timings noisy.
        model = build_model(base_model="efficientnet_lite0", num_classes=10, pretrained=True)
        model.to(args.device).eval()
        bare, warm = [], []
        for _ in range(args.repeats):
            bare.append(timed(lambda: bare_forward(model, every, args.device)))
            warm.append(timed(run))
        acc = run()

    b, w = min(bare), min(warm)
    bc, wc = min(c for _, c in bare), min(c for _, c in warm)
    print(
        f"EfficientNet-Lite0, {len(every)} images at {args.size}px, "
        f"{torch.get_num_threads()} threads, device {args.device}, best of {args.repeats}; "
        f"test accuracy {acc:.3f}\n"
    )
    print("| run | wall s | ratio | CPU s | CPU ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(
        f"| bare PyTorch: one forward pass over all images | {b[0]:.2f} | 1.00 | {bc:.2f} | 1.00 |"
    )
    print(
        f"| train(): partial head-only, 10 epochs, decode cache warm | {w[0]:.2f} | "
        f"{w[0] / b[0]:.2f} | {wc:.2f} | {wc / bc:.2f} |"
    )
    print(
        f"| train(): same, first run (decodes {len(every)} PNGs) | {cold[0]:.2f} | "
        f"{cold[0] / b[0]:.2f} | {cold[1]:.2f} | {cold[1] / bc:.2f} |"
    )


if __name__ == "__main__":
    main()
