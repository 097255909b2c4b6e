"""Text and tabular through the HTTP surface (in-process ASGI, no worker: jobs stay
queued): base-model listing, task checks, and uploaded pretrained weights, which are
validated with safetensors and never unpickled."""

import io
import pickle

import pytest
import torch
from safetensors.torch import save

from app.training.build import build_model
from tests.csvdata import iris_csv, upload_topics
from tests.helpers import digits_zip


def _error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    if code:
        assert err["code"] == code, err
    return err


@pytest.fixture
def iris(api, tmp_path):
    with iris_csv(tmp_path / "iris.csv").open("rb") as f:
        r = api.post(
            "/v1/datasets",
            files={"file": ("iris.csv", f, "text/csv")},
            data={"task": "tabular_classification"},
        )
    assert r.status_code == 201, r.text
    return r.json()


def _safetensors(state: dict) -> bytes:
    """What safetensors.torch.save_file would write."""
    return save({k: v.contiguous() for k, v in state.items()})


def _upload(api, content: bytes, architecture: str, filename="w.safetensors", headers=None):
    return api.post(
        "/v1/base-models",
        files={"file": (filename, io.BytesIO(content), "application/octet-stream")},
        data={"architecture": architecture, "name": "my weights"},
        headers=headers or {},
    )


def test_base_models_list_text_and_tabular(api):
    listed = {m["name"]: m for m in api.get("/v1/base-models").json()}
    text, mlp = listed["minilm-l6"], listed["mlp"]
    assert text["task"] == "text_classification" and text["weights_present"] is True
    assert 22_000_000 < text["params"] < 23_000_000
    assert mlp["task"] == "tabular_classification" and mlp["weights_present"] is True
    assert mlp["params"] > 0


def test_tabular_jobs_need_a_tabular_base_model(api, iris):
    assert iris["task"] == "tabular_classification"
    assert iris["classes"] == ["setosa", "versicolor", "virginica"]
    for base in ("minilm-l6", "efficientnet_lite0"):
        err = _error(
            api.post("/v1/jobs", json={"dataset_id": iris["id"], "base_model": base}),
            422,
            "task_mismatch",
        )
        assert "tabular_classification" in err["message"]
    ok = api.post("/v1/jobs", json={"dataset_id": iris["id"], "base_model": "mlp"})
    assert ok.status_code == 202, ok.text
    err = _error(
        api.post("/v1/jobs", json={"dataset_id": iris["id"], "base_model": "mlp", "max_length": 4}),
        422,
    )
    assert "max_length" in err["message"]


def test_a_job_spec_records_the_strategy_chosen_for_its_base_model(api, iris, tmp_path):
    job = api.post("/v1/jobs", json={"dataset_id": iris["id"], "base_model": "mlp"})
    assert job.status_code == 202, job.text
    assert job.json()["spec"]["strategy"] == "full"  # random weights: nothing frozen
    assert job.json()["spec"]["epochs"] is None  # chosen from the dataset size
    for strategy in ("partial", "layerwise", "progressive"):
        spec = {"dataset_id": iris["id"], "base_model": "mlp", "strategy": strategy}
        err = _error(api.post("/v1/jobs", json=spec), 422)
        assert "strategy" in err["message"] and "no pretrained weights" in err["message"]
    archive = digits_zip(tmp_path / "d.zip", per_class=4, size=16, classes=2)
    with archive.open("rb") as f:
        images = api.post("/v1/datasets", files={"file": ("d.zip", f, "application/zip")})
    assert images.status_code == 201, images.text
    base = {"dataset_id": images.json()["id"], "base_model": "efficientnet_lite0"}
    assert api.post("/v1/jobs", json=base).json()["spec"]["strategy"] == "partial"
    err = _error(
        api.post("/v1/jobs", json={**base, "pretrained": False, "strategy": "partial"}), 422
    )
    assert "strategy" in err["message"] and err["field"] == "strategy"
    scratch = api.post("/v1/jobs", json={**base, "pretrained": False})
    assert scratch.json()["spec"]["strategy"] == "full"
    for bad in (0, -1, "soon"):
        err = _error(api.post("/v1/jobs", json={**base, "auto_budget_seconds": bad}), 422)
        assert "auto_budget_seconds" in err["message"]


