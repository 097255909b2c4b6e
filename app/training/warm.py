"""What a worker does once, at start, so its first job does not pay for it.

torch imports `torch._dynamo` the first time any `torch.optim` optimizer is built
(measured 3.9 s on this 2-core machine: every job's probe builds an L-BFGS), and ONNX
Runtime and the ONNX exporter load on a job's first frozen pass. The exporter's first
call also imports the `onnx` package and its own internals, which `import torch.onnx`
does not: 0.87 s for a first export of one convolution, 7 ms for the next one (the
digits bench's first default job spent 2.2 s in its export, 1.6 s of them importing).
A worker process lives for many jobs, so paying this at start, beside its connection
to the broker, takes it off the first job's clock.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


def _export_once() -> None:
    """One ONNX export of a one-convolution model, as runtime.export_onnx does it, to a
    buffer (what the first export would load, loaded now)."""
    import tempfile
    from pathlib import Path

    import torch

    from app.training.runtime import export_onnx

    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(module, torch.zeros(1, 3, 8, 8), Path(tmp) / "warm.onnx")


def warm_up() -> float:
    """Import and initialise what the first job would; the seconds it took."""
    t0 = time.perf_counter()
    import torch

    torch.optim.LBFGS([torch.zeros(1, requires_grad=True)])  # imports torch._dynamo
    try:
        import onnxruntime  # noqa: F401
        import torch.onnx  # noqa: F401

        _export_once()
    except ImportError:  # the runtime is optional: frozen passes then run eager
        pass
    seconds = time.perf_counter() - t0
    log.info("engine warmed up in %.1f s", seconds)
    return seconds


def warm_up_in_background() -> threading.Thread:
    """warm_up() on a daemon thread. A job that starts meanwhile waits on the same
    imports (Python's import lock) rather than doing them twice."""
    thread = threading.Thread(target=warm_up, name="engine-warm-up", daemon=True)
    thread.start()
    return thread
