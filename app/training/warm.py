"""What a worker does once, at start, so its first job does not pay for it.

torch imports `torch._dynamo` the first time any `torch.optim` optimizer is built
(measured 3.9 s on this 2-core machine: every job's probe builds an L-BFGS), and ONNX
Runtime and the ONNX exporter load on a job's first frozen pass. A worker process lives
for many jobs, so paying this at start, beside its connection to the broker, takes it
off the first job's clock.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


def warm_up() -> float:
    """Import and initialise what the first job would; the seconds it took."""
    t0 = time.perf_counter()
    import torch

    torch.optim.LBFGS([torch.zeros(1, requires_grad=True)])  # imports torch._dynamo
    try:
        import onnxruntime  # noqa: F401
        import torch.onnx  # noqa: F401
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
