"""Tabular width and parameter limits (FINETUNE_MAX_TABULAR_WIDTH, FINETUNE_MAX_MODEL_PARAMS)
and the /metrics token (FINETUNE_METRICS_TOKEN). Limits:
a small CSV whose categorical columns one-hot encode to a huge first layer is refused at
upload, and a job whose model would pass the limits is refused at creation, each with a
422 that names the limit."""

import pytest

from app.core.config import get_settings


def _wide_csv(columns: int, values: int = 64, rows: int = 128, target=None) -> bytes:
    header = ",".join(f"c{j}" for j in range(columns)) + ",label"
    lines = [header]
    for i in range(rows):
        cells = [f"v{(i + j) % values}" for j in range(columns)]
        lines.append(",".join(cells) + f",{target(i) if target else 'ab'[i % 2]}")
    return ("\n".join(lines) + "\n").encode()


def _limits(monkeypatch, **env: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()


def _upload(api, data: bytes, task: str = "tabular_classification"):
    return api.post(
        "/v1/datasets",
        files={"file": ("w.csv", data, "text/csv")},
        data={"task": task},
    )


TARGETS = {
    "tabular_classification": None,
    "tabular_regression": lambda i: f"{i * 0.5}",
    "tabular_multilabel": lambda i: ["a", "b", "a|b"][i % 3],
}


@pytest.mark.parametrize("task", TARGETS)
def test_too_wide_at_upload(api, monkeypatch, task):
    # 12 categorical columns of 64 values: 768 one-hot columns, whatever the target.
    _limits(monkeypatch, FINETUNE_MAX_TABULAR_WIDTH="500")
    r = _upload(api, _wide_csv(12, target=TARGETS[task]), task)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "too_wide" and "FINETUNE_MAX_TABULAR_WIDTH" in error["message"]
    assert "768" in error["message"]
    assert api.get("/v1/datasets").json()["total"] == 0


@pytest.mark.parametrize(
    ("env", "code", "limit"),
    [
        ({"FINETUNE_MAX_MODEL_PARAMS": "100000"}, "model_too_large", "FINETUNE_MAX_MODEL_PARAMS"),
        ({"FINETUNE_MAX_TABULAR_WIDTH": "500"}, "too_wide", "FINETUNE_MAX_TABULAR_WIDTH"),
    ],
)
def test_limits_at_job_creation(api, monkeypatch, env, code, limit):
    r = _upload(api, _wide_csv(12))
    assert r.status_code == 201, r.text
    spec = {"dataset_id": r.json()["id"], "base_model": "mlp", "strategy": "full", "epochs": 1}
    _limits(monkeypatch, **env)  # lowered after the upload
    r = api.post("/v1/jobs", json=spec)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == code and limit in error["message"], error
    assert api.get("/v1/jobs").json()["total"] == 0


def test_metrics_token(api, monkeypatch):
    assert api.get("/metrics", headers={"Authorization": ""}).status_code == 200  # open
    _limits(monkeypatch, FINETUNE_METRICS_TOKEN="scrape-me")
    r = api.get("/metrics", headers={"Authorization": ""})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text
    assert api.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = api.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert ok.status_code == 200 and "finetune_jobs" in ok.text