def test_a_job_spec_records_the_learning_rate_chosen_for_its_base_model(api, iris, tmp_path):
    """No learning_rate: 1e-3, except full fine-tuning of a pretrained base model that
    names its own rate (MiniLM: 1e-4); auto's candidates derive from 1e-3; a rate the
    job names is kept."""
    texts = upload_topics(api, tmp_path / "t.csv")
    assert texts.status_code == 201, texts.text
    text = {"dataset_id": texts.json()["id"], "base_model": "minilm-l6"}
    cases = [
        ({**text, "strategy": "full"}, 1e-4),
        (text, 1e-3),  # the probe
        ({**text, "strategy": "partial", "trainable_blocks": 2}, 1e-3),
        ({**text, "strategy": "auto"}, 1e-3),
        ({**text, "strategy": "full", "learning_rate": 3e-4}, 3e-4),
        ({"dataset_id": iris["id"], "base_model": "mlp"}, 1e-3),  # full, random weights
    ]
    for spec, rate in cases:
        job = api.post("/v1/jobs", json=spec)
        assert job.status_code == 202, job.text
        assert job.json()["spec"]["learning_rate"] == pytest.approx(rate), spec


class _Planted:
    """Unpickling this writes a file: the proof that nothing was unpickled is its absence."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_uploads_are_refused_unread(api, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weights": _Planted(str(marker))})
    for name in ("evil.pkl", "evil.safetensors"):
        err = _error(_upload(api, payload, "mlp", filename=name), 422, "pickle_refused")
        assert "pickle" in err["message"]
    buf = io.BytesIO()
    torch.save({"head.weight": torch.zeros(3, 64), "x": _Planted(str(marker))}, buf)
    _error(_upload(api, buf.getvalue(), "mlp", filename="model.pt"), 422, "pickle_refused")
    assert not marker.exists()
    assert not any(m["name"].startswith("upload:") for m in api.get("/v1/base-models").json())
    assert not any(p.is_file() for p in (tmp_path / "var" / "base_models").glob("**/*"))
    assert not any(p.is_file() for p in (tmp_path / "var" / "uploads").glob("**/*"))


def test_uploaded_weights_are_checked_listed_per_owner_and_usable(api, iris, tmp_path):
    state = build_model(
        base_model="mlp", num_classes=3, pretrained=False, num_inputs=4
    ).state_dict()
    r = _upload(api, _safetensors(state), "mlp")
    assert r.status_code == 201, r.text
    up = r.json()
    assert up["name"].startswith("upload:") and up["task"] == "tabular_classification"
    assert up["params"] == sum(v.numel() for v in state.values())
    assert up["extra"]["architecture"] == "mlp" and up["weights_present"] is True
    assert up["name"] in {m["name"] for m in api.get("/v1/base-models").json()}

    job = api.post("/v1/jobs", json={"dataset_id": iris["id"], "base_model": up["name"]})
    assert job.status_code == 202, job.text

    # Wrong architecture, wrong shapes, junk, unknown architecture: 422s naming the problem.
    err = _error(_upload(api, _safetensors(state), "tiny_cnn"), 422, "weights_mismatch")
    assert "tiny_cnn" in err["message"] and "missing" in err["message"]
    bad = dict(state)
    bad["blocks.1.0.weight"] = torch.zeros(7, 128)
    err = _error(_upload(api, _safetensors(bad), "mlp"), 422, "weights_mismatch")
    assert "blocks.1.0.weight" in err["message"]
    _error(_upload(api, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}", "mlp"), 422)
    err = _error(_upload(api, _safetensors(state), "vgg99"), 422)
    assert "vgg99" in err["message"]

    # An image architecture's weights can't start a tabular job.
    tiny = build_model(base_model="tiny_cnn", num_classes=10, pretrained=False).state_dict()
    image_up = _upload(api, _safetensors(tiny), "tiny_cnn").json()
    _error(
        api.post("/v1/jobs", json={"dataset_id": iris["id"], "base_model": image_up["name"]}),
        422,
        "task_mismatch",
    )

    # Another owner neither sees nor uses them.
    key = api.post("/v1/admin/keys", json={"name": "other"}).json()["key"]
    other = {"Authorization": f"Bearer {key}"}
    names = {m["name"] for m in api.get("/v1/base-models", headers=other).json()}
    assert up["name"] not in names and "mlp" in names
    with iris_csv(tmp_path / "i2.csv").open("rb") as f:
        ds = api.post(
            "/v1/datasets",
            files={"file": ("i.csv", f, "text/csv")},
            data={"task": "tabular_classification"},
            headers=other,
        ).json()
    _error(
        api.post(
            "/v1/jobs", json={"dataset_id": ds["id"], "base_model": up["name"]}, headers=other
        ),
        404,
    )


def test_a_hugging_face_minilm_checkpoint_uploads_as_minilm_l6(api):
    """The package's own model.safetensors (BertModel names) is valid minilm-l6 weights."""
    from app.training import text

    content = text.weights_file().read_bytes()
    r = _upload(api, content, "minilm-l6", filename="model.safetensors")
    assert r.status_code == 201, r.text
    assert r.json()["task"] == "text_classification"
    assert 22_000_000 < r.json()["params"] < 23_000_000
    err = _error(_upload(api, content, "mlp"), 422, "weights_mismatch")
    assert "embeddings" in err["message"]
