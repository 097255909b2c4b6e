"""A running job reports progress while it runs: epoch, fraction, ETA and history move."""

import os
import time

import httpx
import pytest

from tests.conftest import TEST_KEY
from tests.helpers import digits_zip, free_port, start, stop, wait_http, wait_job


@pytest.fixture
def live(tmp_path):
    env = {**os.environ, "FINETUNE_DATA_DIR": str(tmp_path / "var"), "FINETUNE_API_KEY": TEST_KEY}
    env.pop("FINETUNE_DATABASE_URL", None)
    env.pop("FINETUNE_BROKER_URL", None)
    port = free_port()
    proc = start(["serve", "--port", str(port)], env, tmp_path / "serve.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 90, proc)
        yield httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            timeout=30,
            headers={"Authorization": f"Bearer {TEST_KEY}"},
        )
    finally:
        stop(proc)


def test_progress_and_history_move_during_a_full_finetune(live, tmp_path):
    archive = digits_zip(tmp_path / "d.zip", per_class=12, size=32, classes=4)
    with archive.open("rb") as f:
        dataset = live.post("/v1/datasets", files={"file": ("d.zip", f, "application/zip")}).json()
    spec = {
        "dataset_id": dataset["id"],
        "base_model": "efficientnet_lite0",
        "strategy": "full",
        "epochs": 30,
        "image_size": 32,
        "batch_size": 8,
        "early_stopping_patience": None,
    }
    job = live.post("/v1/jobs", json=spec).json()

    snapshots = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        body = live.get(f"/v1/jobs/{job['id']}").json()
        p = body["progress"]
        if body["status"] == "running" and 0 < p["fraction"] < 1:
            snapshots.append((p["epoch"], p["fraction"], p["eta_seconds"], len(body["history"])))
        if len({s[0] for s in snapshots}) >= 3 or body["status"] != "running" and snapshots:
            break
        time.sleep(0.2)
    epochs = [s[0] for s in snapshots]
    assert len(set(epochs)) >= 3, snapshots
    assert epochs == sorted(epochs)
    assert all(s[3] >= s[0] for s in snapshots)  # one history row per finished epoch
    assert all(isinstance(s[2], int | float) and s[2] > 0 for s in snapshots)
    assert all(abs(s[1] - s[0] / 30) < 1e-3 for s in snapshots)

    # And stop it: a running job is cancelled at its next step.
    assert live.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
    done = wait_job(live, job["id"], 60)
    assert done["status"] == "cancelled" and done["model_id"] is None
