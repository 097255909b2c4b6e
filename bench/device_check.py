"""CUDA smoke check for the engine (not run in CI: needs a GPU).

Runs the code paths only a GPU takes: bf16 autocast, channels_last, pinned host memory
with non_blocking copies, features cached on the device, augmentation on device tensors,
and a Predictor on cuda. Prints one line per check and exits non-zero on a failure.

    PYTHONPATH=. python bench/device_check.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from digits import write_digits  # noqa: E402

from app.training.api import TrainConfig, train  # noqa: E402
from app.training.inference import Predictor, decode_image  # noqa: E402

CHECKS = [
    ("partial head-only (feature cache on device)", {"strategy": "partial"}),
    ("partial 2 blocks, augment", {"strategy": "partial", "trainable_blocks": 2, "augment": True}),
    ("full", {"strategy": "full", "learning_rate": 1e-3}),
    ("progressive", {"strategy": "progressive"}),
]


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ds = write_digits(root / "ds", per_class={"train": 30, "test": 10}, size=64)
        for name, extra in CHECKS:
            config = TrainConfig(epochs=4, image_size=64, device="cuda", **extra)
            t0 = time.perf_counter()
            try:
                result = train(
                    config=config, dataset_dir=ds, work_dir=root / name, cache_dir=root / "cache"
                )
                acc = result.metrics["accuracy"]
                ok = acc > 0.5
                print(
                    f"{'ok ' if ok else 'LOW'} {name}: test accuracy {acc:.3f}, "
                    f"{time.perf_counter() - t0:.1f}s"
                )
                failed += not ok
            except Exception as e:  # report every check, then fail
                print(f"ERR {name}: {type(e).__name__}: {e}")
                failed += 1
        predictor = Predictor.load(root / CHECKS[0][0] / "model", device="cuda")
        image = decode_image((ds / "files" / "000000.png").read_bytes())
        print("ok  predictor on cuda:", predictor.predict_images([image], top_k=2)[0])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
