"""Races on a live Redis + PostgreSQL installation: a job created while its dataset is
deleted (one of the two loses), a job whose dataset vanished before it ran (it fails at
once with its own code), and a cancel racing the end of a job (it wins, or it is a 409)."""

import threading

import psycopg
import pytest

from tests.reliability.conftest import PG_ADMIN, Live, events, finished, poll, upload_digits

pytestmark = pytest.mark.slow


TINY = {
    "base_model": "tiny_cnn",
    "strategy": "full",
    "image_size": 32,
    "batch_size": 16,
    "epochs": 2,
    "early_stopping_patience": None,
}


@pytest.fixture(scope="module")
def idle(tmp_path_factory):
    """PostgreSQL + a private Redis, and no worker: jobs stay queued."""
    live = Live(tmp_path_factory.mktemp("races"), "redis+postgres")
    try:
        live.start_api()
        yield live
    finally:
        live.close()
        print(live.logs())


def _at_once(**calls) -> dict:
    """Run the calls in threads released together; their results by name."""
    results = {}
    barrier = threading.Barrier(len(calls))

    def run(name, fn):
        barrier.wait()
        results[name] = fn()

    threads = [threading.Thread(target=run, args=item) for item in calls.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_job_create_and_dataset_delete_never_both_win(idle, tmp_path):
    client = idle.new_owner()
    outcomes = []
    for i in range(30):
        ds = upload_digits(client, tmp_path / f"d{i}.zip", per_class=3, classes=2, size=8)
        answers = _at_once(
            create=lambda d=ds["id"]: client.post("/v1/jobs", json={**TINY, "dataset_id": d}),
            delete=lambda d=ds["id"]: client.delete(f"/v1/datasets/{d}"),
        )
        created, deleted = answers["create"].status_code, answers["delete"].status_code
        outcomes.append((created, deleted))
        assert (created, deleted) in ((202, 409), (404, 204)), (i, answers)
        exists = client.get(f"/v1/datasets/{ds['id']}").status_code
        assert exists == (200 if created == 202 else 404)
    print(f"\n[create vs delete] (create, delete) outcomes: {sorted(set(outcomes))}")


def test_job_whose_dataset_vanished_fails_at_once_with_dataset_gone(idle, tmp_path):
    client = idle.new_owner()
    ds = upload_digits(client, tmp_path / "d.zip", per_class=3, classes=2, size=8)
    job_id = client.post("/v1/jobs", json={**TINY, "dataset_id": ds["id"]}).json()["id"]
    # The row disappears behind the API's back (an operator, a restore from backup).
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{idle.pg_name}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM datasets WHERE id = %s", (ds["id"],))
    idle.ensure_workers(1)
    try:
        job = poll(client, job_id, finished, 30)
    finally:
        for proc in idle.workers:
            Live.kill(proc)
    assert job["status"] == "failed" and job["attempts"] == 1, job
    assert job["error"]["code"] == "dataset_gone", job


def test_cancel_racing_the_end_of_a_job_wins_or_is_a_409(dist, tmp_path):
    """Cancel just as the last epoch is reported: either the job ends `cancelled` with no
    model, or the cancel answers 409 because the job had already finished."""
    dist.ensure_workers(2)
    client = dist.new_owner()
    ds = upload_digits(client, tmp_path / "d.zip", per_class=6, classes=2)
    seen = []
    for seed in range(8):
        spec = {**TINY, "dataset_id": ds["id"], "seed": seed}
        job_id = client.post("/v1/jobs", json=spec).json()["id"]
        poll(
            client,
            job_id,
            lambda j: j["progress"]["epoch"] >= TINY["epochs"] - 1 or finished(j),
            60,
            every=0.02,
        )
        r = client.post(f"/v1/jobs/{job_id}/cancel")
        job = poll(client, job_id, finished, 60)
        seen.append((r.status_code, job["status"]))
        if r.status_code == 200:
            assert job["status"] == "cancelled" and job["model_id"] is None, (r.json(), job)
            statuses = [e["data"].get("status") for e in events(client, job_id)]
            assert [s for s in statuses if s][-1] == "cancelled"
        else:
            assert r.status_code == 409 and r.json()["error"]["code"] == "job_finished", r.text
            assert job["status"] == "succeeded"
    models = client.get("/v1/models").json()["total"]
    assert models == sum(1 for _, status in seen if status == "succeeded")
    print(f"\n[cancel race] (cancel answer, final status): {seen}")
