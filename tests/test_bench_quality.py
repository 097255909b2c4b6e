"""The pure parts of bench/quality.py: parsers on tiny generated files, metrics, splits,
uploads. Nothing here needs the installed datasets, a service or a backbone."""

import csv
import gzip
import io
import struct
import zipfile

import numpy as np
import pytest
from PIL import Image

from bench import quality


def write_idx(path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trips_images_and_labels(tmp_path, gz):
    images = np.random.RandomState(0).randint(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    write_idx(tmp_path / "imgs", images, gz)
    write_idx(tmp_path / "labels", labels, gz)
    assert np.array_equal(quality.read_idx(tmp_path / "imgs"), images)
    assert np.array_equal(quality.read_idx(tmp_path / "labels"), labels)


def test_read_idx_refuses_other_files(tmp_path):
    (tmp_path / "x").write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(ValueError, match="not an idx file"):
        quality.read_idx(tmp_path / "x")


def test_load_fashion_takes_a_stratified_seeded_subset(tmp_path):
    rng = np.random.RandomState(1)
    for prefix, n in (("train", 60), ("t10k", 40)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz",
                  rng.randint(0, 256, (n, 28, 28)), gz=True)  # fmt: skip
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10, gz=True)
    a = quality.load_fashion(20, 30, 32, seed=0, root=tmp_path)
    b = quality.load_fashion(20, 30, 32, seed=0, root=tmp_path)
    assert len(a.x_train) == 20 and len(a.x_test) == 30
    assert np.bincount(a.y_train).tolist() == [2] * 10
    assert np.bincount(a.y_test).tolist() == [3] * 10
    assert [np.asarray(im).tobytes() for im in a.x_train] == [
        np.asarray(im).tobytes() for im in b.x_train
    ]
    assert a.x_train[0].size == (28, 28)  # uploaded at its own size; the service resizes


DATA_NOUN = (
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "  2 Princeton University under the following license.  | not a gloss  \n"
    "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived  \n"
    '00002000 05 n 01 dog 0 000 | a domesticated canid; "the dog barked"  \n'
    "00002001 05 n 01 cat 0 000 | a small feline  \n"
    "00002002 06 n 01 chair 0 000 | a seat for one person  \n"
    "00002003 06 n 01 table 0 000 | furniture with a flat top  \n"
    "00002004 06 n 01 lamp 0 000 | a source of light  \n"
    "00002005 18 n 01 baker 0 000 | someone who bakes bread  \n"
    "00002006 18 n 01 smith 0 000 | someone who works metal  \n"
    "00002007 18 n 01 judge 0 000 | a public official  \n"
    "00002008 20 n 01 moss 0 000 | tiny leafy plants  \n"
)


def test_parse_noun_glosses_skips_the_license_and_reads_lexfile_and_gloss():
    glosses = quality.parse_noun_glosses(DATA_NOUN)
    assert glosses[0] == (3, "that which is perceived")
    assert (5, 'a domesticated canid; "the dog barked"') in glosses
    assert len(glosses) == 10
    assert all(not g.startswith("not a gloss") for _, g in glosses)


def test_load_wordnet_keeps_the_largest_lexical_files(tmp_path):
    path = tmp_path / "data.noun"
    path.write_text(DATA_NOUN)
    data = quality.load_wordnet(1, 1, n_classes=2, seed=0, path=path)
    assert data.classes == ["artifact", "person"]  # 3 glosses each; the rest have fewer
    assert len(data.x_train) == 2 and len(data.x_test) == 2
    assert not set(data.x_train) & set(data.x_test)  # held out means held out


def test_metrics_match_scikit_learn():
    from sklearn.metrics import f1_score, mean_squared_error, r2_score

    rng = np.random.RandomState(0)
    y, p = rng.randint(0, 4, 200), rng.randint(0, 4, 200)
    p[:120] = y[:120]
    assert quality.accuracy(y, p) == pytest.approx((y == p).mean())
    assert quality.macro_f1(y, p) == pytest.approx(f1_score(y, p, average="macro"))
    p[p == 3] = 2  # a class never predicted counts as F1 0
    assert quality.macro_f1(y, p) == pytest.approx(f1_score(y, p, average="macro"))

    t, q = rng.randint(0, 2, (50, 5)), rng.randint(0, 2, (50, 5))
    s = quality.multilabel_scores(t, q)
    assert s["micro_f1"] == pytest.approx(f1_score(t, q, average="micro"))
    assert s["macro_f1"] == pytest.approx(f1_score(t, q, average="macro", zero_division=0))
    assert s["subset_accuracy"] == pytest.approx((t == q).all(1).mean())

    yt, yp = rng.randn(40) * 10, rng.randn(40) * 10
    r = quality.regression_scores(yt, yp)
    assert r["r2"] == pytest.approx(r2_score(yt, yp))
    assert r["rmse"] == pytest.approx(mean_squared_error(yt, yp) ** 0.5)
    assert quality.headline("regression", r) == (r["r2"], r["rmse"])


def test_stratified_split_is_seeded_and_disjoint():
    labels = np.array([0] * 10 + [1] * 20)
    tr, te = quality.stratified_split(labels, 0.3, seed=3)
    assert not set(tr) & set(te) and len(tr) + len(te) == 30
    assert np.bincount(labels[te]).tolist() == [3, 6]
    tr2, te2 = quality.stratified_split(labels, 0.3, seed=3)
    assert tr.tolist() == tr2.tolist() and te.tolist() == te2.tolist()


def _data(**kw) -> quality.Data:
    base = dict(
        name="t", modality="image", kind="classification", base_model="efficientnet_lite0",
        describe="", x_train=[Image.new("L", (8, 8), 0), Image.new("L", (8, 8), 255)],
        y_train=np.array([0, 1]), x_test=[], y_test=np.array([]), classes=["a", "b"],
        image_size=64,
    )  # fmt: skip
    return quality.Data(**{**base, **kw})


def test_image_upload_is_a_zip_of_class_folders():
    name, body, form = quality.upload_payload(_data())
    names = zipfile.ZipFile(io.BytesIO(body)).namelist()
    assert name.endswith(".zip") and "task" not in form
    assert sorted(n.split("/")[0] for n in names) == ["a", "b"]


def test_multilabel_upload_carries_labels_csv_and_its_task():
    data = _data(kind="multilabel", y_train=np.array([[1, 1], [0, 1]]))
    _, body, form = quality.upload_payload(data)
    zf = zipfile.ZipFile(io.BytesIO(body))
    rows = list(csv.DictReader(io.StringIO(zf.read("labels.csv").decode())))
    assert [r["label"] for r in rows] == ["a|b", "b"]
    assert all(r["path"] in zf.namelist() for r in rows)
    assert form["task"] == "image_multilabel"


def test_tabular_upload_writes_missing_values_as_empty_cells():
    data = _data(
        modality="tabular", base_model="mlp", label_column="species",
        x_train=[{"island": "Dream", "mass": None}, {"island": None, "mass": 3.5}],
    )  # fmt: skip
    _, body, form = quality.upload_payload(data)
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert rows == [
        {"island": "Dream", "mass": "", "species": "a"},
        {"island": "", "mass": "3.5", "species": "b"},
    ]
    assert form == {"name": "t", "task": "tabular_classification", "label_column": "species"}


def test_tabular_matrix_imputes_flags_and_one_hots_on_train_only():
    data = _data(
        modality="tabular",
        x_train=[{"c": "x", "n": 1.0}, {"c": "y", "n": None}, {"c": "x", "n": 3.0}],
        x_test=[{"c": "z", "n": 2.0}],
    )
    xtr, xte = quality.tabular_matrix(data)
    # n standardised (mean-imputed), its missing flag, then one-hot c over {x, y}
    assert xtr.shape == (3, 4)
    assert xte[0, 2:].tolist() == [0.0, 0.0]  # unseen category: all zeros
    assert xtr[:, 2:].tolist() == [[1, 0], [0, 1], [1, 0]]


def test_reference_rows_are_reused_only_for_the_same_config():
    data = _data(config={"n": 1})
    old = {"datasets": {"t": {"config": {"n": 1}, "rows": {"lr": {"scores": {"accuracy": 1}}}}}}
    assert quality.reusable(old, data, "lr")["reused"] is True
    assert quality.reusable(old, _data(config={"n": 2}), "lr") is None
    assert quality.reusable(old, data, "ft") is None


def test_table_and_targets_read_a_results_dict():
    rows = {
        "lr": {"scores": {"accuracy": 0.90, "macro_f1": 0.89}, "seconds": 3.0},
        "default": {"scores": {"accuracy": 0.85, "macro_f1": 0.84}, "job_s": 5.0,
                    "post_to_done_s": 5.5},
        "auto": {"na": "task not supported"},
    }  # fmt: skip
    results = {"datasets": {"t": {"describe": "d", "kind": "classification",
                                  "bare_forward_s": 2.0, "rows": rows}}}  # fmt: skip
    text = quality.table(results)
    assert "| t | default | 0.850 | 0.840 | 5.0 | 5.5 |" in text
    assert "n/a (task not supported)" in text
    checks = quality.target_checks(results)
    assert any("default 0.850 ≥ LR 0.900 − 0.01: FAIL" in c for c in checks)
    assert any("default job 5.0 s ≤ 1.3 × 2.00 + 2 = 4.6 s: FAIL" in c for c in checks)
