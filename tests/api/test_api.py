"""The HTTP surface through the real ASGI app on the embedded defaults (no worker here:
jobs stay queued, which is what these tests need)."""

import io
import time

import pytest

from tests.conftest import TEST_KEY
from tests.helpers import digits_zip


@pytest.fixture
def dataset(api, tmp_path):
    archive = digits_zip(tmp_path / "d.zip", per_class=6, size=16, classes=3)
    with archive.open("rb") as f:
        r = api.post("/v1/datasets", files={"file": ("d.zip", f, "application/zip")})
    assert r.status_code == 201, r.text
    return r.json()


def _error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) >= {"error"} and {"code", "message"} <= set(body["error"])
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]


def test_health_ready_metrics(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"
    text = api.get("/metrics").text
    assert "finetune_http_requests_total" in text
    assert 'finetune_jobs{status="queued"} 0.0' in text


def test_auth_missing_wrong_and_revoked_keys_get_the_same_401(api):
    created = api.post("/v1/admin/keys", json={"name": "bob"})
    assert created.status_code == 201
    bob = created.json()
    assert (
        api.get("/v1/datasets", headers={"Authorization": f"Bearer {bob['key']}"}).status_code
        == 200
    )
    assert api.delete(f"/v1/admin/keys/{bob['id']}").json()["revoked_at"]
    bodies = []
    for headers in (
        {"Authorization": ""},
        {"Authorization": "Bearer nope"},
        {"Authorization": f"Bearer {bob['key']}"},
        {"Authorization": "Basic x"},
    ):
        r = api.get("/v1/datasets", headers=headers)
        bodies.append(_error(r, 401, "unauthorized"))
    assert all(b == bodies[0] for b in bodies)


def test_a_key_revoked_elsewhere_stops_working_within_the_auth_cache_ttl(api):
    from app.auth import service
    from app.core.db import get_sessionmaker

    bob = api.post("/v1/admin/keys", json={"name": "bob"}).json()
    headers = {"Authorization": f"Bearer {bob['key']}"}
    api.app.state.keys.ttl = 0.5
    assert api.get("/v1/datasets", headers=headers).status_code == 200  # now cached
    with get_sessionmaker()() as session:  # as `finetune keys revoke` or another API would
        service.revoke_key(session=session, key_id=bob["id"])
    assert api.get("/v1/datasets", headers=headers).status_code == 200  # trusted a while
    time.sleep(0.6)
    _error(api.get("/v1/datasets", headers=headers), 401, "unauthorized")


def test_non_admin_cannot_create_keys(api):
    key = api.post("/v1/admin/keys", json={"name": "carol"}).json()["key"]
    r = api.post("/v1/admin/keys", json={"name": "x"}, headers={"Authorization": f"Bearer {key}"})
    _error(r, 404)


def test_dataset_read_list_delete(api, dataset):
    assert dataset["classes"] == ["digit_0", "digit_1", "digit_2"]
    assert dataset["class_counts"] == {"digit_0": 6, "digit_1": 6, "digit_2": 6}
    assert sum(dataset["splits"].values()) == 18
    assert api.get(f"/v1/datasets/{dataset['id']}").json()["id"] == dataset["id"]
    page = api.get("/v1/datasets", params={"limit": 1}).json()
    assert page["total"] == 1 and page["items"][0]["id"] == dataset["id"]
    assert api.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
    _error(api.get(f"/v1/datasets/{dataset['id']}"), 404, "not_found")


def test_upload_errors_are_clear_4xx(api):
    r = api.post(
        "/v1/datasets",
        files={"file": ("x.zip", io.BytesIO(b"not an archive at all"), "application/zip")},
    )
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["message"]
    # An ingest error names the upload's part at fault (app.main.ERRORS).
    assert r.json()["error"]["field"] == "file", r.text
    _error(api.post("/v1/datasets", json={"file": "x"}), 422)
    _error(
        api.post("/v1/datasets", files={"file": ("e.zip", io.BytesIO(b""), "application/zip")}), 422
    )


def test_jobspec_validation_names_the_field(api, dataset):
    base = {"dataset_id": dataset["id"], "base_model": "efficientnet_lite0"}
    for field, value in (
        ("epochs", 0),
        ("strategy", "sideways"),
        ("learning_rate", -1),
        ("device", "tpu"),
        ("bogus", 1),
    ):
        err = _error(api.post("/v1/jobs", json={**base, field: value}), 422, "validation_error")
        assert field in err["message"], err
        assert err["field"] == field, err
    _error(api.post("/v1/jobs", json={"base_model": "efficientnet_lite0"}), 422)


def test_job_refused_for_unknown_dataset_base_model_and_missing_weights(api, dataset):
    _error(
        api.post("/v1/jobs", json={"dataset_id": "ds_nope", "base_model": "efficientnet_lite0"}),
        404,
    )
    err = _error(
        api.post("/v1/jobs", json={"dataset_id": dataset["id"], "base_model": "vgg99"}), 422
    )
    assert "vgg99" in err["message"] and err["field"] == "base_model", err
    listed = {m["name"]: m for m in api.get("/v1/base-models").json()}
    assert listed["efficientnet_lite0"]["weights_present"] is True
    assert listed["efficientnet_lite0"]["params"] > 3_000_000
    # The test-only CNN is not listed, but a job may still name it.
    assert "tiny_cnn" not in listed
    r = api.post(
        "/v1/jobs",
        json={"dataset_id": dataset["id"], "base_model": "tiny_cnn", "pretrained": False},
    )
    assert r.status_code == 202, r.text
    if not listed["resnet18"]["weights_present"]:
        err = _error(
            api.post("/v1/jobs", json={"dataset_id": dataset["id"], "base_model": "resnet18"}), 422
        )
        assert "finetune weights fetch resnet18" in err["message"]
        # ...but training it from scratch needs no weights.
        r = api.post(
            "/v1/jobs",
            json={"dataset_id": dataset["id"], "base_model": "resnet18", "pretrained": False},
        )
        assert r.status_code == 202, r.text


def test_idempotency_key_replays_and_conflicts(api, dataset):
    spec = {"dataset_id": dataset["id"], "base_model": "efficientnet_lite0", "epochs": 2}
    first = api.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "k1"})
    again = api.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    err = _error(
        api.post("/v1/jobs", json={**spec, "epochs": 3}, headers={"Idempotency-Key": "k1"}),
        409,
        "idempotency_conflict",
    )
    assert "k1" in err["message"]
    assert api.get("/v1/jobs").json()["total"] == 1


