"""Predict with inputs of the wrong kind, through a live server: each a 4xx JSON error
naming the problem, the server healthy after, and good inputs still predicted."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.datasets.conftest import png_bomb_header
from tests.helpers import digit_images, png_bytes
from tests.reliability.conftest import Live, train_tiny_model, upload_digits

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
