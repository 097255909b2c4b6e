"""Ingestion of image archives, CSVs and uploads: real files built in tmp_path."""

from __future__ import annotations

import csv
import gzip
import io
import json
import resource
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.datasets.ingest import (
    IngestError,
    Limits,
    ingest_csv,
    ingest_dataset,
    ingest_image_archive,
    sniff_format,
)
from tests.datasets.conftest import (
    imagefolder,
    png_bomb_header,
    png_bytes,
    tar_bomb,
    tar_special,
    write_tar,
    write_zip,
    zip_bomb,
    zip_symlink,
)

# --- helpers -------------------------------------------------------------------------


def ingest(archive: Path, dest: Path, **kw) -> dict:
    return ingest_image_archive(archive_path=archive, dest_dir=dest, **kw)


def assert_fails(code: str, archive: Path, tmp_path: Path, **kw) -> IngestError:
    """Ingest must fail with `code` and leave nothing behind, fresh folder or not."""
    dest = tmp_path / "out"
    with pytest.raises(IngestError) as err:
        ingest(archive, dest, **kw)
    assert err.value.code == code, err.value.message
    assert not dest.exists()
    dest.mkdir()  # an existing, empty folder is left empty
    with pytest.raises(IngestError) as again:
        ingest(archive, dest, **kw)
    assert again.value.code == code
    assert list(dest.iterdir()) == []
    dest.rmdir()
    assert len(err.value.message) < 400
    return err.value


def check_manifest(manifest: dict, dest: Path) -> None:
    assert json.loads((dest / "manifest.json").read_text("utf-8")) == manifest
    assert sorted(p.name for p in dest.iterdir()) == ["files", "manifest.json"]
    stored = sorted(p.name for p in (dest / "files").iterdir())
    assert stored == sorted(s["path"].removeprefix("files/") for s in manifest["samples"])
    for s in manifest["samples"]:
        assert s["path"] == f"files/{manifest['samples'].index(s):06d}.png"
        with Image.open(dest / s["path"]) as im:
            im.load()
    assert sum(manifest["splits"].values()) == manifest["num_samples"]


# --- good archives -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    ["zip", "tar.gz", "tar", "tar.bz2", "tar.xz"],
)
def test_digits_archive(kind, digits, tmp_path):
    entries = imagefolder(digits)
    archive = tmp_path / f"digits.{kind}"
    if kind == "zip":
        write_zip(archive, entries)
    else:
        write_tar(archive, entries, mode="w" + (":" + kind.split(".")[1] if "." in kind else ""))
    dest = tmp_path / "out"
    manifest = ingest(archive, dest)
    assert manifest["task"] == "image_classification"
    assert manifest["classes"] == ["0", "1", "2"]
    assert manifest["class_counts"] == {"0": 10, "1": 10, "2": 10}
    assert manifest["num_samples"] == 30
    assert manifest["splits"] == {"train": 24, "val": 0, "test": 6}
    assert manifest["split_class_counts"]["test"] == {"0": 2, "1": 2, "2": 2}
    assert manifest["split_source"] == "generated"
    by_source = {s["source"]: s for s in manifest["samples"]}
    assert by_source["1/img_004.png"]["label"] == 1
    check_manifest(manifest, dest)


def test_split_is_deterministic_and_independent_of_member_order(digits, tmp_path):
    entries = imagefolder(digits)
    a = write_zip(tmp_path / "a.zip", entries)
    b = write_zip(tmp_path / "b.zip", entries[::-1])

    def test_sources(archive, dest, seed=0):
        m = ingest(archive, tmp_path / dest, seed=seed)
        return {s["source"] for s in m["samples"] if s["split"] == "test"}

    first = test_sources(a, "a1")
    assert test_sources(a, "a2") == first
    assert test_sources(b, "b1") == first
    assert test_sources(a, "a3", seed=1) != first