def test_cancel_a_queued_job_and_read_its_events(api, dataset):
    job = api.post(
        "/v1/jobs", json={"dataset_id": dataset["id"], "base_model": "efficientnet_lite0"}
    ).json()
    assert job["status"] == "queued"
    cancelled = api.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
    events = api.get(f"/v1/jobs/{job['id']}/events").json()
    assert [e["data"]["status"] for e in events] == ["queued", "cancelled"]
    assert api.get("/v1/jobs", params={"status": "cancelled"}).json()["total"] == 1
    assert api.get("/v1/jobs", params={"status": "queued"}).json()["total"] == 0
    sse = api.get(f"/v1/jobs/{job['id']}/events", headers={"Accept": "text/event-stream"})
    assert sse.headers["content-type"].startswith("text/event-stream")
    assert "event: status" in sse.text


def test_other_owners_ids_answer_404(api, dataset):
    job = api.post(
        "/v1/jobs", json={"dataset_id": dataset["id"], "base_model": "efficientnet_lite0"}
    ).json()
    key = api.post("/v1/admin/keys", json={"name": "eve"}).json()["key"]
    eve = {"Authorization": f"Bearer {key}"}
    for method, path in (
        ("GET", f"/v1/datasets/{dataset['id']}"),
        ("DELETE", f"/v1/datasets/{dataset['id']}"),
        ("GET", f"/v1/jobs/{job['id']}"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("GET", f"/v1/jobs/{job['id']}/events"),
    ):
        _error(api.request(method, path, headers=eve), 404, "not_found")
    # A job spec naming another owner's dataset is a 404 too.
    _error(
        api.post(
            "/v1/jobs",
            json={"dataset_id": dataset["id"], "base_model": "efficientnet_lite0"},
            headers=eve,
        ),
        404,
    )
    assert api.get("/v1/datasets", headers=eve).json()["total"] == 0
    assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"


def test_unknown_ids_and_routes(api):
    _error(api.get("/v1/jobs/job_nope"), 404)
    _error(api.get("/v1/models/mdl_nope"), 404)
    _error(api.post("/v1/models/mdl_nope/predict", json={"inputs": []}), 404)
    _error(api.get("/v1/nothing-here"), 404)


def test_upload_over_the_limit_is_refused_while_streaming(data_dir, monkeypatch):
    from fastapi.testclient import TestClient

    from app.core.db import reset_caches
    from app.main import create_app

    monkeypatch.setenv("FINETUNE_MAX_UPLOAD_BYTES", "100000")
    reset_caches()
    with TestClient(create_app(), headers={"Authorization": f"Bearer {TEST_KEY}"}) as client:
        blob = io.BytesIO(b"\0" * 3_000_000)
        r = client.post("/v1/datasets", files={"file": ("big.zip", blob, "application/zip")})
        _error(r, 413, "upload_too_large")
        assert list((data_dir / "datasets").iterdir()) == []
        assert client.get("/healthz").status_code == 200
