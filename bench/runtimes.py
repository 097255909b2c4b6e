"""The runtime table: img/s of one model's eval forward pass per runtime, per size/batch.

    .venv/bin/python -m bench.runtimes [--model efficientnet_lite0] [--sizes 64,224]
                                       [--batches 32,1] [--seconds 3]

Runtimes (app/training/runtime.py): eager NCHW, eager channels_last, a frozen TorchScript
graph, ONNX Runtime (CPU provider, torch.get_num_threads() intra-op threads). Each cell
is the best of repeated timed calls within `--seconds` (a shared machine drifts: compare
within one run). Also prints what `runtime.prepare` chooses for each size, and the max
difference from eager. Writes bench/results/runtimes.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from app.training import runtime
from app.training.build import build_model

ORDER = (runtime.EAGER, runtime.EAGER_CL, runtime.TORCHSCRIPT, runtime.ONNX)


def throughputs(fns: dict, x: torch.Tensor, seconds: float) -> dict[str, float]:
    """Images/s per runtime: the runtimes take turns, one timed call each per round, for
    about `seconds` per runtime (drift on a shared machine hits them all alike); the
    median per runtime after a warm-up call."""
    times: dict[str, list[float]] = {n: [] for n in fns}
    with torch.inference_mode():
        for fn in fns.values():
            fn(x)
        end = time.perf_counter() + seconds * len(fns)
        while time.perf_counter() < end or min(map(len, times.values())) < 3:
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - t0)
    return {n: len(x) / statistics.median(t) for n, t in times.items()}


def table(model_name: str, sizes, batches, seconds: float, cache_dir: Path) -> list[dict]:
    model = build_model(base_model=model_name, num_classes=10, pretrained=True).eval()
    rows = []
    for size in sizes:
        example = torch.rand(2, 3, size, size)
        fns = {}
        for name in ORDER:
            try:
                fns[name] = runtime._build(name, model, example, cache_dir, torch.get_num_threads())
            except Exception as exc:  # noqa: BLE001
                print(f"  {name}: unavailable ({exc})")
        for batch in batches:
            x = torch.rand(batch, 3, size, size)
            with torch.inference_mode():
                ref = model(x)
            row = {"size": size, "batch": batch}
            for name, ips in throughputs(fns, x, seconds).items():
                with torch.inference_mode():
                    diff = runtime.max_diff(fns[name](x), ref)
                row[name] = round(ips, 1)
                row[f"{name}_diff"] = float(f"{diff:.1e}")
            rows.append(row)
        trial = torch.rand(8, 3, size, size)
        chosen = runtime.prepare(
            model,
            example=example,
            check=torch.rand(3, 3, size, size),
            trial=trial,
            cache_dir=cache_dir / "choice",
        )
        rows[-1]["chosen"] = chosen.name
        print(f"size {size}: runtime.prepare chooses {chosen.name} {chosen.info}")
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--sizes", default="64,224")
    p.add_argument("--batches", default="32,1")
    p.add_argument("--seconds", type=float, default=3.0)
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    batches = [int(b) for b in a.batches.split(",")]
    print(f"{a.model}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = table(a.model, sizes, batches, a.seconds, Path(tmp))
    names = [n for n in ORDER if n in rows[0]]
    print("\n| size | batch | " + " | ".join(names) + " | fastest / eager |")
    print("| ---: | ---: | " + " | ".join("---:" for _ in names) + " | ---: |")
    for r in rows:
        best = max(r[n] for n in names)
        cells = " | ".join(f"{r[n]:.1f}" for n in names)
        print(f"| {r['size']} | {r['batch']} | {cells} | {best / r[runtime.EAGER]:.2f} |")
    print(
        "max |diff| vs eager (relative to scale):",
        {f"{r['size']}/{r['batch']}": {n: r[f"{n}_diff"] for n in names} for r in rows},
    )
    out = Path(__file__).parent / "results" / "runtimes.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps({"model": a.model, "threads": torch.get_num_threads(), "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()
