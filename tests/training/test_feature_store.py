"""Frozen features kept on disk: a later job with the same data, weights and cut reads
them back; other weights or another cut compute their own; a dataset's delete removes
them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.training.build import build_model, get_base_model
from app.training.data import load_dataset
from app.training.feature_store import FeatureStore, weights_digest
from app.training.loop import LoopOptions, fit
from app.training.schedule import plan_schedule
from tests.helpers import digits_zip


def _job(digits_small: Path, tmp_path: Path, store: FeatureStore, work: str, **kw):
    data = load_dataset(digits_small, image_size=32, cache_dir=tmp_path / "cache")
    model = build_model(base_model="tiny_cnn", num_classes=10, pretrained=True)
    if kw.pop("perturb", False):
        with torch.no_grad():
            model.stem[0].weight.add_(0.01)
    stem_seen = [0]
    model.stem.register_forward_hook(lambda m, a, out: stem_seen.__setitem__(0, stem_seen[0] + 1))
    plans = plan_schedule(
        strategy="partial",
        num_blocks=len(model.blocks),
        epochs=2,
        learning_rate=0.05,
        trainable_blocks=kw.pop("trainable_blocks", 0),
    )
    spec = get_base_model("tiny_cnn")
    result = fit(
        model=model,
        plans=plans,
        data=data,
        work_dir=tmp_path / work,
        options=LoopOptions(mean=spec.mean, std=spec.std, image_size=32, batch_size=16, probe=True),
        feature_store=store,
    )
    return result, stem_seen[0], model


@pytest.mark.slow
def test_a_second_job_reads_the_features_back(digits_small: Path, tmp_path: Path) -> None:
    store = FeatureStore(directory=tmp_path / "features", data_key="digits-32")
    first, first_stem, model = _job(digits_small, tmp_path, store, "a")
    files = sorted((tmp_path / "features").glob("*.safetensors"))
    assert first_stem > 0 and len(files) == 1
    second, second_stem, _ = _job(digits_small, tmp_path, store, "b")
    assert second_stem == 0  # the frozen prefix never ran
    assert sorted((tmp_path / "features").glob("*.safetensors")) == files
    assert first.history[0]["stage"] == "probe"
    assert torch.equal(first.test_pred, second.test_pred)
    assert first.best_val_loss == second.best_val_loss

    # Other weights below the cut (same base model name): their own features.
    _, perturbed_stem, other = _job(digits_small, tmp_path, store, "c", perturb=True)
    assert perturbed_stem > 0
    assert weights_digest(other, other.pooled_level) != weights_digest(model, model.pooled_level)
    # Another cut level (two top blocks train): its own file too.
    _, deeper_stem, _ = _job(digits_small, tmp_path, store, "d", trainable_blocks=2)
    assert deeper_stem > 0
    assert len(list((tmp_path / "features").glob("*.safetensors"))) == 3
    # No temp file left behind by the atomic writes.
    assert not list((tmp_path / "features").glob("*.tmp"))


def test_worker_jobs_share_features_and_a_dataset_delete_removes_them(api, tmp_path):
    from app.core.config import get_settings
    from worker.tasks import execute

    archive = digits_zip(tmp_path / "d.zip", per_class=6, size=16, classes=3)
    with archive.open("rb") as f:
        dataset = api.post("/v1/datasets", files={"file": ("d.zip", f, "application/zip")}).json()
    spec = {"dataset_id": dataset["id"], "base_model": "tiny_cnn", "image_size": 16}
    features = get_settings().data_dir / "features" / dataset["id"]
    jobs = []
    for seed in (0, 0):
        job = api.post("/v1/jobs", json={**spec, "seed": seed}).json()
        assert execute(job_id=job["id"]) == "succeeded"
        jobs.append(api.get(f"/v1/jobs/{job['id']}").json())
        assert len(list(features.glob("*.safetensors"))) == 1
    assert [j["history"][0]["stage"] for j in jobs] == ["probe", "probe"]
    assert jobs[0]["metrics"]["test_accuracy"] == jobs[1]["metrics"]["test_accuracy"]
    assert api.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
    assert not features.exists()
