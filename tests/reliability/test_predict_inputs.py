"""Predict with inputs of the wrong kind, through a live server: each a 4xx JSON error
naming the problem, the server healthy after, and good inputs still predicted."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.datasets.conftest import png_bomb_header
from tests.helpers import digit_images, png_bytes
from tests.reliability.conftest import Live, finished, poll, train_tiny_model, upload_digits

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def model(dist: Live, tmp_path_factory):
    dist.ensure_workers(1)
    client = dist.new_owner()
    ds = upload_digits(client, tmp_path_factory.mktemp("predict") / "d.zip", 6, 3)
    job = train_tiny_model(client, ds["id"])
    yield client, job["model_id"]
    client.close()


def _big_png(side: int) -> bytes:
    """A side x side greyscale PNG of zeros: a few KB on the wire, side² pixels decoded."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((side, side), np.uint8)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return tuple(int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))


def test_predict_inputs_of_the_wrong_kind_get_named_4xx(dist: Live, model):
    client, model_id = model
    png = png_bytes(next(digit_images(1, size=32))[1])
    url = f"/v1/models/{model_id}/predict"
    cases = [
        ("json to an image model", {"json": {"inputs": ["a"]}}, 415, "multipart"),
        ("no files", {"data": {"top_k": "1"}, "files": {"other": ("x", b"x")}}, 422, "files"),
        ("text file", {"files": {"files": ("a.png", b"hello world")}}, 422, "a.png"),
        ("truncated png", {"files": {"files": ("t.png", png[: len(png) // 2])}}, 422, "t.png"),
        ("png bomb header", {"files": {"files": ("b.png", png_bomb_header())}}, 422, "b.png"),
        ("empty file", {"files": {"files": ("e.png", b"")}}, 422, "e.png"),
        ("top_k zero", {"files": {"files": ("a.png", png)}, "data": {"top_k": "0"}}, 422, "top_k"),
        ("top_k text", {"files": {"files": ("a.png", png)}, "data": {"top_k": "x"}}, 422, "top_k"),
        (
            "65 files",
            {"files": [("files", (f"{i}.png", png)) for i in range(65)]},
            None,
            "",
        ),
    ]
    failures = []
    for name, kwargs, status, word in cases:
        r = client.post(url, **kwargs)
        ok = 400 <= r.status_code < 500 and (status is None or r.status_code == status)
        body = r.json() if ok else None
        if not ok or word.lower() not in body["error"]["message"].lower():
            failures.append((name, r.status_code, r.text[:300]))
        print(f"  {name:24s} {r.status_code} {r.text[:140]}")
    assert not failures, failures
    # Still serving: a good image, top_k above the class count is clipped.
    r = client.post(url, files={"files": ("a.png", png)}, data={"top_k": "50"})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"][0]["top_k"]) == 3


def test_predict_pixel_budget_keeps_memory_bounded(dist: Live, model):
    """A few KB of PNG can declare 64 Mpx (~250 MB decoded as RGB), under PIL's bomb limit.
    Found here: four of them in one request took the server from ~0.8 to ~2 GB. Now a
    request decodes at most 48 Mpx in all (a 413 naming the budget), so memory stays flat,
    and images within the budget are still predicted."""
    client, model_id = model
    url = f"/v1/models/{model_id}/predict"
    pid = dist.api.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    rss_before, _ = _rss_mb(pid)
    big = _big_png(8000)  # 64 Mpx
    r = client.post(url, files=[("files", (f"{i}.png", big)) for i in range(4)])
    _, peak_refused = _rss_mb(pid)
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "too_many_pixels" and "48000000" in error["message"], error

    within = _big_png(3000)  # 9 Mpx each, 36 Mpx in all
    r = client.post(url, files=[("files", (f"{i}.png", within)) for i in range(4)])
    _, peak_served = _rss_mb(pid)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 4, r.text
    print(
        f"\n[predict pixels] RSS {rss_before:.0f} MiB; peak after 4 x 64 Mpx (refused) "
        f"{peak_refused:.0f} MiB; after 4 x 9 Mpx (served) {peak_served:.0f} MiB"
    )
    assert peak_refused - rss_before < 100, (rss_before, peak_refused)
    assert peak_served - rss_before < 400, (rss_before, peak_served)


@pytest.fixture(scope="module")
def tabular_model(dist: Live, model, tmp_path_factory):
    """A 1-epoch MLP on Iris, served by the same live installation."""
    from tests.csvdata import iris_csv

    client, _ = model
    path = iris_csv(tmp_path_factory.mktemp("iris") / "iris.csv")
    with path.open("rb") as f:
        r = client.post(
            "/v1/datasets",
            files={"file": ("iris.csv", f, "text/csv")},
            data={"task": "tabular_classification"},
        )
    assert r.status_code == 201, r.text
    spec = {"dataset_id": r.json()["id"], "base_model": "mlp", "strategy": "full", "epochs": 1}
    job = poll(client, client.post("/v1/jobs", json=spec).json()["id"], finished, 60)
    assert job["status"] == "succeeded", job
    return client, job["model_id"]


def test_predict_json_inputs_that_used_to_500_get_422s_naming_the_field(dist, tabular_model):
    """Issue 14 item 11: top_k Infinity / 1e400 (OverflowError), 100,000-deep nested
    inputs (RecursionError), a 400-digit integer feature (OverflowError), a 1e308 feature
    (a 200 with "score": null). Each is now a 422 naming the field, and no response ever
    carries a NaN."""
    client, model_id = tabular_model
    url = f"/v1/models/{model_id}/predict"
    good = '{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}'

    def body(inputs: str, top_k: str = "1") -> bytes:
        return f'{{"inputs": {inputs}, "top_k": {top_k}}}'.encode()

    def row(value: str) -> str:
        return good.replace("5.1", value)

    cases = [
        ("top_k Infinity", body(f"[{good}]", "Infinity"), "top_k"),
        ("top_k 1e400", body(f"[{good}]", "1e400"), "top_k"),
        ("top_k -Infinity", body(f"[{good}]", "-Infinity"), "top_k"),
        ("top_k NaN", body(f"[{good}]", "NaN"), "top_k"),
        ("top_k 2.5", body(f"[{good}]", "2.5"), "top_k"),
        ("top_k a list", body(f"[{good}]", "[[1]]"), "top_k"),
        ("100,000-deep inputs", body("[" * 100_000 + "]" * 100_000), "inputs"),
        ("400-digit feature", body(f"[{row('9' * 400)}]"), "sepal_length"),
        ("1e308 feature", body(f"[{row('1e308')}]"), "sepal_length"),
        ("-1e308 feature", body(f"[{row('-1e308')}]"), "sepal_length"),
        ("1e300 feature", body(f"[{row('1e300')}]"), "sepal_length"),
        ("Infinity feature", body(f"[{row('Infinity')}]"), "sepal_length"),
        ("nested feature", body(f"[{row('[' * 100 + ']' * 100)}]"), "sepal_length"),
    ]
    failures = []
    for name, raw, word in cases:
        r = client.post(url, content=raw, headers={"Content-Type": "application/json"})
        ok = r.status_code == 422 and word in r.json()["error"]["message"]
        if not ok:
            failures.append((name, r.status_code, r.text[:300]))
        assert "NaN" not in r.text and '":null' not in r.text, (name, r.text[:300])
        print(f"  {name:22s} {r.status_code} {r.text[:120]}")
    assert not failures, failures
    # Large but sane values still predict, with finite scores.
    r = client.post(
        url,
        content=body(f"[{row('1e3')}, {good}]", "3"),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    for p in r.json()["predictions"]:
        assert all(0.0 <= t["score"] <= 1.0 for t in p["top_k"]), p
    assert "NaN" not in r.text


def test_predict_form_top_k_out_of_range_is_a_422(dist: Live, model):
    client, model_id = model
    png = png_bytes(next(digit_images(1, size=32))[1])
    url = f"/v1/models/{model_id}/predict"
    for top_k in ("Infinity", "1e400", "-1", "2.0", "²", "1" * 400):
        r = client.post(url, files={"files": ("a.png", png)}, data={"top_k": top_k})
        if top_k == "1" * 400:  # a positive integer: clipped to the class count
            assert r.status_code == 200 and len(r.json()["predictions"][0]["top_k"]) == 3
            continue
        assert r.status_code == 422 and "top_k" in r.json()["error"]["message"], (top_k, r.text)
