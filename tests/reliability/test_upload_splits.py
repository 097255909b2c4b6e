"""Uploads that used to pass bad data, over HTTP: a dataset whose classes are too small to
hold out a test split and still train is refused at upload (a short 422 with counts);
one that can adapt does; class names are NFC-normalised, and two spellings of one name
are refused."""

import io
import unicodedata
import zipfile

from tests.helpers import digit_images, png_bytes
from tests.reliability.conftest import Live

NFC = unicodedata.normalize("NFC", "café")
NFD = unicodedata.normalize("NFD", "café")


def _zip(folders: dict[str, int]) -> bytes:
    """A ZIP with `n` tiny digit PNGs in each named class folder."""
    images = [png_bytes(img) for _, img in digit_images(per_class=6, size=8)]
    buf = io.BytesIO()
    k = 0
    with zipfile.ZipFile(buf, "w") as zf:
        for folder, n in folders.items():
            for i in range(n):
                zf.writestr(f"{folder}/{i}.png", images[k % len(images)])
                k += 1
    return buf.getvalue()


def _upload(client, data: bytes, name="d.zip", **form):
    return client.post("/v1/datasets", files={"file": (name, data)}, data=form)


def test_classes_too_small_to_split_are_refused_at_upload_with_a_short_message(embedded: Live):
    client = embedded.new_owner()
    r = _upload(client, _zip({f"class_{i:03d}": 2 for i in range(300)}))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "too_few_samples", error
    assert len(error["message"]) < 400, error["message"]
    assert client.get("/v1/datasets").json()["total"] == 0


def test_a_small_class_keeps_its_training_samples(embedded: Live):
    client = embedded.new_owner()
    r = _upload(client, _zip({"a": 5, "b": 5, "c": 2}))
    assert r.status_code == 201, r.text
    ds = r.json()
    # a and b each give one to test; c keeps both (one to train on, one to validate).
    assert ds["splits"]["test"] == 2 and ds["splits"]["train"] == 10, ds


def test_class_names_are_nfc_and_two_spellings_are_refused(embedded: Live):
    client = embedded.new_owner()
    r = _upload(client, _zip({NFD: 3, "tea": 3}))
    assert r.status_code == 201, r.text
    assert r.json()["classes"] == sorted([NFC, "tea"])

    r = _upload(client, _zip({NFC: 3, NFD: 3, "tea": 3}))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "class_name_collision", r.text

    rows = [f"{i},{NFC if i % 3 == 0 else NFD if i % 3 == 1 else 'tea'}" for i in range(12)]
    r = _upload(client, ("x,label\n" + "\n".join(rows) + "\n").encode(), name="t.csv")
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "class_name_collision", r.text
