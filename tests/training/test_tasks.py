"""Multi-label and regression through the engine, for images, text and tables: ingested
by app/datasets/targets.py, trained by the one loop, predicted and exported by the task.

Real data: scikit-learn's diabetes (tabular regression), digits (image regression on the
digit's value; multi-label images of two digits side by side), a generated corpus
(multi-label text). The probes are checked against closed forms / scikit-learn."""

from __future__ import annotations

import csv
import io
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from app.datasets.common import IngestError
from app.datasets.targets import ingest_csv_targets, ingest_labelled_archive
from app.training.api import TrainConfig, train
from app.training.export import export
from app.training.inference import load_predictor
from app.training.tasks import (
    TASKS,
    Kind,
    fit_ridge,
    multilabel_metrics,
    tune_thresholds,
)
from app.training.text import weights_file
from tests.helpers import digit_images, png_bytes


def diabetes_csv(path: Path) -> Path:
    """scikit-learn's diabetes: 10 numeric columns and `target` (disease progression)."""
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*d.feature_names, "target"])
        for x, y in zip(d.data, d.target, strict=True):
            w.writerow([*(f"{v:.6f}" for v in x), f"{y:.1f}"])
    return path


def digits_regression_zip(path: Path, per_class: int, size: int = 16) -> Path:
    """Digits with labels.csv: the target is the digit's value as a number."""
    rows = ["path,label"]
    with zipfile.ZipFile(path, "w") as zf:
        for i, (label, img) in enumerate(digit_images(per_class, size)):
            zf.writestr(f"img/{i:05d}.png", png_bytes(img))
            rows.append(f"img/{i:05d}.png,{label}")
        zf.writestr("labels.csv", "\n".join(rows) + "\n")
    return path


def pairs_multilabel_zip(path: Path, n: int, size: int = 16, seed: int = 0) -> Path:
    """Two digits (of 0-3) side by side, labelled with both ("d1|d3"; "d2" for a pair of
    twos)."""
    from PIL import Image

    pool = list(digit_images(30, size, classes=4))
    rng = random.Random(seed)
    rows = ["path,label"]
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(n):
            (a, ia), (b, ib) = rng.choice(pool), rng.choice(pool)
            img = Image.new("RGB", (2 * size, size))
            img.paste(ia, (0, 0))
            img.paste(ib, (size, 0))
            zf.writestr(f"{i:05d}.png", png_bytes(img))
            rows.append(f"{i:05d}.png,d{a}|d{b}")
        zf.writestr("labels.csv", "\n".join(rows) + "\n")
    return path


TAGS = {
    "sport": ["goal", "match", "team", "score", "league"],
    "money": ["bank", "price", "market", "stock", "loan"],
    "food": ["bread", "cheese", "soup", "salad", "cake"],
}
FILLER = ["the", "a", "today", "we", "saw", "about", "news", "people", "said"]


