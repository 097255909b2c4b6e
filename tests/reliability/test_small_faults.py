"""Smaller ones, over HTTP against the live embedded installation: a dataset upload
honours Idempotency-Key (a retry after a lost response, or two at once, make one
dataset), very large headers answer 431, and /metrics can require a bearer token."""

import threading

import httpx

from tests.conftest import TEST_KEY
from tests.helpers import digits_zip
from tests.reliability.conftest import Live


def test_dataset_upload_honours_idempotency_key(embedded: Live, tmp_path):
    client = embedded.new_owner()
    data = digits_zip(tmp_path / "d.zip", per_class=4, size=8, classes=2).read_bytes()
    other = digits_zip(tmp_path / "e.zip", per_class=5, size=8, classes=2).read_bytes()

    def upload(body: bytes, key: str) -> httpx.Response:
        return client.post(
            "/v1/datasets", files={"file": ("d.zip", body)}, headers={"Idempotency-Key": key}
        )

    answers: list[httpx.Response] = []
    barrier = threading.Barrier(3)

    def racer():
        barrier.wait()
        answers.append(upload(data, "upload-1"))

    threads = [threading.Thread(target=racer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in answers] == [201, 201, 201], [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in answers) == 2

    retry = upload(data, "upload-1")  # the client never saw the answer, and tries again
    assert retry.status_code == 201 and retry.json()["id"] == answers[0].json()["id"]
    assert retry.headers["Idempotent-Replayed"] == "true"
    conflict = upload(other, "upload-1")
    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["error"]["code"] == "idempotency_conflict"
    assert client.get("/v1/datasets").json()["total"] == 1
    assert upload(other, "upload-2").status_code == 201
    assert client.get("/v1/datasets").json()["total"] == 2


def test_very_large_headers_answer_431(embedded: Live):
    r = httpx.get(
        f"{embedded.base}/v1/datasets",
        headers={"Authorization": f"Bearer {TEST_KEY}", "X-Padding": "a" * 100_000},
        timeout=30,
    )
    assert r.status_code == 431, r.text
    assert r.json()["error"]["code"] == "headers_too_large"
    assert httpx.get(f"{embedded.base}/healthz", timeout=10).status_code == 200
