"""The broker goes away: a job posted meanwhile is still accepted (it lives in the
database), and once a broker is back the reconciler sends it and it runs, once.

Each installation here has its own redis-server (no persistence: a broker restarted
empty), so killing it disturbs nobody else.
"""

import time

import httpx
import pytest
import redis

from tests.reliability.conftest import (
    FAST_LEASES,
    Live,
    events,
    finished,
    poll,
    start_redis,
    upload_digits,
)


@pytest.fixture(scope="module")
def outage(tmp_path_factory):
    live = Live(tmp_path_factory.mktemp("outage"), "redis+postgres", FAST_LEASES)
    try:
        live.start_api()
        live.ensure_workers(1)
        yield live
    finally:
        live.close()
        print(live.logs())


def test_job_posted_while_the_broker_is_down_runs_when_it_is_back(outage, tmp_path):
    live = outage
    client = live.new_owner()
    ds = upload_digits(client, tmp_path / "d.zip", per_class=6, classes=2)
    spec = {
        "dataset_id": ds["id"],
        "base_model": "tiny_cnn",
        "strategy": "full",
        "epochs": 2,
        "image_size": 32,
    }

    Live.kill(live.redis)
    t0 = time.monotonic()
    r = client.post("/v1/jobs", json=spec)
    post_s = time.monotonic() - t0
    assert r.status_code == 202 and r.json()["status"] == "queued", r.text
    job_id = r.json()["id"]
    ready = httpx.get(f"{live.base}/readyz", timeout=30)
    assert ready.status_code == 503 and ready.json()["checks"]["broker"].startswith("error")
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    # The API stays responsive without a broker: the failed send costs the POST little.
    assert post_s < 10, post_s

    live.redis = start_redis(live.redis_port)  # back, and empty
    t0 = time.monotonic()
    job = poll(client, job_id, finished, 90)
    recovered_s = time.monotonic() - t0
    assert job["status"] == "succeeded" and job["attempts"] == 1, (job, live.logs())
    statuses = [e["data"]["status"] for e in events(client, job_id) if e["type"] == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    assert httpx.get(f"{live.base}/readyz", timeout=30).status_code == 200
    print(
        f"\n[broker outage] POST answered in {post_s:.2f}s with the broker down; "
        f"job succeeded {recovered_s:.1f}s after the broker came back"
    )


def test_broker_lost_mid_job_the_job_finishes_once_and_the_worker_reconnects(outage, tmp_path):
    """The worker needs the database, not the broker, to train: a broker restart under a
    running job neither stops it nor runs it twice, and the worker takes new work after."""
    live = outage
    client = live.new_owner()
    ds = upload_digits(client, tmp_path / "d.zip", per_class=20, classes=4)
    spec = {
        "dataset_id": ds["id"],
        "base_model": "tiny_cnn",
        "strategy": "full",
        "epochs": 20,
        "image_size": 96,
        "early_stopping_patience": None,
    }
    job_id = client.post("/v1/jobs", json=spec).json()["id"]
    poll(client, job_id, lambda j: j["progress"]["epoch"] >= 1, 60, every=0.05)
    Live.kill(live.redis)
    time.sleep(2)
    live.redis = start_redis(live.redis_port)

    job = poll(client, job_id, finished, 90)
    assert job["status"] == "succeeded" and job["attempts"] == 1, job
    assert [h["epoch"] for h in job["history"]] == list(range(21))  # the probe is epoch 0
    # The worker is back on the new broker: a new job runs.
    second = client.post("/v1/jobs", json={**spec, "epochs": 1, "image_size": 32}).json()
    second = poll(client, second["id"], finished, 90)
    assert second["status"] == "succeeded", (second, live.logs())
    time.sleep(2)  # a duplicate message, had there been one, would show as a second run
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["attempts"] == 1
    assert client.get("/v1/models").json()["total"] == 2


def test_queued_job_whose_message_the_broker_lost_is_sent_again(outage, tmp_path):
    """The broker restarts empty while a job waits in its queue (no worker up). The job
    is still 'queued' and was sent, so nothing but the broker says it is lost: the
    reconciler sees an empty queue under a queued job and sends it again, in seconds
    rather than after the half-hour fallback."""
    live = outage
    client = live.new_owner()
    ds = upload_digits(client, tmp_path / "d.zip", per_class=6, classes=2)
    for proc in live.workers:
        Live.kill(proc)
    job_id = client.post(
        "/v1/jobs",
        json={
            "dataset_id": ds["id"],
            "base_model": "tiny_cnn",
            "strategy": "full",
            "epochs": 1,
            "image_size": 32,
        },
    ).json()["id"]
    assert redis.Redis(port=live.redis_port).llen("finetune") == 1
    Live.kill(live.redis)
    live.redis = start_redis(live.redis_port)  # back, and empty: the message is gone
    assert redis.Redis(port=live.redis_port).llen("finetune") == 0

    t0 = time.monotonic()
    live.ensure_workers(1)
    job = poll(client, job_id, finished, 60)
    assert job["status"] == "succeeded" and job["attempts"] == 1, (job, live.logs())
    print(f"\n[lost message] job succeeded {time.monotonic() - t0:.1f}s after the worker started")


def test_resent_message_of_a_dead_workers_job_lost_too_is_sent_again(outage, tmp_path):
    """The worker dies mid-job, the reconciler re-sends the job once its lease expires, and
    then the broker loses that message as well (restarted empty before any worker came
    back). The job must not stay 'running' for ever: it is sent again and resumes."""
    live = outage
    live.ensure_workers(1)
    client = live.new_owner()
    ds = upload_digits(client, tmp_path / "d.zip", per_class=20, classes=4)
    spec = {
        "dataset_id": ds["id"],
        "base_model": "tiny_cnn",
        "strategy": "full",
        "epochs": 30,
        "image_size": 96,
        "early_stopping_patience": None,
    }
    job_id = client.post("/v1/jobs", json=spec).json()["id"]
    poll(client, job_id, lambda j: j["progress"]["epoch"] >= 1, 60, every=0.05)
    for proc in live.workers:
        Live.kill(proc)
    queue = redis.Redis(port=live.redis_port)
    end = time.monotonic() + 30
    while queue.llen("finetune") == 0 and time.monotonic() < end:
        time.sleep(0.2)  # lease (4 s) expires, the reconciler (every 1 s) re-sends
    assert queue.llen("finetune") == 1, "the reconciler never re-sent the dead worker's job"
    Live.kill(live.redis)
    live.redis = start_redis(live.redis_port)  # ...and that message is gone too

    live.ensure_workers(1)
    job = poll(client, job_id, finished, 90)
    assert job["status"] == "succeeded" and job["attempts"] == 2, (job, live.logs())
    statuses = [e["data"]["status"] for e in events(client, job_id) if e["type"] == "status"]
    assert statuses == ["queued", "running", "running", "succeeded"]
