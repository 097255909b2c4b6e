"""Uploads for multi-label and regression tasks through the HTTP surface (in-process
ASGI): target summaries in the response, bad targets as 422s naming the line and the
column, and the task checked against the file's kind."""

import io
import zipfile

from tests.helpers import digit_images, png_bytes
from tests.training.test_tasks import diabetes_csv, tags_csv


def _post(api, name: str, content: bytes, **data):
    return api.post("/v1/datasets", files={"file": (name, io.BytesIO(content))}, data=data)


def test_regression_upload_shows_the_target(api, tmp_path):
    r = _post(
        api,
        "d.csv",
        diabetes_csv(tmp_path / "d.csv").read_bytes(),
        task="tabular_regression",
        label_column="target",
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["task"] == "tabular_regression" and body["classes"] == []
    t = body["targets"]
    assert t["count"] == 442 and t["min"] == 25.0 and t["max"] == 346.0
    assert abs(t["mean"] - 152.13) < 0.01 and abs(t["std"] - 77.09) < 0.01


def test_multilabel_upload_shows_label_counts_and_set_sizes(api, tmp_path):
    r = _post(
        api,
        "t.csv",
        tags_csv(tmp_path / "t.csv", 80).read_bytes(),
        task="text_multilabel",
        label_column="tags",
    )
    assert r.status_code == 201, r.text
    t = r.json()["targets"]
    assert sorted(t["label_counts"]) == ["food", "money", "sport"]
    assert sum(t["label_set_sizes"].values()) == 80 and set(t["label_set_sizes"]) <= {"0", "1", "2"}
    assert r.json()["class_counts"] == t["label_counts"]


def test_a_custom_separator(api):
    rows = "".join(
        f"x{i},{'a;b' if i % 3 == 0 else 'a' if i % 3 == 1 else 'b'}\n" for i in range(12)
    )
    r = _post(
        api,
        "s.csv",
        ("f,tags\n" + rows).encode(),
        task="tabular_multilabel",
        label_column="tags",
        label_separator=";",
    )
    assert r.status_code == 201, r.text
    assert r.json()["targets"]["label_counts"] == {"a": 8, "b": 8}


def test_bad_targets_are_422s_naming_line_and_column(api):
    r = _post(
        api,
        "b.csv",
        b"x,price\n1,10\n2,cheap\n3,9\n4,1\n",
        task="tabular_regression",
        label_column="price",
    )
    assert r.status_code == 422, r.text
    msg = r.json()["error"]["message"]
    assert "line 3" in msg and "'price'" in msg and "'cheap'" in msg
    r = _post(
        api,
        "e.csv",
        b"x,price\n1,10\n2,\n3,9\n4,1\n",
        task="tabular_regression",
        label_column="price",
    )
    assert r.status_code == 422 and "line 3" in r.json()["error"]["message"]
    always = "".join(f"w{i},a|{'b' if i % 2 else 'c'}\n" for i in range(10))
    r = _post(
        api, "a.csv", ("text,tags\n" + always).encode(), task="text_multilabel", label_column="tags"
    )
    assert r.status_code == 422
    assert "'a'" in r.json()["error"]["message"] and "every row" in r.json()["error"]["message"]
    r = _post(
        api,
        "o.csv",
        b"text,tags\nw1,a\nw2,\nw3,a\nw4,\n",
        task="text_multilabel",
        label_column="tags",
    )
    assert r.status_code == 422 and "at least 2" in r.json()["error"]["message"]


def test_image_tasks_need_labels_csv_that_matches_the_images(api):
    img = png_bytes(next(digit_images(1, 16))[1])

    def zipped(files: dict) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        return buf.getvalue()

    r = _post(api, "z.zip", zipped({"a/1.png": img, "b/2.png": img}), task="image_regression")
    assert r.status_code == 422 and "labels.csv" in r.json()["error"]["message"]
    r = _post(
        api,
        "z.zip",
        zipped({"1.png": img, "labels.csv": "path,label\n1.png,2\n2.png,3\n"}),
        task="image_regression",
    )
    assert r.status_code == 422 and "labels.csv line 3" in r.json()["error"]["message"]
    files = {f"{i}.png": img for i in range(6)}
    files["labels.csv"] = "path,label,split\n" + "".join(
        f"{i}.png,{i * 1.5},{'test' if i == 5 else 'train'}\n" for i in range(6)
    )
    r = _post(api, "z.zip", zipped(files), task="image_regression")
    assert r.status_code == 201, r.text
    assert r.json()["splits"] == {"train": 5, "val": 0, "test": 1}
    assert r.json()["targets"]["max"] == 7.5
    r = _post(api, "c.csv", b"x,y\n1,2\n", task="image_multilabel")
    assert r.status_code == 422 and r.json()["error"]["code"] == "task_mismatch"
