"""Text and tabular over real HTTP with a live `finetune serve` (embedded worker):
the seed's Iris example end to end, a text model on MiniLM-L6, continuing from a model
trained here and from uploaded weights, and predict's input checks per modality."""

import csv
import random
import time

import pytest

from tests.conftest import TEST_KEY
from tests.csvdata import IRIS_COLUMNS, iris_rows, upload_topics
from tests.helpers import digits_zip, embedded_service, wait_job


@pytest.fixture
def service(tmp_path):
    # Small models on a shared 2-core machine: one torch thread contends least.
    with embedded_service(
        tmp_path,
        TEST_KEY,
        FINETUNE_HEARTBEAT_SECONDS="2",
        FINETUNE_LEASE_SECONDS="10",
        OMP_NUM_THREADS="1",
    ) as client:
        yield client


def _job(client, **spec) -> dict:
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"], 240)
    assert job["status"] == "succeeded", job
    return job


def _predict(client, model_id, inputs, **extra):
    return client.post(f"/v1/models/{model_id}/predict", json={"inputs": inputs, **extra})


def _err(r, status):
    assert r.status_code == status, r.text
    return r.json()["error"]


def test_iris_and_text_end_to_end(service, tmp_path):
    client = service
    t0 = time.monotonic()

    # ---- Iris: 30 rows (10 a species) never leave this test; the rest is uploaded.
    rows, labels = iris_rows()
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    held: list[int] = []
    for species in sorted(set(labels)):
        held += [i for i in order if labels[i] == species][:10]
    path = tmp_path / "iris.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*IRIS_COLUMNS, "label"])
        for i in range(len(rows)):
            if i not in held:
                w.writerow([*(rows[i][c] for c in IRIS_COLUMNS), labels[i]])
    with path.open("rb") as f:
        r = client.post(
            "/v1/datasets",
            files={"file": ("iris.csv", f, "text/csv")},
            data={"task": "tabular_classification", "name": "iris"},
        )
    assert r.status_code == 201, r.text
    iris = r.json()
    assert iris["num_samples"] == 120 and iris["classes"] == sorted(set(labels))

    # Defaults only: random weights get `full`, and the step floor sets the epochs.
    job = _job(client, dataset_id=iris["id"], base_model="mlp")
    assert job["spec"]["strategy"] == "full" and job["history"][0]["stage"] == "probe"
    model = client.get(f"/v1/models/{job['model_id']}").json()
    assert model["lineage"]["strategy"] == "full"
    assert model["task"] == "tabular_classification"
    assert model["metrics"]["accuracy"] >= 0.9, model["metrics"]  # its own test split

    r = _predict(client, model["id"], [rows[i] for i in held], top_k=2)
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) == len(held) and all(len(p["top_k"]) == 2 for p in predictions)
    held_out = sum(p["label"] == labels[i] for p, i in zip(predictions, held, strict=True))
    assert held_out / len(held) >= 0.9, predictions  # rows the service never saw

    # ---- predict input checks for a tabular model
    one = rows[held[0]]
    missing = {k: v for k, v in one.items() if k != "petal_width"}
    assert "petal_width" in _err(_predict(client, model["id"], [missing]), 422)["message"]
    wrong = {**one, "sepal_length": "long"}
    assert "sepal_length" in _err(_predict(client, model["id"], [one, wrong]), 422)["message"]
    assert "inputs" in _err(_predict(client, model["id"], []), 422)["message"]
    assert "at most" in _err(_predict(client, model["id"], [one] * 257), 422)["message"]
    assert "objects" in _err(_predict(client, model["id"], ["a string"]), 422)["message"]
    multipart = client.post(
        f"/v1/models/{model['id']}/predict", files=[("files", ("a.png", b"x", "image/png"))]
    )
    assert _err(multipart, 415)["code"] == "unsupported_media_type"
    bad_json = client.post(
        f"/v1/models/{model['id']}/predict",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert 400 <= bad_json.status_code < 500
    assert _predict(client, model["id"], [one], top_k=0).status_code == 422

    # ---- continue from an MLP (model:<id>), and from its exported weights uploaded back
    # (the default job above keeps the MLP's linear form when that validates better;
    # `linear_baseline: false` asks for the MLP itself)
    mlp_job = _job(client, dataset_id=iris["id"], base_model="mlp", linear_baseline=False)
    assert not mlp_job.get("leaderboard")
    model = client.get(f"/v1/models/{mlp_job['model_id']}").json()
    cont = _job(
        client,
        dataset_id=iris["id"],
        base_model=f"model:{model['id']}",
        strategy="partial",
        epochs=2,
    )
    child = client.get(f"/v1/models/{cont['model_id']}").json()
    assert child["lineage"]["parent_model_id"] == model["id"]
    weights = client.get(f"/v1/models/{model['id']}/export", params={"format": "safetensors"})
    assert weights.status_code == 200
    assert (
        _err(client.get(f"/v1/models/{model['id']}/export", params={"format": "onnx"}), 422)["code"]
        == "invalid_format"
    )
    up = client.post(
        "/v1/base-models",
        files={"file": ("iris.safetensors", weights.content, "application/octet-stream")},
        data={"architecture": "mlp", "name": "iris mlp"},
    )
    assert up.status_code == 201, up.text
    from_upload = _job(
        client,
        dataset_id=iris["id"],
        base_model=up.json()["name"],
        strategy="partial",
        epochs=3,
        learning_rate=0.01,
    )
    uploaded_model = client.get(f"/v1/models/{from_upload['model_id']}").json()
    assert uploaded_model["lineage"]["upload_id"] == up.json()["extra"]["upload_id"]
    # Starting from weights that already solve Iris, a head-only probe does well at once.
    assert uploaded_model["metrics"]["accuracy"] >= 0.8, uploaded_model["metrics"]

    # ---- text: configurable column names, MiniLM-L6 linear probe
    r = upload_topics(client, tmp_path / "topics.csv")
    assert r.status_code == 201, r.text
    topics = r.json()
    assert topics["task"] == "text_classification"
    job = _job(
        client,
        dataset_id=topics["id"],
        base_model="minilm-l6",
        strategy="partial",
        trainable_blocks=0,
        epochs=20,
        learning_rate=0.01,
        max_length=32,
        early_stopping_patience=None,
    )
    text_model = client.get(f"/v1/models/{job['model_id']}").json()
    # The test split names topics with words training never used (see tests/csvdata.py).
    assert text_model["metrics"]["accuracy"] >= 0.8, text_model["metrics"]
    sentences = [
        "The soccer team celebrated a late goal.",
        "Preheat the oven and knead the dough.",
        "Forecasters expect a blizzard tonight.",
        "The central bank raised rates again.",
    ]
    r = _predict(client, text_model["id"], sentences, top_k=4)
    assert r.status_code == 200, r.text
    got = [p["label"] for p in r.json()["predictions"]]
    assert got == ["sports", "cooking", "weather", "finance"], r.json()
    assert "expected a string" in _err(_predict(client, text_model["id"], [1]), 422)["message"]
    assert "empty" in _err(_predict(client, text_model["id"], ["  "]), 422)["message"]
    image_to_text = client.post(
        f"/v1/models/{text_model['id']}/predict",
        files=[("files", ("a.png", b"\x89PNG", "image/png"))],
    )
    assert _err(image_to_text, 415)["code"] == "unsupported_media_type"

    # ---- JSON to an image model: 415
    archive = digits_zip(tmp_path / "d.zip", per_class=6, size=16, classes=3)
    with archive.open("rb") as f:
        ds = client.post("/v1/datasets", files={"file": ("d.zip", f, "application/zip")}).json()
    job = _job(client, dataset_id=ds["id"], base_model="tiny_cnn", image_size=16, epochs=1)
    r = _predict(client, job["model_id"], ["hello"])
    assert _err(r, 415)["code"] == "unsupported_media_type"
    print(
        f"\n[e2e text+tabular] Iris: test split {model['metrics']['accuracy']:.3f}, rows never "
        f"uploaded {held_out}/{len(held)}; text: test split "
        f"{text_model['metrics']['accuracy']:.3f}; {time.monotonic() - t0:.1f}s"
    )
