"""The scratch sweep with a retention (FINETUNE_JOB_SCRATCH_RETENTION_SECONDS > 0): a
finished job's dir stays until the retention has passed, a running job's never goes, and a
dir whose job does not exist goes at once (real SQLite, real directories)."""

from datetime import timedelta

from app.auth.service import create_owner_key
from app.core.config import get_settings
from app.core.db import get_sessionmaker, utcnow
from app.jobs.models import Job
from app.jobs.service import sweep_job_scratch


def test_sweep_keeps_recent_and_running_scratch_and_removes_the_rest(data_dir):
    jobs_dir = get_settings().jobs_dir
    now = utcnow()
    with get_sessionmaker()() as session:
        owner, _, _ = create_owner_key(session=session, name="sweeper")
        rows = {
            "job_old": ("failed", now - timedelta(hours=2)),
            "job_recent": ("cancelled", now - timedelta(minutes=5)),
            "job_running": ("running", None),
        }
        for job_id, (status, finished_at) in rows.items():
            session.add(
                Job(
                    id=job_id,
                    owner_id=owner.id,
                    dataset_id="ds_x",
                    status=status,
                    finished_at=finished_at,
                )
            )
        session.commit()
        for job_id in [*rows, "job_gone"]:
            (jobs_dir / job_id).mkdir(parents=True)
            (jobs_dir / job_id / "checkpoint.pt").write_bytes(b"\0" * 1024)

        swept = sweep_job_scratch(session=session, jobs_dir=jobs_dir, retention_seconds=3600)
    assert sorted(swept) == ["job_gone", "job_old"]
    assert sorted(p.name for p in jobs_dir.iterdir()) == ["job_recent", "job_running"]