def tags_csv(path: Path, n: int, seed: int = 0) -> Path:
    """A generated corpus: each text mixes words of 0-2 tags, labelled with those tags."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "tags"])
        for _ in range(n):
            tags = rng.sample(sorted(TAGS), rng.choice([0, 1, 1, 2]))
            words = [rng.choice(FILLER) for _ in range(4)]
            for t in tags:
                words += rng.sample(TAGS[t], 2)
            rng.shuffle(words)
            w.writerow([" ".join(words), "|".join(tags)])
    return path


def test_every_task_is_in_the_table():
    assert len(TASKS) == 9
    assert {t.kind for t in TASKS.values()} == set(Kind)
    assert TASKS["tabular_regression"].base_task == "tabular_classification"


def test_ridge_probe_matches_the_closed_form_and_picks_the_penalty_on_val():
    from sklearn.linear_model import Ridge

    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=g, dtype=torch.float64)
    y = x @ torch.arange(1.0, 9.0, dtype=torch.float64) + torch.randn(200, generator=g)
    fit = fit_ridge(x[:150], y[:150], x[150:], y[150:])
    alpha = 1.0 / fit.C
    ref = Ridge(alpha=alpha).fit(x[:150].numpy(), y[:150].numpy())
    assert np.allclose(fit.weight.double().numpy()[0], ref.coef_, atol=1e-3)
    assert abs(float(fit.bias) - ref.intercept_) < 1e-3
    assert fit.val_loss == min(g["val_loss"] for g in fit.grid)
    assert fit.val_score > 0.95


def test_thresholds_maximise_f1_and_metrics_match_sklearn():
    from sklearn.metrics import average_precision_score, f1_score

    rng = np.random.RandomState(0)
    y = (rng.rand(60, 3) < 0.4).astype(np.float32)
    scores = np.clip(y * 0.5 + rng.rand(60, 3) * 0.6, 0, 1).astype(np.float32)
    th = tune_thresholds(torch.from_numpy(scores), torch.from_numpy(y))
    for j in range(3):
        best = max(
            f1_score(y[:, j], scores[:, j] >= t, zero_division=0) for t in np.unique(scores[:, j])
        )
        assert f1_score(y[:, j], scores[:, j] >= th[j]) == pytest.approx(best)
    m = multilabel_metrics(torch.from_numpy(scores), torch.from_numpy(y), ["a", "b", "c"], th)
    pred = scores >= np.array(th)
    assert m["micro_f1"] == pytest.approx(f1_score(y, pred, average="micro"))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["map"] == pytest.approx(average_precision_score(y, scores, average="macro"))
    assert m["per_label"]["b"]["threshold"] == th[1] and m["per_label"]["b"]["support"] > 0


@pytest.mark.slow
def test_tabular_regression_on_diabetes(tmp_path):
    ds = tmp_path / "ds"
    m = ingest_csv_targets(
        csv_path=diabetes_csv(tmp_path / "d.csv"),
        dest_dir=ds,
        task="tabular_regression",
        label_column="target",
        test_fraction=0.25,
    )
    assert m["targets"]["count"] == 442 and m["splits"]["test"] == 111
    assert 150 < m["targets"]["mean"] < 155 and m["targets"]["min"] == 25.0
    result = train(
        config=TrainConfig(base_model="mlp", epochs=40, seed=0, batch_size=32),
        dataset_dir=ds,
        work_dir=tmp_path / "w",
        cache_dir=tmp_path / "c",
    )
    # Ridge on the raw features reaches R² ≈ 0.36-0.45 on such a split.
    assert result.metrics["r2"] > 0.25, result.metrics
    assert result.metrics["rmse"] < 65 and {"mae", "residual_std", "points"} <= set(result.metrics)
    assert result.history[0]["stage"] == "probe"
    # The MLP trained, and its linear form (ridge) beside it: on this nearly linear target
    # ridge does better on validation, and it is the model.
    board = {e.get("stage", e["strategy"]): e for e in result.leaderboard}
    assert set(board) == {"linear", "full"} and "val_r2" in board["full"], board
    assert board["linear"].get("chosen") and board["linear"]["val_r2"] > board["full"]["val_r2"]
    assert result.metrics["r2"] > 0.35, result.metrics
    p = load_predictor(result.artifact_dir)
    rows = list(csv.DictReader(open(tmp_path / "d.csv")))[:3]
    for r in rows:
        del r["target"]
        for k in r:
            r[k] = float(r[k])
    out = p.predict(p.check(rows))
    assert all(set(o) == {"value"} and 0 < o["value"] < 400 for o in out)
    # Huber is an option; a classification refuses it.
    huber = train(
        config=TrainConfig(base_model="mlp", epochs=5, loss="huber"),
        dataset_dir=ds,
        work_dir=tmp_path / "h",
        cache_dir=tmp_path / "c",
    )
    assert huber.metrics["r2"] > 0.1


def test_auto_on_a_linear_target_keeps_the_linear_model_ridge(tmp_path):
    """Tabular regression from random weights: rung 0 of `auto` is the linear model, fitted
    by the ridge probe; on a linear target no MLP beats it on validation R², so it is the
    model, and predicts the ridge's values."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 8))
    y = x @ rng.normal(size=8) * 10 + 50 + rng.normal(scale=1.0, size=240)
    path = tmp_path / "lin.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*(f"x{i}" for i in range(8)), "y"])
        w.writerows([*(f"{v:.5f}" for v in row), f"{t:.4f}"] for row, t in zip(x, y, strict=True))
    ds = tmp_path / "ds"
    ingest_csv_targets(csv_path=path, dest_dir=ds, task="tabular_regression", label_column="y")
    result = train(
        config=TrainConfig(base_model="mlp", strategy="auto", auto_budget_epochs=6, seed=0),
        dataset_dir=ds,
        work_dir=tmp_path / "w",
        cache_dir=tmp_path / "c",
    )
    board = result.leaderboard
    linear = next(e for e in board if e.get("stage") == "linear")
    assert linear["chosen"] and linear is board[0], board
    assert linear["val_r2"] > 0.98 and linear["trainable_params"] == 9
    assert all(e["val_r2"] < linear["val_r2"] for e in board[1:])
    assert result.metrics["r2"] > 0.98, result.metrics
    p = load_predictor(result.artifact_dir)
    rows = [{f"x{i}": float(v) for i, v in enumerate(row)} for row in x[:4]]
    values = [o["value"] for o in p.predict(p.check(rows))]
    assert values == pytest.approx(list(y[:4]), abs=4.0)


