"""Dataset loading: stratified val carving, the decode cache, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.training import data as data_module
from app.training.data import load_dataset
from app.training.errors import DatasetError

from .conftest import make_digits_dataset


def test_val_is_carved_stratified_and_seeded(digits_small: Path, tmp_path: Path) -> None:
    a = load_dataset(digits_small, image_size=32, cache_dir=tmp_path, val_fraction=0.25)
    assert len(a.train) == 90 and len(a.val) == 30 and len(a.test) == 30
    assert torch.bincount(a.val.labels).tolist() == [3] * 10
    b = load_dataset(digits_small, image_size=32, cache_dir=tmp_path, val_fraction=0.25)
    assert torch.equal(a.val.labels, b.val.labels) and torch.equal(a.val.images, b.val.images)
    c = load_dataset(digits_small, image_size=32, cache_dir=tmp_path, val_fraction=0.25, seed=1)
    assert not torch.equal(a.val.images, c.val.images)
    assert a.train.images.dtype == torch.uint8 and a.train.images.shape[1:] == (3, 32, 32)


def test_explicit_val_split_is_used(tmp_path: Path) -> None:
    ds = make_digits_dataset(
        tmp_path / "ds", train_per_class=3, val_per_class=2, test_per_class=1, classes=3
    )
    d = load_dataset(ds, image_size=16, cache_dir=tmp_path / "c")
    assert (len(d.train), len(d.val), len(d.test)) == (9, 6, 3)


def test_second_load_reads_the_cache(
    digits_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_dataset(digits_small, image_size=24, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("images-*-24.safetensors"))) == 1
    assert not list(tmp_path.glob("*.tmp"))

    def no_decode(*args, **kwargs):  # noqa: ANN202
        raise AssertionError("decoded again")

    monkeypatch.setattr(data_module, "_decode_all", no_decode)
    second = load_dataset(digits_small, image_size=24, cache_dir=tmp_path)
    assert torch.equal(first.train.images, second.train.images)
    with pytest.raises(AssertionError):  # another size is another cache entry
        load_dataset(digits_small, image_size=28, cache_dir=tmp_path)


def test_too_small_dataset_is_refused(tmp_path: Path) -> None:
    ds = make_digits_dataset(tmp_path / "ds", train_per_class=1, test_per_class=1, classes=3)
    with pytest.raises(DatasetError) as info:
        load_dataset(ds, image_size=16, cache_dir=tmp_path / "c")
    assert info.value.code == "dataset_too_small"


def test_bad_files_and_escaping_paths_are_refused(tmp_path: Path) -> None:
    ds = make_digits_dataset(tmp_path / "ds", train_per_class=2, test_per_class=1, classes=2)
    manifest = json.loads((ds / "manifest.json").read_text())
    (ds / manifest["samples"][0]["path"]).write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="cannot decode"):
        load_dataset(ds, image_size=16, cache_dir=tmp_path / "c")
    manifest["samples"][0]["path"] = "../../etc/passwd"
    (ds / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="escapes"):
        load_dataset(ds, image_size=16, cache_dir=tmp_path / "c")


def test_every_modality_loads_into_the_data_protocol(digits_small: Path, tmp_path: Path) -> None:
    # The loop reads a dataset only through data.TrainData; each loader must give one.
    from app.datasets.ingest import ingest_dataset
    from app.training import tabular, text
    from app.training.data import SplitData, TrainData
    from tests.csvdata import iris_csv, topics_csv

    loaded = [load_dataset(digits_small, image_size=32, cache_dir=tmp_path)]
    ingest_dataset(
        path=iris_csv(tmp_path / "iris.csv"), dest_dir=tmp_path / "iris", task=tabular.TASK
    )
    loaded.append(tabular.load_tabular_dataset(tmp_path / "iris", task=tabular.TASK))
    if text.package_dir() is not None:
        ingest_dataset(
            path=topics_csv(tmp_path / "t.csv"),
            dest_dir=tmp_path / "topics",
            task=text.TASK,
            label_column="topic",
            text_column="sentence",
        )
        loaded.append(text.load_text_dataset(tmp_path / "topics", max_length=16, task=text.TASK))
    for data in loaded:
        assert isinstance(data, TrainData), type(data)
        for split in (data.train, data.val, data.test):
            assert isinstance(split, SplitData), type(split)
            assert len(split) == len(split.inputs) == len(split.labels) > 0
