"""A training process killed with SIGKILL right after an epoch checkpoint resumes to the
same result as a run that was never killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from app.training.api import TrainConfig, train

CONFIG = {
    "base_model": "tiny_cnn",
    "strategy": "full",
    "epochs": 3,
    "learning_rate": 0.05,
    "batch_size": 16,
    "image_size": 32,
    "early_stopping_patience": None,
    "device": "cpu",
    "augment": True,
    "seed": 3,
}

CHILD = """
import json, os, signal, sys
from pathlib import Path
from app.training.api import TrainConfig, train

def on_epoch(report):
    if report["epoch"] == 2:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally blocks

train(config=TrainConfig(**json.loads(sys.argv[1])), dataset_dir=Path(sys.argv[2]),
      work_dir=Path(sys.argv[3]), cache_dir=Path(sys.argv[4]), on_epoch=on_epoch)
"""


@pytest.mark.slow
def test_sigkilled_job_resumes_from_its_checkpoint(digits_small: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            json.dumps(CONFIG),
            str(digits_small),
            str(tmp_path / "killed"),
            str(tmp_path / "cache"),
        ],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    assert (tmp_path / "killed" / "checkpoint.pt").is_file()
    assert not (tmp_path / "killed" / "model").exists()

    kw = {
        "config": TrainConfig(**CONFIG),
        "dataset_dir": digits_small,
        "cache_dir": tmp_path / "cache",
    }
    reports: list[dict] = []
    resumed = train(work_dir=tmp_path / "killed", on_epoch=reports.append, **kw)
    whole = train(work_dir=tmp_path / "whole", **kw)
    assert [r["epoch"] for r in reports] == [3]
    assert resumed.metrics == whole.metrics
    a = load_file(resumed.artifact_dir / "model.safetensors")
    b = load_file(whole.artifact_dir / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