def test_train_val_test_folders(digits, tmp_path):
    entries = []
    for cls, blobs in digits.items():
        entries += [(f"train/{cls}/{i}.png", d) for i, d in enumerate(blobs[:6])]
        entries += [(f"val/{cls}/{i}.png", d) for i, d in enumerate(blobs[6:8])]
        entries += [(f"Test/{cls}/{i}.png", d) for i, d in enumerate(blobs[8:])]
    dest = tmp_path / "out"
    manifest = ingest(write_tar(tmp_path / "s.tgz", entries), dest)
    assert manifest["splits"] == {"train": 18, "val": 6, "test": 6}
    assert manifest["split_source"] == "archive"
    assert manifest["class_counts"] == {"0": 10, "1": 10, "2": 10}
    for s in manifest["samples"]:
        assert s["source"].split("/")[0].lower() == s["split"]
    check_manifest(manifest, dest)


def test_train_folder_only_gets_a_generated_test_split(digits, tmp_path):
    manifest = ingest(write_zip(tmp_path / "t.zip", imagefolder(digits, "train/")), tmp_path / "o")
    assert manifest["splits"] == {"train": 24, "val": 0, "test": 6}


def test_wrapping_root_folder_and_junk_are_tolerated(digits, tmp_path):
    entries = imagefolder(digits, "digits/") + [
        ("digits/", b""),
        ("__MACOSX/digits/0/._img_000.png", b"\x00\x05\x16\x07 apple double"),
        ("digits/.DS_Store", b"\x00\x00\x00\x01Bud1"),
        ("digits/1/.hidden.png", b"not an image"),
        ("digits/2/Thumbs.db", b"junk"),
    ]
    dest = tmp_path / "out"
    manifest = ingest(write_zip(tmp_path / "w.zip", entries), dest)
    assert manifest["classes"] == ["0", "1", "2"]
    assert manifest["num_samples"] == 30
    check_manifest(manifest, dest)


def test_stored_extension_follows_content_not_name(digits, tmp_path):
    jpeg = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(jpeg, format="JPEG")
    entries = [("a/x.png", jpeg.getvalue()), ("a/y.png", jpeg.getvalue())]
    entries += [("a/v.png", jpeg.getvalue())]  # three a class: one is held out as test
    entries += [("b/z.dat", digits["0"][0]), ("b/w", digits["0"][1]), ("b/u", digits["0"][2])]
    manifest = ingest(write_zip(tmp_path / "m.zip", entries), tmp_path / "o")
    paths = {s["source"]: s["path"] for s in manifest["samples"]}
    assert paths["a/x.png"].endswith(".jpg") and paths["b/w"].endswith(".png")


# --- hostile archives ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../evil.png",
        "0/../../evil.png",
        "/etc/evil.png",
        "C:/evil.png",
        "c:evil.png",
        "..\\evil.png",
        "0\\..\\..\\evil.png",
        "0/bad\x01name.png",
    ],
)
@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_path_traversal_is_refused(name, kind, digits, tmp_path):
    entries = imagefolder(digits) + [(name, digits["0"][0])]
    archive = (write_zip if kind == "zip" else write_tar)(tmp_path / f"x.{kind}", entries)
    err = assert_fails("unsafe_path", archive, tmp_path)
    assert "evil" in err.message or "bad" in err.message
    assert not (tmp_path.parent / "evil.png").exists()


def test_zip_symlink_is_refused(digits, tmp_path):
    entries = imagefolder(digits) + [zip_symlink("0/link.png", "/etc/passwd")]
    err = assert_fails("symlink_in_archive", write_zip(tmp_path / "l.zip", entries), tmp_path)
    assert "0/link.png" in err.message


@pytest.mark.parametrize(
    "special, code",
    [
        (tar_special("0/link.png", tarfile.SYMTYPE, "/etc/passwd"), "symlink_in_archive"),
        (tar_special("0/hard.png", tarfile.LNKTYPE, "1/img_000.png"), "symlink_in_archive"),
        (tar_special("0/dev.png", tarfile.CHRTYPE), "special_file_in_archive"),
        (tar_special("0/fifo.png", tarfile.FIFOTYPE), "special_file_in_archive"),
    ],
)
def test_tar_links_and_devices_are_refused(special, code, digits, tmp_path):
    archive = write_tar(tmp_path / "l.tgz", imagefolder(digits) + [special])
    err = assert_fails(code, archive, tmp_path)
    assert special.name in err.message


