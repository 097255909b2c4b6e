"""The data dir's disk fills up under a running job (a tmpfs of 64 MiB here): the job fails
as `disk_full` once there is room to record it, its scratch goes, uploads meanwhile
answer 507, no broken message is left in the embedded broker's queue, and the service
works again by itself once space is freed."""

import errno
import time

import httpx
import pytest

from tests.helpers import small_tmpfs
from tests.reliability.conftest import finished, poll, upload_digits
from tests.reliability.test_crash import SLOW_SPEC
from tests.reliability.test_serve_process import Serve


@pytest.fixture
def small_disk(tmp_path):
    with small_tmpfs(tmp_path / "var", "64m") as mount:
        yield mount


def _fill(path) -> int:
    """Write `path` until the disk refuses another byte; returns the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            while True:
                try:
                    written += f.write(b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    return written


@pytest.mark.slow
def test_full_disk_fails_the_job_as_disk_full_and_the_service_recovers(small_disk, tmp_path):
    serve = Serve(tmp_path)
    assert serve.data_dir == small_disk
    serve.start()
    try:
        serve.wait_ready()
        with serve.client() as client:
            ds = upload_digits(client, tmp_path / "d.zip", per_class=20, classes=4)
            spec = {**SLOW_SPEC, "dataset_id": ds["id"], "epochs": 300}
            job_id = client.post("/v1/jobs", json=spec).json()["id"]
            poll(client, job_id, lambda j: j["progress"]["epoch"] >= 1, 90, every=0.05)

            filler = small_disk / "filler"
            _fill(filler)
            # Uploads while the disk is full: a 507 that says so.
            with (tmp_path / "d.zip").open("rb") as f:
                r = client.post("/v1/datasets", files={"file": ("d.zip", f, "application/zip")})
            assert r.status_code == 507, r.text
            assert r.json()["error"]["code"] == "disk_full"
            # The next checkpoint write fails; give the worker a moment to hit it.
            end = time.monotonic() + 30
            while time.monotonic() < end:
                if "the disk is full" in serve.log.read_text(errors="replace"):
                    break
                time.sleep(0.2)
            filler.unlink()  # the operator frees space

            job = poll(client, job_id, finished, 90)
            assert job["status"] == "failed", job
            assert job["error"]["code"] == "disk_full", job
            assert not (small_disk / "jobs" / job_id).exists()  # its checkpoints went too
            assert not list(small_disk.rglob("*.tmp"))
            queue = small_disk / "broker" / "queue"
            assert all(p.stat().st_size > 0 for p in queue.iterdir()), list(queue.iterdir())

            # Back to normal, with nobody restarting anything.
            assert httpx.get(f"{serve.base}/readyz", timeout=10).status_code == 200
            short = {**SLOW_SPEC, "dataset_id": ds["id"], "epochs": 1, "image_size": 32}
            job = poll(client, client.post("/v1/jobs", json=short).json()["id"], finished, 60)
            assert job["status"] == "succeeded", job
            assert "restarting it" not in serve.log.read_text()  # the worker never died
    finally:
        serve.close()
