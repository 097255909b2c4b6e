"""The worker's warm-up takes the first job's one-time imports off its clock."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO

PROGRAM = """
import json, sys, time
import torch
before = "torch._dynamo" in sys.modules
from app.training.warm import warm_up_in_background
warm_up_in_background().join()
t0 = time.perf_counter()
torch.optim.LBFGS([torch.zeros(1, requires_grad=True)])
first_optimizer_s = time.perf_counter() - t0
import tempfile
from pathlib import Path
from app.training.runtime import export_onnx
model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8)).eval()
t0 = time.perf_counter()
with tempfile.TemporaryDirectory() as tmp:
    export_onnx(model, torch.zeros(2, 3, 16, 16), Path(tmp) / "m.onnx")
print(json.dumps({"before": before, "after": "torch._dynamo" in sys.modules,
                  "onnxruntime": "onnxruntime" in sys.modules, "onnx": "onnx" in sys.modules,
                  "first_optimizer_s": first_optimizer_s,
                  "first_export_s": time.perf_counter() - t0}))
"""


def test_warm_up_imports_what_the_first_optimizer_would():
    # A fresh interpreter: the test process itself has long imported all of it.
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=REPO, capture_output=True, text=True, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["before"] is False, "torch alone does not import torch._dynamo"
    assert got["after"] is True and got["onnxruntime"] is True and got["onnx"] is True
    # Cold, that first optimizer costs seconds (the dynamo import); warmed, nothing.
    assert got["first_optimizer_s"] < 0.5
    # Cold, a first export costs most of a second (importing `onnx` and the exporter's
    # internals); warmed, a few milliseconds for a model this small.
    assert got["first_export_s"] < 0.3