def test_too_many_members(digits, tmp_path):
    for kind, write in (("zip", write_zip), ("tgz", write_tar)):
        archive = write(tmp_path / f"m.{kind}", imagefolder(digits))
        assert_fails("archive_too_large", archive, tmp_path, limits=Limits(max_members=29))


def test_member_and_total_size_limits(digits, tmp_path):
    big = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), "uint8"))
    entries = imagefolder(digits) + [("0/big.png", big)]
    for kind, write in (("zip", write_zip), ("tgz", write_tar)):
        archive = write(tmp_path / f"s.{kind}", entries)
        err = assert_fails(
            "archive_too_large", archive, tmp_path, limits=Limits(max_member_bytes=len(big) - 1)
        )
        assert "0/big.png" in err.message
        total = sum(len(d) for _, d in entries)
        assert_fails(
            "archive_too_large", archive, tmp_path, limits=Limits(max_total_bytes=total - 1)
        )


def test_zip_bomb_is_caught_by_ratio(digits, tmp_path):
    archive = zip_bomb(tmp_path / "bomb.zip", extra=imagefolder(digits))
    err = assert_fails("compression_ratio", archive, tmp_path)
    assert "bomb/zeros.png" in err.message


def test_tar_bomb_is_caught_by_ratio(tmp_path):
    assert_fails("compression_ratio", tar_bomb(tmp_path / "bomb.tgz"), tmp_path)


def test_sizes_are_counted_on_decompressed_bytes(digits, tmp_path):
    archive = zip_bomb(tmp_path / "bomb.zip", megabytes=8)
    # max_ratio high so only the size limit can stop it
    err = assert_fails(
        "archive_too_large",
        archive,
        tmp_path,
        limits=Limits(max_ratio=1e9, max_member_bytes=4 * 1024**2),
    )
    assert "bomb/zeros.png" in err.message


def test_understated_zip_sizes_are_not_trusted(digits, tmp_path):
    """A central directory that claims a 2 MB member holds 100 bytes does not get it through."""
    archive = write_zip(tmp_path / "lie.zip", imagefolder(digits) + [("0/big.png", bytes(2**21))])
    data = bytearray(archive.read_bytes())
    record = data.rfind(b"PK\x01\x02")  # the last central record: 0/big.png
    assert data[record + 46 : record + 46 + 9] == b"0/big.png"
    data[record + 24 : record + 28] = (100).to_bytes(4, "little")  # uncompressed size
    archive.write_bytes(bytes(data))
    assert_fails("corrupt_archive", archive, tmp_path)


