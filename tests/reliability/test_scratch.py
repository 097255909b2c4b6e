"""A job's scratch (var/jobs/<id>: its epoch checkpoints) goes when the job ends, whatever
the outcome (a failed one: test_disk_full), and what a crash left behind is swept
(FINETUNE_JOB_SCRATCH_RETENTION_SECONDS is 0 here: at once)."""

import time

import pytest

from tests.reliability.conftest import Live, finished, poll, upload_digits
from tests.reliability.test_crash import SLOW_SPEC


def _gone(path, deadline_s: float) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if not path.exists():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_cancelled_job_leaves_no_scratch(embedded: Live, tmp_path):
    embedded.ensure_workers(1)
    client = embedded.new_owner()
    ds = upload_digits(client, tmp_path / "d.zip", per_class=20, classes=4)
    job_id = client.post(
        "/v1/jobs", json={**SLOW_SPEC, "dataset_id": ds["id"], "epochs": 300}
    ).json()["id"]
    poll(client, job_id, lambda j: j["progress"]["epoch"] >= 2, 90, every=0.05)
    scratch = embedded.data_dir / "jobs" / job_id
    assert list(scratch.rglob("checkpoint.pt")), "no checkpoint: the test would prove nothing"
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    assert poll(client, job_id, finished, 60)["status"] == "cancelled"
    assert _gone(scratch, 5), list(scratch.rglob("*"))


def test_scratch_left_by_a_crash_is_swept(embedded: Live):
    embedded.ensure_workers(1)
    stray = embedded.data_dir / "jobs" / "job_0123456789abcdef0123"  # no such job
    stray.mkdir(parents=True)
    (stray / "checkpoint.pt.tmp").write_bytes(b"\0" * 4096)
    assert _gone(stray, 15), "a crashed job's scratch is never removed"
