"""Jobs on a live Redis + PostgreSQL installation with two workers: exactly once, the API
killed mid-job, cancel (queued and running), and Idempotency-Key under a race."""

import json
import threading
import time

import httpx
import pytest

from tests.reliability.conftest import Live, events, finished, poll, upload_digits

TINY = {
    "base_model": "tiny_cnn",
    "strategy": "full",
    "image_size": 32,
    "batch_size": 16,
    "epochs": 2,
    "early_stopping_patience": None,
}
SLOW = {**TINY, "image_size": 96}  # ~0.3 s an epoch


def _sse(live: Live, client: httpx.Client, job_id: str, last_id: int | None, limit=None) -> list:
    """Read the job's server-sent events (as an EventSource would, Last-Event-ID and all)
    until the stream ends or `limit` events came."""
    headers = httpx.Headers(client.headers)
    headers["Accept"] = "text/event-stream"
    if last_id is not None:
        headers["Last-Event-ID"] = str(last_id)
    out, current = [], {}
    url = f"{live.base}/v1/jobs/{job_id}/events"
    with httpx.stream("GET", url, headers=headers, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("id: "):
                current["id"] = int(line[4:])
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
            elif not line and current:
                out.append(current)
                current = {}
                if limit and len(out) >= limit:
                    break
    return out


def _statuses(evs: list[dict]) -> list[str]:
    return [e["data"]["status"] for e in evs if e["type"] == "status"]


@pytest.fixture
def owner(dist: Live, tmp_path):
    """A fresh owner on the shared installation, with a 4-class digits dataset."""
    dist.ensure_workers(2)
    client = dist.new_owner()
    ds = upload_digits(client, tmp_path / "d.zip", per_class=12, classes=4)
    yield client, ds["id"]
    client.close()


def test_two_workers_ten_jobs_each_runs_exactly_once(dist, owner):
    client, dataset_id = owner
    ids = []
    for seed in range(10):
        r = client.post("/v1/jobs", json={**TINY, "dataset_id": dataset_id, "seed": seed})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    jobs = [poll(client, job_id, finished, 120) for job_id in ids]

    assert [j["status"] for j in jobs] == ["succeeded"] * 10, jobs
    assert [j["attempts"] for j in jobs] == [1] * 10
    workers = set()
    for job in jobs:
        evs = events(client, job["id"])
        assert _statuses(evs) == ["queued", "running", "succeeded"], evs
        assert [e["data"]["epoch"] for e in evs if e["type"] == "epoch"] == [0, 1, 2]  # 0: probe
        workers |= {e["data"]["worker"] for e in evs if e["data"].get("status") == "running"}
    assert len(workers) == 2, "both workers should have taken jobs"
    models = client.get("/v1/models", params={"limit": 50}).json()
    assert models["total"] == 10
    assert sorted(m["job_id"] for m in models["items"]) == sorted(ids)
    assert {m["id"] for m in models["items"]} == {j["model_id"] for j in jobs}


@pytest.mark.parametrize("mode", ["dist", "embedded"])
def test_api_sigkilled_and_restarted_mid_job_loses_nothing(request, mode, tmp_path):
    live: Live = request.getfixturevalue(mode)
    live.ensure_workers(1)
    client = live.new_owner()
    dataset_id = upload_digits(client, tmp_path / "d.zip", per_class=12, classes=4)["id"]
    long = client.post("/v1/jobs", json={**SLOW, "dataset_id": dataset_id, "epochs": 25}).json()
    poll(client, long["id"], lambda j: j["progress"]["epoch"] >= 1, 60, every=0.05)
    # An event stream read up to the first epoch before the kill...
    streamed = _sse(live, client, long["id"], None, limit=3)
    assert [e["data"]["type"] for e in streamed] == ["status", "status", "epoch"]
    # A second job posted just before the kill: committed and sent before the 202.
    short = client.post("/v1/jobs", json={**TINY, "dataset_id": dataset_id}).json()
    Live.kill(live.api)
    with pytest.raises(httpx.TransportError):
        client.get("/healthz")
    live.start_api()
    # ...picks up where it stopped after the restart (Last-Event-ID), to the job's end.
    streamed += _sse(live, client, long["id"], streamed[-1]["id"])
    ids = [e["id"] for e in streamed]
    assert ids == sorted(set(ids)), ids
    assert ids == [e["id"] for e in events(client, long["id"])]
    assert streamed[-1]["data"]["data"]["status"] == "succeeded"

    for job_id, epochs in ((long["id"], 25), (short["id"], 2)):
        job = poll(client, job_id, finished, 90)
        assert job["status"] == "succeeded" and job["attempts"] == 1, job
        assert [h["epoch"] for h in job["history"]] == list(range(epochs + 1))  # 0: probe
        assert _statuses(events(client, job_id)) == ["queued", "running", "succeeded"]
    assert client.get("/v1/models").json()["total"] == 2
    assert client.get(f"/v1/datasets/{dataset_id}").status_code == 200


def test_cancel_queued_and_running_jobs(dist, owner):
    client, dataset_id = owner
    spec = {**SLOW, "dataset_id": dataset_id, "epochs": 300}
    running = [client.post("/v1/jobs", json={**spec, "seed": s}).json()["id"] for s in (1, 2)]
    for job_id in running:
        poll(client, job_id, lambda j: j["status"] == "running", 60, every=0.1)
    # Both workers are busy: this one stays queued.
    queued = client.post("/v1/jobs", json={**spec, "seed": 3}).json()["id"]
    assert client.get(f"/v1/jobs/{queued}").json()["status"] == "queued"

    r = client.post(f"/v1/jobs/{queued}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text

    latencies = []
    for job_id in running:
        t0 = time.monotonic()
        r = client.post(f"/v1/jobs/{job_id}/cancel")
        assert r.status_code == 200 and r.json()["cancel_requested"] is True, r.text
        job = poll(client, job_id, finished, 30, every=0.05)
        latencies.append(time.monotonic() - t0)
        assert job["status"] == "cancelled" and job["model_id"] is None, job
        assert job["progress"]["epoch"] < 300
        assert _statuses(events(client, job_id)) == ["queued", "running", "cancelled"]
    # The queued job's message reaches a now idle worker, which must not run it.
    time.sleep(2)
    job = client.get(f"/v1/jobs/{queued}").json()
    assert job["status"] == "cancelled" and job["attempts"] == 0 and job["started_at"] is None
    assert _statuses(events(client, queued)) == ["queued", "cancelled"]
    assert client.get("/v1/models").json()["total"] == 0
    # A running job stops at its next step: the worker polls the flag every second.
    assert max(latencies) < 5, latencies
    print(f"\n[cancel] running job cancelled in {', '.join(f'{s:.2f}s' for s in latencies)}")


@pytest.mark.parametrize("mode", ["dist", "embedded"])
def test_idempotency_key_race_makes_one_job(request, mode, tmp_path):
    live: Live = request.getfixturevalue(mode)
    client = live.new_owner()
    dataset_id = upload_digits(client, tmp_path / "d.zip", per_class=6, classes=2)["id"]
    spec = {**TINY, "dataset_id": dataset_id, "epochs": 1}
    headers = {**client.headers, "Idempotency-Key": "race-1"}
    barrier = threading.Barrier(8)
    results: list[httpx.Response] = []

    def post() -> None:
        with httpx.Client(base_url=live.base, timeout=60, headers=headers) as c:
            barrier.wait()
            results.append(c.post("/v1/jobs", json=spec))

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r.status_code for r in results] == [202] * 8, [r.text for r in results]
    assert len({r.json()["id"] for r in results}) == 1
    assert sum("idempotent-replayed" not in r.headers for r in results) == 1
    assert client.get("/v1/jobs").json()["total"] == 1

    other = client.post("/v1/jobs", json={**spec, "seed": 9}, headers={"Idempotency-Key": "race-1"})
    assert other.status_code == 409, other.text
    error = other.json()["error"]
    assert error["code"] == "idempotency_conflict" and "race-1" in error["message"]
    assert client.get("/v1/jobs").json()["total"] == 1