@pytest.mark.parametrize(
    "build, code",
    [
        (lambda p: zip_bomb(p / "b.zip", 200), "archive_too_large"),
        (lambda p: tar_bomb(p / "b.tgz", 60), "not_an_image"),
    ],
    ids=["zip", "tar.gz"],
)
def test_bomb_memory_stays_bounded(build, code, tmp_path):
    """With the ratio check off, 60-64 MB of zeros stream through: memory must not follow."""
    archive = build(tmp_path)
    limits = Limits(max_ratio=1e12)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    try:
        with pytest.raises(IngestError) as err:
            ingest(archive, tmp_path / "out", limits=limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rss_growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert err.value.code == code, err.value.message
    assert peak < 8 * 1024**2, f"python allocations peaked at {peak / 1024**2:.1f} MiB"
    assert rss_growth_mib < 48, f"peak RSS grew by {rss_growth_mib:.0f} MiB"
    assert not (tmp_path / "out").exists()


def test_png_decompression_bomb(digits, tmp_path):
    entries = imagefolder(digits) + [("0/bomb.png", png_bomb_header(20000, 20000))]
    err = assert_fails("image_too_large", write_zip(tmp_path / "p.zip", entries), tmp_path)
    assert "0/bomb.png" in err.message and "pixels" in err.message


def test_pixel_limit_is_local_not_global(digits, tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    archive = write_zip(tmp_path / "d.zip", imagefolder(digits))
    assert_fails("image_too_large", archive, tmp_path, limits=Limits(max_image_pixels=32 * 32 - 1))
    assert Image.MAX_IMAGE_PIXELS == before
    # Pillow's own guard, should a host set it lower than ours, maps to the same code.
    try:
        Image.MAX_IMAGE_PIXELS = 100
        assert_fails("image_too_large", archive, tmp_path)
    finally:
        Image.MAX_IMAGE_PIXELS = before


@pytest.mark.parametrize(
    "bad, code",
    [
        (lambda d: d["0"][0][: len(d["0"][0]) // 2], "not_an_image"),  # truncated PNG
        (lambda d: b"hello, I am a text file\n", "not_an_image"),
        (lambda d: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "not_an_image"),
        (lambda d: b"", "not_an_image"),
    ],
    ids=["truncated", "text", "eps", "empty"],
)
def test_undecodable_members(bad, code, digits, tmp_path):
    entries = imagefolder(digits) + [("1/bad.png", bad(digits))]
    err = assert_fails(code, write_tar(tmp_path / "b.tgz", entries), tmp_path)
    assert "1/bad.png" in err.message


def test_empty_archive(tmp_path):
    assert_fails("empty_dataset", write_zip(tmp_path / "e.zip", []), tmp_path)
    assert_fails("empty_dataset", write_tar(tmp_path / "e.tar", [], mode="w"), tmp_path)
    only_junk = [("__MACOSX/._a.png", b"x"), (".DS_Store", b"x")]
    assert_fails("empty_dataset", write_zip(tmp_path / "j.zip", only_junk), tmp_path)


def test_single_class_and_too_few_samples(digits, tmp_path):
    one = write_zip(tmp_path / "one.zip", imagefolder({"0": digits["0"]}))
    assert_fails("single_class", one, tmp_path)
    wrapped = write_zip(tmp_path / "w.zip", imagefolder({"0": digits["0"]}, "root/"))
    assert_fails("single_class", wrapped, tmp_path)
    few = write_zip(tmp_path / "few.zip", imagefolder({"0": digits["0"], "1": digits["1"][:1]}))
    err = assert_fails("too_few_samples", few, tmp_path)
    assert "'1' (1)" in err.message


def test_layout_errors(digits, tmp_path):
    loose = write_zip(tmp_path / "l.zip", imagefolder(digits) + [("stray.png", digits["0"][0])])
    assert_fails("bad_layout", loose, tmp_path)
    no_train = [(f"test/{c}/{i}.png", d) for c, b in digits.items() for i, d in enumerate(b)]
    assert_fails("bad_layout", write_zip(tmp_path / "n.zip", no_train), tmp_path)
    only_test = [(f"train/0/{i}.png", d) for i, d in enumerate(digits["0"])]
    only_test += [(f"test/1/{i}.png", d) for i, d in enumerate(digits["1"])]
    assert_fails("bad_layout", write_zip(tmp_path / "o.zip", only_test), tmp_path)


def test_bad_class_name(digits, tmp_path):
    entries = imagefolder(digits) + [
        ("a\u202eb/x.png", digits["0"][0]),
        ("a\u202eb/y.png", digits["0"][1]),
    ]
    assert_fails("bad_class_name", write_zip(tmp_path / "c.zip", entries), tmp_path)


def test_corrupt_and_encrypted_zip(digits, tmp_path):
    good = write_zip(tmp_path / "g.zip", imagefolder(digits)).read_bytes()
    corrupt = tmp_path / "c.zip"
    corrupt.write_bytes(good[:4] + b"\xff" * 200 + good[204:])
    assert_fails("corrupt_archive", corrupt, tmp_path)
    truncated = tmp_path / "t.tgz"
    truncated.write_bytes(write_tar(tmp_path / "full.tgz", imagefolder(digits)).read_bytes()[:3000])
    assert_fails("corrupt_archive", truncated, tmp_path)
    plain = write_tar(tmp_path / "plain.tar", imagefolder(digits), mode="w").read_bytes()
    garbled = tmp_path / "garbled.tar"
    garbled.write_bytes(plain[:2048] + b"garbage!" * 64 + plain[2560:])
    assert "invalid tar header" in assert_fails("corrupt_archive", garbled, tmp_path).message
    # zipfile cannot write encrypted members: set the flag bit in each central record.
    data = bytearray(good)
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        data[at + 8] |= 0x1
        at = data.find(b"PK\x01\x02", at + 4)
    encrypted = tmp_path / "x.zip"
    encrypted.write_bytes(bytes(data))
    assert_fails("encrypted_archive", encrypted, tmp_path)


def test_long_member_names_are_not_echoed_whole(digits, tmp_path):
    name = "0/" + "a" * 5000 + ".txt"
    err = assert_fails(
        "not_an_image",
        write_zip(tmp_path / "n.zip", imagefolder(digits) + [(name, b"x")]),
        tmp_path,
    )
    assert len(err.message) < 300


def test_a_csv_is_not_an_image_archive(tmp_path):
    csv_file = tmp_path / "x.zip"
    csv_file.write_text("text,label\nhello,a\n")
    assert_fails("unsupported_format", csv_file, tmp_path)


# --- sniffing ------------------------------------------------------------------------


def test_sniff_format_by_content(digits, tmp_path):
    assert sniff_format(write_zip(tmp_path / "a.csv", imagefolder(digits))) == "zip"
    assert sniff_format(write_zip(tmp_path / "empty.bin", [])) == "zip"
    for mode in ("w", "w:gz", "w:bz2", "w:xz"):
        assert (
            sniff_format(write_tar(tmp_path / f"t{mode[2:]}.zip", imagefolder(digits), mode))
            == "tar"
        )
    text = tmp_path / "data.zip"
    text.write_text("a;b\n1;2\n", encoding="utf-8")
    assert sniff_format(text) == "csv"
    latin = tmp_path / "latin.txt"
    latin.write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    assert sniff_format(latin) == "csv"  # ingest_csv then names the encoding problem
    for name, data in [
        ("img.csv", digits["0"][0]),
        ("empty.csv", b""),
        ("gz.tar", gzip.compress(b"just text")),
        ("bin.csv", bytes(range(256)) * 4),
    ]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(IngestError) as err:
            sniff_format(tmp_path / name)
        assert err.value.code == "unsupported_format"


# --- CSV -----------------------------------------------------------------------------


def write_csv(path: Path, rows: list[list], encoding: str = "utf-8", delimiter: str = ",") -> Path:
    with open(path, "w", encoding=encoding, newline="") as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)
    return path


def read_data(dest: Path) -> list[dict]:
    with open(dest / "data.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def text_rows(n: int = 10) -> list[list]:
    rows = [["id", "text", "label"]]
    for i in range(n):
        rows.append([i, f'a lovely, "quoted" day\nnumber {i}', "pos"])
        rows.append([i, f"a dreadful day number {i}", "neg"])
    return rows


def assert_csv_fails(code: str, path: Path, tmp_path: Path, **kw) -> IngestError:
    dest = tmp_path / "out"
    with pytest.raises(IngestError) as err:
        ingest_csv(csv_path=path, dest_dir=dest, **kw)
    assert err.value.code == code, err.value.message
    assert not dest.exists()
    return err.value


def test_text_csv(tmp_path):
    src = write_csv(tmp_path / "t.csv", text_rows(), encoding="utf-8-sig")  # with BOM
    dest = tmp_path / "out"
    m = ingest_csv(csv_path=src, dest_dir=dest, task="text_classification")
    assert m["classes"] == ["neg", "pos"]
    assert m["class_counts"] == {"neg": 10, "pos": 10}
    assert m["splits"] == {"train": 16, "val": 0, "test": 4}
    assert m["columns"] == ["text", "label", "split"]
    assert json.loads((dest / "manifest.json").read_text()) == m
    rows = read_data(dest)
    assert len(rows) == 20
    assert rows[0]["text"] == 'a lovely, "quoted" day\nnumber 0'
    assert sum(r["split"] == "test" for r in rows) == 4
    assert {r["label"] for r in rows if r["split"] == "test"} == {"neg", "pos"}


def test_tabular_iris_csv(tmp_path):
    from sklearn.datasets import load_iris

    iris = load_iris()
    features = [*iris.feature_names, "color"]
    src = write_csv(
        tmp_path / "iris.csv",
        [[*features, "species"]]
        + [
            [*map(float, x), ["red", "green", "NA"][i % 3], iris.target_names[t]]
            for i, (x, t) in enumerate(zip(iris.data, iris.target, strict=True))
        ],
    )
    dest = tmp_path / "out"
    m = ingest_csv(
        csv_path=src, dest_dir=dest, task="tabular_classification", label_column="species", seed=3
    )
    assert m["num_samples"] == 150
    assert m["classes"] == ["setosa", "versicolor", "virginica"]
    assert m["splits"] == {"train": 120, "val": 0, "test": 30}
    assert m["split_class_counts"]["test"] == {"setosa": 10, "versicolor": 10, "virginica": 10}
    assert m["feature_types"] == {c: "numeric" for c in features[:4]} | {"color": "categorical"}
    assert m["categories"] == {"color": ["green", "red"]}
    assert m["missing_counts"]["color"] == 50
    assert m["columns"] == [*features, "species", "split"]
    rows = read_data(dest)
    assert rows[2]["color"] == "" and rows[0]["sepal length (cm)"] == "5.1"
    again = ingest_csv(
        csv_path=src,
        dest_dir=tmp_path / "again",
        task="tabular_classification",
        label_column="species",
        seed=3,
    )
    assert again == m
    assert read_data(tmp_path / "again") == rows


def test_csv_split_column_and_semicolons(tmp_path):
    rows = [["x", "label", "split"]]
    rows += [
        [i, "ab"[i % 2], "train" if i < 8 else "Validation" if i < 10 else "test"]
        for i in range(12)
    ]
    src = write_csv(tmp_path / "s.csv", rows, delimiter=";")
    m = ingest_csv(csv_path=src, dest_dir=tmp_path / "o", task="tabular_classification")
    assert m["splits"] == {"train": 8, "val": 2, "test": 2}
    assert m["split_source"] == "archive"
    assert m["feature_columns"] == ["x"]
    assert [r["split"] for r in read_data(tmp_path / "o")][7:10] == ["train", "val", "val"]


def test_csv_missing_column(tmp_path):
    src = write_csv(tmp_path / "t.csv", text_rows())
    err = assert_csv_fails(
        "missing_column", src, tmp_path, task="text_classification", text_column="review"
    )
    assert "'review'" in err.message and "'id', 'text', 'label'" in err.message
    err = assert_csv_fails(
        "missing_column", src, tmp_path, task="tabular_classification", label_column="y"
    )
    assert "'y'" in err.message


def test_csv_ragged_row_names_its_line(tmp_path):
    src = tmp_path / "r.csv"
    src.write_text('text,label\nfine,a\n"two\nlines",b\nok,a\nbroken,b,extra\nok,b\n')
    err = assert_csv_fails("bad_csv", src, tmp_path, task="text_classification")
    assert "line 6" in err.message and "3 fields" in err.message


def test_csv_bad_encoding(tmp_path):
    src = tmp_path / "l.csv"
    src.write_bytes("text,label\nfine,a\nok,b\ncaf\xe9 au lait,a\n".encode("latin-1"))
    err = assert_csv_fails("bad_encoding", src, tmp_path, task="text_classification")
    assert "line 4" in err.message and "0xe9" in err.message
    utf16 = write_csv(tmp_path / "u.csv", text_rows(), encoding="utf-16")
    err = assert_csv_fails("bad_encoding", utf16, tmp_path, task="text_classification")
    assert "UTF-16" in err.message


@pytest.mark.parametrize(
    "content, code, where",
    [
        ("text,label\nhi,a\n   ,b\nyo,b\n", "empty_text", "line 3"),
        ("text,label\nhi,a\nho,\nyo,b\n", "bad_csv", "line 3"),
        ("text,label\nhi,a\nho,a\nyo,a\n", "single_class", "'a'"),
        ("text,label\nhi,a\nho,a\nyo,b\n", "too_few_samples", "'b' (1)"),
        ("text,label\n", "empty_dataset", ""),
        ("", "empty_dataset", ""),
        ("text,text,label\nhi,a,b\n", "bad_csv", "twice"),
        ("text,label,split\nhi,a,train\nho,a,dev\n", "bad_csv", "line 3"),
        ("text,label\nhi,a\x07\n", "bad_class_name", "line 2"),
        ("text,label\rhi,a\rho,b\r", "bad_csv", "carriage return"),
    ],
)
def test_csv_content_errors(content, code, where, tmp_path):
    src = tmp_path / "c.csv"
    src.write_text(content, encoding="utf-8")
    err = assert_csv_fails(code, src, tmp_path, task="text_classification")
    assert where in err.message


def test_csv_limits_and_task(tmp_path):
    src = write_csv(tmp_path / "t.csv", text_rows())
    assert_csv_fails(
        "too_many_rows", src, tmp_path, task="text_classification", limits=Limits(max_csv_rows=19)
    )
    assert_csv_fails("unsupported_task", src, tmp_path, task="regression")
    assert_csv_fails(
        "bad_csv",
        write_csv(tmp_path / "l.csv", [["label"], ["a"], ["b"]]),
        tmp_path,
        task="tabular_classification",
    )


def test_ingest_dataset_dispatches_by_content(digits, tmp_path):
    # The API's one dispatch (datasets/service.py calls it): the format from the bytes,
    # not the name; the task as given, or inferred.
    src = write_csv(tmp_path / "t.zip", text_rows())
    m = ingest_dataset(path=src, dest_dir=tmp_path / "a", task="text_classification")
    assert m["task"] == "text_classification"
    # No task: a CSV with the text column is text; without it, tabular.
    assert ingest_dataset(path=src, dest_dir=tmp_path / "b")["task"] == "text_classification"
    m = ingest_dataset(path=src, dest_dir=tmp_path / "b2", text_column="body")
    assert m["task"] == "tabular_classification" and "text" in m["feature_columns"]
    archive = write_zip(tmp_path / "d.csv", imagefolder(digits))
    m = ingest_dataset(path=archive, dest_dir=tmp_path / "c")
    assert (m["task"], m["num_samples"]) == ("image_classification", 30)
    for path, task in ((archive, "text_classification"), (src, "image_classification")):
        with pytest.raises(IngestError) as err:
            ingest_dataset(path=path, dest_dir=tmp_path / "d", task=task)
        assert (err.value.code, err.value.field) == ("task_mismatch", "task")
    assert not (tmp_path / "d").exists()


def test_csv_windows_line_ends(tmp_path):
    src = tmp_path / "w.csv"
    src.write_bytes(b'text,label\r\n"multi\r\nline",a\r\nhi,a\r\nhey,a\r\nho,b\r\nyo,b\r\nya,b\r\n')
    m = ingest_csv(csv_path=src, dest_dir=tmp_path / "o", task="text_classification")
    assert m["class_counts"] == {"a": 3, "b": 3}
    assert read_data(tmp_path / "o")[0]["text"] == "multi\r\nline"  # text is kept verbatim