def _image_train(ds, tmp_path, **kw):
    return train(
        config=TrainConfig(base_model="tiny_cnn", image_size=16, batch_size=16, seed=0, **kw),
        dataset_dir=ds,
        work_dir=tmp_path / "w",
        cache_dir=tmp_path / "c",
    )


@pytest.mark.slow
def test_image_regression_on_digit_values_predicts_and_exports(tmp_path):
    ds = tmp_path / "ds"
    m = ingest_labelled_archive(
        archive_path=digits_regression_zip(tmp_path / "r.zip", 20),
        dest_dir=ds,
        task="image_regression",
    )
    assert m["targets"]["count"] == 200 and m["targets"]["min"] == 0 and m["targets"]["max"] == 9
    result = _image_train(ds, tmp_path, epochs=30, learning_rate=3e-3)
    assert result.metrics["r2"] > 0.3, result.metrics
    p = load_predictor(result.artifact_dir)
    imgs = [img for _, img in digit_images(1, 16)]
    values = p.predict(p.check(imgs))
    assert all(set(v) == {"value"} for v in values)
    path = export(result.artifact_dir, "torchscript")
    ts = torch.jit.load(str(path))
    x = torch.stack([torch.from_numpy(np.asarray(i)).permute(2, 0, 1) for i in imgs]).float() / 255
    assert torch.allclose(ts(x)[:, 0], torch.tensor([v["value"] for v in values]), atol=1e-3)


@pytest.mark.slow
def test_image_multilabel_on_digit_pairs_tunes_thresholds(tmp_path):
    ds = tmp_path / "ds"
    m = ingest_labelled_archive(
        archive_path=pairs_multilabel_zip(tmp_path / "m.zip", 240),
        dest_dir=ds,
        task="image_multilabel",
    )
    assert m["classes"] == ["d0", "d1", "d2", "d3"]
    assert set(m["targets"]["label_set_sizes"]) <= {"1", "2"}
    result = _image_train(ds, tmp_path, epochs=25, learning_rate=3e-3, class_weights="auto")
    met = result.metrics
    assert met["micro_f1"] > 0.6 and met["map"] > 0.6, met
    assert set(met["per_label"]["d1"]) == {
        "precision",
        "recall",
        "f1",
        "threshold",
        "support",
        "ap",
    }
    p = load_predictor(result.artifact_dir)
    assert len(p.config["thresholds"]) == 4
    out = p.predict(p.check([img for _, img in digit_images(1, 16, classes=1)] * 1), top_k=4)
    # (a 16 px single digit is not a pair; only the shape is checked here)
    scores = [t["score"] for t in out[0]["top_k"]]
    assert scores == sorted(scores, reverse=True) and set(out[0]) == {"labels", "top_k"}


