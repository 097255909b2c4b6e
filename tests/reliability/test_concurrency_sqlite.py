"""The SQLite default under concurrent writers: the worker records epochs and heartbeats
while API clients poll, create, cancel and upload at once. No update is lost, and no
client sees "database is locked" or a 5xx."""

import threading
import time
import uuid
from collections import Counter

import httpx

from tests.reliability.conftest import Live, events, finished, poll, upload_digits

EPOCHS = 30
SPEC = {
    "base_model": "tiny_cnn",
    "strategy": "full",
    "image_size": 96,
    "batch_size": 16,
    "early_stopping_patience": None,
    "epochs": EPOCHS,
}


def test_sqlite_api_and_worker_writing_at_once(embedded: Live, tmp_path):
    assert embedded.mode == "embedded" and "FINETUNE_DATABASE_URL" not in embedded.env
    embedded.ensure_workers(1)
    client = embedded.new_owner()
    key = client.headers["Authorization"]
    dataset_id = upload_digits(client, tmp_path / "d.zip", per_class=20, classes=4)["id"]
    job_id = client.post("/v1/jobs", json={**SPEC, "dataset_id": dataset_id}).json()["id"]
    poll(client, job_id, lambda j: j["status"] == "running", 60, every=0.1)

    stop = threading.Event()
    statuses: Counter = Counter()
    bad: list[str] = []
    created: list[str] = []
    latencies: list[float] = []
    lock = threading.Lock()
    csv = b"x,label\n" + b"".join(b"%d,%s\n" % (i, b"ab"[i % 2 : i % 2 + 1]) for i in range(40))

    def record(r: httpx.Response, t0: float) -> None:
        with lock:
            statuses[r.status_code] += 1
            latencies.append(time.monotonic() - t0)
            if r.status_code >= 500 or "locked" in r.text:
                bad.append(f"{r.request.method} {r.request.url.path} {r.status_code} {r.text}")

    def poller() -> None:
        with httpx.Client(base_url=embedded.base, timeout=60, headers={"Authorization": key}) as c:
            while not stop.is_set():
                for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/events", "/v1/jobs"):
                    t0 = time.monotonic()
                    record(c.get(path), t0)

    def creator() -> None:
        with httpx.Client(base_url=embedded.base, timeout=60, headers={"Authorization": key}) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                r = c.post(
                    "/v1/jobs",
                    json={**SPEC, "dataset_id": dataset_id, "seed": len(created) + 1},
                    headers={"Idempotency-Key": uuid.uuid4().hex},
                )
                record(r, t0)
                if r.status_code == 202:
                    with lock:
                        created.append(r.json()["id"])
                    t0 = time.monotonic()
                    record(c.post(f"/v1/jobs/{r.json()['id']}/cancel"), t0)

    def uploader() -> None:
        with httpx.Client(base_url=embedded.base, timeout=60, headers={"Authorization": key}) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                r = c.post("/v1/datasets", files={"file": ("t.csv", csv)})
                record(r, t0)

    threads = [threading.Thread(target=poller) for _ in range(3)]
    threads += [threading.Thread(target=creator) for _ in range(2)]
    threads += [threading.Thread(target=uploader)]
    for t in threads:
        t.start()
    job = poll(client, job_id, finished, 120, every=0.3)
    stop.set()
    for t in threads:
        t.join(60)

    assert not bad, bad[:5]
    assert set(statuses) <= {200, 201, 202}, statuses
    # The worker's writes all landed, once each, while the API wrote too.
    assert job["status"] == "succeeded" and job["attempts"] == 1, job
    assert [h["epoch"] for h in job["history"]] == list(range(EPOCHS + 1))  # probe: epoch 0
    evs = events(client, job_id)
    assert [e["data"]["epoch"] for e in evs if e["type"] == "epoch"] == list(range(EPOCHS + 1))
    # ...and so did the API's: every job created is there, every one cancelled.
    listed = client.get("/v1/jobs", params={"limit": 500}).json()
    assert listed["total"] == len(created) + 1
    assert {j["id"] for j in listed["items"]} == {job_id, *created}
    assert all(j["status"] == "cancelled" for j in listed["items"] if j["id"] != job_id)
    assert client.get("/v1/datasets").json()["total"] == 1 + statuses[201]
    assert "database is locked" not in embedded.logs_full()
    latencies.sort()
    print(
        f"\n[sqlite] {sum(statuses.values())} requests during {EPOCHS} epochs "
        f"({len(created)} jobs created and cancelled, {statuses[201]} uploads): "
        f"p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms, statuses {dict(statuses)}"
    )


def test_many_concurrent_readers_never_starve_the_connection_pool(embedded: Live):
    """80 clients polling at once. FastAPI validates a sync route's response in a
    threadpool thread; a session still holding its connection through that wait once
    deadlocked the pool (40 threads waiting for a connection, 15 connections waiting for
    a thread): 30 s stalls, then 500s."""
    key = embedded.new_owner().headers["Authorization"]
    statuses: Counter = Counter()
    worst = [0.0]
    lock = threading.Lock()
    end = time.monotonic() + 8

    def reader() -> None:
        with httpx.Client(base_url=embedded.base, timeout=60, headers={"Authorization": key}) as c:
            while time.monotonic() < end:
                t0 = time.monotonic()
                r = c.get("/v1/jobs", params={"limit": 5})
                with lock:
                    statuses[r.status_code] += 1
                    worst[0] = max(worst[0], time.monotonic() - t0)

    threads = [threading.Thread(target=reader) for _ in range(80)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert set(statuses) == {200}, statuses
    assert worst[0] < 15, f"a request waited {worst[0]:.1f} s (the pool times out at 30 s)"
    print(f"\n[sqlite] 80 readers: {sum(statuses.values())} requests, worst {worst[0]:.1f} s")
