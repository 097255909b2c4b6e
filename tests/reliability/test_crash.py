"""A worker SIGKILLed mid-training: the job is re-delivered, resumes from its last epoch
checkpoint and ends with one model; a job whose workers keep dying fails instead of looping."""

import os
import signal
import time

import pytest

from tests.reliability.conftest import Live, events, finished, poll, upload_digits

WORKERS = {"dist": 2, "embedded": 1}
# tiny_cnn at 96 px on 80 images: ~0.3 s an epoch on one core, long enough to kill mid-run.
SLOW_SPEC = {
    "base_model": "tiny_cnn",
    "strategy": "full",
    "image_size": 96,
    "batch_size": 16,
    "learning_rate": 0.01,
    "early_stopping_patience": None,
    "seed": 3,
}


def _statuses(evs: list[dict]) -> list[str]:
    return [e["data"]["status"] for e in evs if e["type"] == "status"]


def _kill_holder(
    live: Live, client, job_id: str, attempt: int, sig: int = signal.SIGKILL
) -> tuple[str, int]:
    """Wait until attempt `attempt` is running and an epoch is recorded, then signal the
    worker holding the job (SIGKILL: its whole process group, as the OOM killer or a lost
    node would). Returns (that worker's id, the last epoch reported before the signal)."""
    poll(
        client,
        job_id,
        lambda j: (
            j["attempts"] == attempt and j["progress"]["epoch"] >= 1 and j["status"] == "running"
        ),
        90,
        every=0.05,
    )
    evs = events(client, job_id)
    running = [e for e in evs if e["type"] == "status" and e["data"]["status"] == "running"]
    holder = running[-1]["data"]["worker"]
    assert running[-1]["data"]["attempt"] == attempt
    proc = live.worker_by_pid(int(holder.split(":")[1]))
    if sig == signal.SIGKILL:
        Live.kill(proc)
    else:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)
    after_kill = events(client, job_id)
    last_epoch = max(e["data"]["epoch"] for e in after_kill if e["type"] == "epoch")
    return holder, last_epoch


@pytest.mark.parametrize("mode", ["dist", "embedded"])
def test_sigkilled_worker_job_resumes_from_checkpoint(request, mode, tmp_path):
    live: Live = request.getfixturevalue(mode)
    live.ensure_workers(WORKERS[mode])
    client = live.new_owner()
    ds = upload_digits(client, tmp_path / "d.zip", per_class=20, classes=4)
    epochs = 12
    r = client.post("/v1/jobs", json={**SLOW_SPEC, "dataset_id": ds["id"], "epochs": epochs})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]

    first_worker, last_before = _kill_holder(live, client, job_id, attempt=1)
    killed_at = time.monotonic()
    assert last_before < epochs, "the job finished before the kill; make it slower"
    if not any(p.poll() is None for p in live.workers):
        live.start_worker()  # embedded: one worker, so start its replacement

    job = poll(client, job_id, finished, 120)
    recovered_s = time.monotonic() - killed_at
    assert job["status"] == "succeeded", (job, live.logs())
    assert job["attempts"] == 2

    evs = events(client, job_id)
    assert _statuses(evs) == ["queued", "running", "running", "succeeded"]
    second = [e for e in evs if e["type"] == "status" and e["data"]["status"] == "running"][1]
    assert second["data"]["attempt"] == 2 and second["data"]["resumed"] is True
    assert second["data"]["worker"] != first_worker
    # Resumed from the checkpoint, not from epoch 0: after the second claim the first epoch
    # reported is the one after the last checkpoint (the killed attempt may have saved one
    # more checkpoint than it reported).
    resumed_epochs = [
        e["data"]["epoch"] for e in evs if e["type"] == "epoch" and e["id"] > second["id"]
    ]
    assert resumed_epochs, evs
    assert last_before + 1 <= resumed_epochs[0] <= last_before + 2, (last_before, resumed_epochs)
    assert resumed_epochs == list(range(resumed_epochs[0], epochs + 1))
    history = [h["epoch"] for h in job["history"]]
    assert history == sorted(set(history)) and history[-1] == epochs

    models = client.get("/v1/models").json()
    assert models["total"] == 1 and models["items"][0]["id"] == job["model_id"]
    assert models["items"][0]["job_id"] == job_id
    print(
        f"\n[{mode}] killed after epoch {last_before}; attempt 2 resumed at epoch "
        f"{resumed_epochs[0]}; succeeded {recovered_s:.1f}s after the kill"
    )


def test_job_whose_workers_keep_dying_fails_with_too_many_attempts(dist, tmp_path):
    """FINETUNE_MAX_ATTEMPTS=2 here: two lost workers, then the next claim fails the job."""
    dist.ensure_workers(2)
    client = dist.new_owner()
    ds = upload_digits(client, tmp_path / "d.zip", per_class=20, classes=4)
    r = client.post("/v1/jobs", json={**SLOW_SPEC, "dataset_id": ds["id"], "epochs": 60})
    job_id = r.json()["id"]

    _kill_holder(dist, client, job_id, attempt=1)
    _kill_holder(dist, client, job_id, attempt=2)
    assert not any(p.poll() is None for p in dist.workers)
    dist.ensure_workers(2)  # fresh workers get the re-sent message and refuse a third run

    job = poll(client, job_id, finished, 90)
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "too_many_attempts" and "2 times" in job["error"]["message"]
    assert job["attempts"] == 2 and job["model_id"] is None
    assert _statuses(events(client, job_id)) == ["queued", "running", "running", "failed"]
    assert client.get("/v1/models").json()["total"] == 0


def test_worker_stopped_gracefully_hands_its_job_back_without_using_an_attempt(dist, tmp_path):
    """SIGTERM (a deploy, a scale-in): the worker stops at the next step, keeps its
    checkpoint and releases the job; another worker resumes it at once. A hand-back is
    not a lost worker, so it does not count towards FINETUNE_MAX_ATTEMPTS (2 here): the
    job still survives a real crash afterwards."""
    dist.ensure_workers(2)
    client = dist.new_owner()
    ds = upload_digits(client, tmp_path / "d.zip", per_class=20, classes=4)
    epochs = 24
    job_id = client.post(
        "/v1/jobs", json={**SLOW_SPEC, "dataset_id": ds["id"], "epochs": epochs}
    ).json()["id"]

    first, _ = _kill_holder(dist, client, job_id, attempt=1, sig=signal.SIGTERM)
    t0 = time.monotonic()  # the stopped worker has exited
    job = poll(client, job_id, lambda j: j["attempts"] == 2 or finished(j), 30, every=0.05)
    handed_over_s = time.monotonic() - t0
    evs = events(client, job_id)
    assert [e["data"]["worker"] for e in evs if e["type"] == "released"] == [first], evs
    assert job["status"] == "running", job

    # Now a real loss: SIGKILL the second worker, start a fresh one; the job resumes again.
    _kill_holder(dist, client, job_id, attempt=2)
    dist.ensure_workers(1)
    job = poll(client, job_id, finished, 120)
    assert job["status"] == "succeeded", (job, dist.logs())
    assert job["attempts"] == 3
    evs = events(client, job_id)
    assert _statuses(evs) == ["queued", "running", "running", "running", "succeeded"]
    epoch_events = [e["data"]["epoch"] for e in evs if e["type"] == "epoch"]
    assert epoch_events[-1] == epochs and epoch_events.count(1) == 1  # never from scratch
    assert client.get("/v1/models").json()["total"] == 1
    print(
        f"\n[sigterm] job running again on another worker {handed_over_s:.1f}s after the "
        "stopped one exited"
    )
