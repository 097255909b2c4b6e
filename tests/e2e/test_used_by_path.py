"""The used-by path over real HTTP with a real Celery worker process:
upload → job → poll → model → predict, on the embedded defaults and on Redis + PostgreSQL."""

import os
import time

import httpx
import pytest

from tests.conftest import TEST_KEY
from tests.helpers import digit_images, digits_zip, free_port, png_bytes, start, stop, wait_http

PER_CLASS = 30
SIZE = 48


@pytest.fixture(params=["embedded", "redis+postgres"])
def service(request, tmp_path):
    """A live `finetune serve` (and, distributed, a separate `finetune worker`)."""
    env = {
        **os.environ,
        "FINETUNE_DATA_DIR": str(tmp_path / "var"),
        "FINETUNE_API_KEY": TEST_KEY,
        "FINETUNE_HEARTBEAT_SECONDS": "2",
        "FINETUNE_LEASE_SECONDS": "10",
    }
    env.pop("FINETUNE_DATABASE_URL", None)
    env.pop("FINETUNE_BROKER_URL", None)
    if request.param == "redis+postgres":
        env["FINETUNE_DATABASE_URL"] = request.getfixturevalue("postgres_url")
        env["FINETUNE_BROKER_URL"] = request.getfixturevalue("redis_url")
    port = free_port()
    procs = [start(["serve", "--port", str(port)], env, tmp_path / "serve.log")]
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", 90, procs[0])
        if request.param == "redis+postgres":
            procs.append(start(["worker"], env, tmp_path / "worker.log"))
        yield base, request.param
    finally:
        for p in procs:
            stop(p)
        for log in ("serve.log", "worker.log"):
            path = tmp_path / log
            if path.exists():
                print(f"----- {log} (tail) -----\n{path.read_text()[-3000:]}")


def test_upload_finetune_poll_predict(service, tmp_path):
    base, mode = service
    client = httpx.Client(
        base_url=base, timeout=60, headers={"Authorization": f"Bearer {TEST_KEY}"}
    )
    t0 = time.monotonic()

    archive = digits_zip(tmp_path / "digits.zip", per_class=PER_CLASS, size=SIZE)
    with archive.open("rb") as f:
        r = client.post(
            "/v1/datasets",
            files={"file": ("digits.zip", f, "application/zip")},
            data={"name": "digits"},
        )
    assert r.status_code == 201, r.text
    dataset = r.json()
    assert dataset["task"] == "image_classification"
    assert dataset["num_samples"] == 10 * PER_CLASS
    assert dataset["classes"] == [f"digit_{i}" for i in range(10)]
    assert set(dataset["class_counts"].values()) == {PER_CLASS}
    assert dataset["splits"]["test"] >= 10

    spec = {
        "dataset_id": dataset["id"],
        "base_model": "efficientnet_lite0",
        "strategy": "partial",
        "trainable_blocks": 0,
        "epochs": 20,
        "learning_rate": 0.01,
        "image_size": SIZE,
        "batch_size": 32,
        "early_stopping_patience": 20,
        "seed": 1,
    }
    r = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": f"e2e-{mode}"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued"
    again = client.post("/v1/jobs", json=spec, headers={"Idempotency-Key": f"e2e-{mode}"})
    assert again.status_code == 202 and again.json()["id"] == job["id"]

    seen_status, seen_epochs = set(), set()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job['id']}").json()
        seen_status.add(job["status"])
        seen_epochs.add(job["progress"]["epoch"])
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.2)
    assert job["status"] == "succeeded", job
    assert "running" in seen_status
    assert job["progress"]["fraction"] == 1.0 and job["attempts"] == 1
    epochs_run = len([h for h in job["history"] if "val_accuracy" in h])
    assert 1 <= epochs_run <= 20
    events = client.get(f"/v1/jobs/{job['id']}/events").json()
    assert [e["data"]["status"] for e in events if e["type"] == "status"] == [
        "queued",
        "running",
        "succeeded",
    ]
    assert len([e for e in events if e["type"] == "epoch"]) == epochs_run

    model = client.get(f"/v1/models/{job['model_id']}").json()
    metrics = model["metrics"]
    # Chance is 0.10. EfficientNet-Lite0 features + a linear head on 24 train images a class
    # at 48 px reach ~0.8 here; 0.6 proves learning with a wide margin for seeds and BLAS.
    assert metrics["accuracy"] >= 0.6, metrics
    assert len(metrics["confusion_matrix"]) == 10
    assert sum(map(sum, metrics["confusion_matrix"])) == dataset["splits"]["test"]
    assert set(metrics["per_class"]) == set(dataset["classes"])

    # Predict on digits the dataset never contained, in input order, top_k 3.
    fresh = list(digit_images(per_class=3, size=SIZE, offset=PER_CLASS + 20))
    files = [
        ("files", (f"{i}.png", png_bytes(img), "image/png")) for i, (_, img) in enumerate(fresh)
    ]
    r = client.post(f"/v1/models/{model['id']}/predict", files=files, data={"top_k": "3"})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) == len(fresh)
    assert all(len(p["top_k"]) == 3 and p["top_k"][0]["label"] == p["label"] for p in predictions)
    hits = sum(
        p["label"] == f"digit_{label}" for p, (label, _) in zip(predictions, fresh, strict=True)
    )
    assert hits / len(fresh) >= 0.5, predictions

    page = client.get(f"/v1/models/{model['id']}/report")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<svg" in page.text and "Confusion matrix" in page.text and "digit_9" in page.text

    if mode == "embedded":
        _check_exports(client, model["id"], fresh, predictions, tmp_path)

    # Another owner sees none of it: 404, not 403.
    other = client.post("/v1/admin/keys", json={"name": "someone-else"}).json()["key"]
    stranger = httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {other}"})
    for path in (
        f"/v1/datasets/{dataset['id']}",
        f"/v1/jobs/{job['id']}",
        f"/v1/models/{model['id']}",
    ):
        assert stranger.get(path).status_code == 404
    assert stranger.post(f"/v1/models/{model['id']}/predict", files=files[:1]).status_code == 404
    print(
        f"\n[e2e {mode}] test accuracy {metrics['accuracy']:.3f}, macro F1 "
        f"{metrics['macro_f1']:.3f}, {epochs_run} epochs, {time.monotonic() - t0:.1f}s"
    )


def _check_exports(client, model_id, images, predictions, tmp_path):
    """Exports load outside the service and agree with predict."""
    import numpy as np
    import onnx
    import torch
    from safetensors.torch import load_file

    for fmt in ("safetensors", "torchscript", "onnx"):
        r = client.get(f"/v1/models/{model_id}/export", params={"format": fmt})
        assert r.status_code == 200, r.text
        (tmp_path / fmt).write_bytes(r.content)
    assert any(k.endswith("weight") for k in load_file(str(tmp_path / "safetensors")))
    onnx.checker.check_model(onnx.load(str(tmp_path / "onnx")))
    scripted = torch.jit.load(str(tmp_path / "torchscript"))
    batch = torch.stack(
        [
            torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)
            for _, img in images
        ]
    )
    probs = scripted(batch)
    for row, pred in zip(probs, predictions, strict=True):
        assert abs(float(row.max()) - pred["score"]) < 1e-3
    bad = client.get(f"/v1/models/{model_id}/export", params={"format": "pickle"})
    assert bad.status_code == 422 and "format" in bad.json()["error"]["message"]
