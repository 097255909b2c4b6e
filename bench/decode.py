"""Decode + resize of JPEG uploads at the model's size, with and without PIL `draft()`.

    .venv/bin/python -m bench.decode [--n 1000] [--size 224] [--plain 100]

Real uploads are JPEGs of 0.3-12 Mpx. The bench makes 24 distinct JPEGs from
scikit-learn's two sample photos, upscaled to sizes spread over that range (quality 90),
then decodes `--n` of them in turn the way predict does (inference.decode_image with the
model's size, then pil_to_uint8), and `--plain` of them without draft for comparison.
Reports images/s and Mpx/s, and how that compares with the backbone's throughput from
bench/runtimes.py (decoding runs in the request, never in the batcher thread that runs
the backbone, so it only has to keep up with it).
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image

from app.training.inference import decode_image
from app.training.presets import pil_to_uint8


def sample_jpegs(count: int = 24, seed: int = 0) -> list[bytes]:
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(seed)
    out = []
    for i, mpx in enumerate(np.linspace(0.3, 12, count)):
        src = photos[i % len(photos)]
        aspect = src.width / src.height * rng.uniform(0.8, 1.25)
        h = int((mpx * 1e6 / aspect) ** 0.5)
        w = int(h * aspect)
        buf = io.BytesIO()
        src.resize((w, h), Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def run(blobs: list[bytes], n: int, size: int, draft: bool) -> tuple[float, float]:
    """(images/s, decoded megapixels of the originals per second, CPU ms per image)."""
    pixels = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        data = blobs[i % len(blobs)]
        img = decode_image(data, size if draft else None)
        pil_to_uint8(img, size)
        with Image.open(io.BytesIO(data)) as header:
            pixels += header.width * header.height
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return n / seconds, pixels / 1e6 / seconds, cpu / n * 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--plain", type=int, default=100)
    p.add_argument("--size", type=int, default=224)
    a = p.parse_args()
    blobs = sample_jpegs()
    mb = sum(map(len, blobs)) / len(blobs) / 1e6
    print(f"{len(blobs)} JPEGs, 0.3-12 Mpx, mean {mb:.1f} MB; decode + resize to {a.size} px")
    ips, mpxs, ms = run(blobs, a.n, a.size, draft=True)
    print(
        f"draft():  {a.n} images in {a.n / ips:.1f} s: {ips:.1f} img/s ({mpxs:.0f} Mpx/s), "
        f"{ms:.1f} ms CPU per image (one thread)"
    )
    if a.plain:
        pips, pmpxs, pms = run(blobs, a.plain, a.size, draft=False)
        print(
            f"no draft: {a.plain} images: {pips:.1f} img/s ({pmpxs:.0f} Mpx/s), "
            f"{pms:.1f} ms CPU per image; draft is {pms / ms:.1f}x less CPU"
        )


if __name__ == "__main__":
    main()
