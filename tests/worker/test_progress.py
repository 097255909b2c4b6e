"""A running job reports progress while it runs: epoch, fraction, ETA and history move."""

import time

import pytest

from tests.conftest import TEST_KEY
from tests.helpers import digits_zip, embedded_service, wait_job


@pytest.fixture
def live(tmp_path):
    with embedded_service(tmp_path, TEST_KEY) as client:
        yield client


def test_progress_and_history_move_during_a_full_finetune(live, tmp_path):
    archive = digits_zip(tmp_path / "d.zip", per_class=8, size=32, classes=4)
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
