"""CUDA smoke check and runtime table for the engine (not run in CI: needs a GPU).

Runs the code paths only a GPU takes: device selection (`auto` -> cuda:N), bf16
autocast, channels_last, pinned host memory with non_blocking copies, features cached on
the device, augmentation on device tensors, and a Predictor on cuda (bf16, channels_last,
through runtime.prepare). Then the CUDA runtime table for EfficientNet-Lite0 at 64 and
224 px, batch 32 and 1: eager fp32 NCHW, eager bf16 channels_last, torch.compile of the
latter; and predict throughput (Predictor.predict_tensor, batch 16) against the bare
bf16 channels_last model. Prints one line per check and exits non-zero on a failure.

    PYTHONPATH=. python bench/device_check.py      # ~2-4 minutes on one GPU
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
from app.training.build import build_model  # noqa: E402
from app.training.inference import Predictor, decode_image  # noqa: E402
from app.training.loop import resolve_device  # noqa: E402
from app.training.presets import IMAGENET_MEAN, IMAGENET_STD, EvalPreset  # noqa: E402

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
        predictor.accelerate(root / "runtime")
        image = decode_image((ds / "files" / "000000.png").read_bytes())
        print(
            f"ok  predictor on cuda ({predictor.runtime}):",
            predictor.predict_images([image], top_k=2)[0],
        )
    print("device auto ->", resolve_device("auto"), torch.cuda.get_device_name())
    failed += runtime_table()
    return 1 if failed else 0


def _ips(fn, x: torch.Tensor, reps: int = 20) -> float:
    with torch.inference_mode():
        for _ in range(3):
            fn(x)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn(x)
        torch.cuda.synchronize()
    return len(x) * reps / (time.perf_counter() - t0)


def runtime_table() -> int:
    """img/s per CUDA runtime, and predict against the bare model; returns failures."""
    model = build_model(base_model="efficientnet_lite0", num_classes=10, pretrained=True)
    model = model.cuda().eval()
    cl = build_model(base_model="efficientnet_lite0", num_classes=10, pretrained=True)
    cl = cl.cuda().eval().to(memory_format=torch.channels_last)

    def bf16_cl(x):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return cl(x.contiguous(memory_format=torch.channels_last))

    try:
        compiled = torch.compile(bf16_cl)
    except Exception as e:  # noqa: BLE001
        print(f"ERR torch.compile: {e}")
        compiled = None
    print("| size | batch | eager fp32 NCHW | eager bf16 channels_last | torch.compile |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for size in (64, 224):
        for batch in (32, 1):
            x = torch.rand(batch, 3, size, size, device="cuda")
            row = [_ips(model, x), _ips(bf16_cl, x)]
            try:
                row.append(_ips(compiled, x) if compiled else float("nan"))
            except Exception as e:  # noqa: BLE001
                print(f"ERR torch.compile at {size}/{batch}: {e}")
                row.append(float("nan"))
            print(f"| {size} | {batch} | " + " | ".join(f"{v:.0f}" for v in row) + " |")
    failed = 0
    for size in (64, 224):
        predictor = Predictor(
            model=build_model(base_model="efficientnet_lite0", num_classes=10, pretrained=True),
            classes=[str(i) for i in range(10)],
            image_size=size,
            preset=EvalPreset(mean=IMAGENET_MEAN, std=IMAGENET_STD),
            device=torch.device("cuda"),
        )
        predictor.model.cuda().eval()
        predictor.accelerate()
        u8 = torch.randint(0, 256, (16, 3, size, size), dtype=torch.uint8)
        served = _ips(predictor.predict_tensor, u8)
        bare = _ips(bf16_cl, torch.rand(16, 3, size, size, device="cuda"))
        ok = served >= 0.7 * bare
        failed += not ok
        print(
            f"{'ok ' if ok else 'LOW'} predict {size}px batch 16 ({predictor.runtime}): "
            f"{served:.0f} img/s vs bare bf16 channels_last {bare:.0f} ({served / bare:.2f})"
        )
    return failed


if __name__ == "__main__":
    sys.exit(main())