def test_bad_targets_are_named(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("x,target\n1,2.5\n2,abc\n3,4\n")
    with pytest.raises(IngestError) as e:
        ingest_csv_targets(
            csv_path=bad, dest_dir=tmp_path / "a", task="tabular_regression", label_column="target"
        )
    assert "line 3" in e.value.message and "'target'" in e.value.message
    always = tmp_path / "always.csv"
    always.write_text("text,tags\n" + "".join(f"w{i},a|b{i % 2}\n" for i in range(10)))
    with pytest.raises(IngestError) as e:
        ingest_csv_targets(
            csv_path=always, dest_dir=tmp_path / "b", task="text_multilabel", label_column="tags"
        )
    assert "'a'" in e.value.message and "every row" in e.value.message
    one = tmp_path / "one.csv"
    one.write_text("text,tags\n" + "".join(f"w{i},{'a' if i % 2 else ''}\n" for i in range(10)))
    with pytest.raises(IngestError, match="at least 2"):
        ingest_csv_targets(
            csv_path=one, dest_dir=tmp_path / "c", task="text_multilabel", label_column="tags"
        )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("labels.csv", "path,label\na.png,1\n")
    (tmp_path / "z.zip").write_bytes(buf.getvalue())
    with pytest.raises(IngestError, match="line 2: no image 'a.png'"):
        ingest_labelled_archive(
            archive_path=tmp_path / "z.zip", dest_dir=tmp_path / "d", task="image_regression"
        )


@pytest.mark.slow
@pytest.mark.skipif(weights_file() is None, reason="MiniLM-L6 weights not installed")
def test_text_multilabel_probe(tmp_path):
    ds = tmp_path / "ds"
    m = ingest_csv_targets(
        csv_path=tags_csv(tmp_path / "t.csv", 160),
        dest_dir=ds,
        task="text_multilabel",
        label_column="tags",
    )
    assert m["classes"] == ["food", "money", "sport"] and "0" in m["targets"]["label_set_sizes"]
    result = train(
        config=TrainConfig(base_model="minilm-l6", max_length=32, seed=0),
        dataset_dir=ds,
        work_dir=tmp_path / "w",
        cache_dir=tmp_path / "c",
    )
    assert result.strategy == "partial" and len(result.history) == 1  # the probe alone
    assert result.metrics["micro_f1"] > 0.85, result.metrics
    p = load_predictor(result.artifact_dir)
    out = p.predict(p.check(["the bank raised the loan price", "a cheese soup today"]), top_k=2)
    assert "money" in out[0]["labels"] and "food" in out[1]["labels"]


@pytest.mark.slow
def test_tabular_multilabel_on_digit_features(tmp_path):
    """Digits as 64 pixel columns, labelled with what they are: even, over 4, a 0/6/8/9
    (a loop)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    path = tmp_path / "d.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*(f"p{i}" for i in range(64)), "tags"])
        for x, y in list(zip(d.data, d.target, strict=True))[:400]:
            tags = [
                t
                for t, on in (("even", y % 2 == 0), ("big", y > 4), ("loop", y in (0, 6, 8, 9)))
                if on
            ]
            w.writerow([*(int(v) for v in x), "|".join(tags)])
    ds = tmp_path / "ds"
    ingest_csv_targets(csv_path=path, dest_dir=ds, task="tabular_multilabel", label_column="tags")
    result = train(
        config=TrainConfig(base_model="mlp", epochs=15, seed=0, class_weights="auto"),
        dataset_dir=ds,
        work_dir=tmp_path / "w",
        cache_dir=tmp_path / "c",
    )
    assert result.metrics["micro_f1"] > 0.85 and result.metrics["map"] > 0.9, result.metrics
    assert "val_map" in result.history[-1]


@pytest.mark.slow
@pytest.mark.skipif(weights_file() is None, reason="MiniLM-L6 weights not installed")
def test_text_regression_probe_is_ridge(tmp_path):
    """The target: how many money words a text has (0-4)."""
    rng = random.Random(1)
    path = tmp_path / "t.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "amount"])
        for _ in range(120):
            k = rng.randint(0, 4)
            words = rng.sample(TAGS["money"], k) + [rng.choice(FILLER) for _ in range(6 - k)]
            rng.shuffle(words)
            w.writerow([" ".join(words), k])
    ds = tmp_path / "ds"
    ingest_csv_targets(csv_path=path, dest_dir=ds, task="text_regression", label_column="amount")
    result = train(
        config=TrainConfig(base_model="minilm-l6", max_length=16, seed=0),
        dataset_dir=ds,
        work_dir=tmp_path / "w",
        cache_dir=tmp_path / "c",
    )
    probe = result.history[0]
    assert probe["stage"] == "probe" and len(probe["grid"]) == 8  # the ridge penalties
    assert result.metrics["r2"] > 0.6, result.metrics


@pytest.mark.slow
@pytest.mark.parametrize("task", ["image_regression", "image_multilabel"])
def test_resume_matches_uninterrupted_run_per_task(task, tmp_path):
    from tests.training.test_resume import without_timing

    make = digits_regression_zip if task == "image_regression" else pairs_multilabel_zip
    arg = 6 if task == "image_regression" else 60
    ds = tmp_path / "ds"
    ingest_labelled_archive(archive_path=make(tmp_path / "a.zip", arg), dest_dir=ds, task=task)
    config = TrainConfig(
        base_model="tiny_cnn",
        strategy="layerwise",
        trainable_blocks=2,
        epochs=4,
        learning_rate=0.01,
        batch_size=16,
        image_size=16,
        early_stopping_patience=None,
        device="cpu",
        seed=3,
    )
    kw = {"config": config, "dataset_dir": ds, "cache_dir": tmp_path / "c"}
    whole = train(work_dir=tmp_path / "whole", **kw)
    stop = {"now": False}

    def on_epoch(report: dict) -> None:
        stop["now"] = report["epoch"] == 2

    from app.training.errors import Cancelled

    with pytest.raises(Cancelled):
        train(work_dir=tmp_path / "split", on_epoch=on_epoch, should_stop=lambda: stop["now"], **kw)
    resumed = train(work_dir=tmp_path / "split", **kw)
    assert without_timing(resumed.history) == without_timing(whole.history)
    assert resumed.metrics == whole.metrics


@pytest.mark.slow
def test_auto_searches_on_the_task_score(tmp_path):
    ds = tmp_path / "ds"
    ingest_labelled_archive(
        archive_path=digits_regression_zip(tmp_path / "r.zip", 10),
        dest_dir=ds,
        task="image_regression",
    )
    result = train(
        config=TrainConfig(
            base_model="tiny_cnn", strategy="auto", auto_budget_epochs=4, image_size=16, epochs=3
        ),
        dataset_dir=ds,
        work_dir=tmp_path / "w",
        cache_dir=tmp_path / "c",
        feature_dir=tmp_path / "f",
    )
    board = result.leaderboard
    assert board and all(e["val_r2"] == e["val_score"] for e in board)
    assert [e["val_score"] for e in board] == sorted((e["val_score"] for e in board), reverse=True)
    assert "r2" in result.metrics and board[0]["chosen"]
