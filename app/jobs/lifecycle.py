"""The worker's side of a job row: claim, lease heartbeat, progress, outcome.

Every write is a guarded transition (WHERE status = ... AND lease_owner = me), so two
workers that got the same message can never both run or both finish one job.
"""

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.core.db import begin_write, utcnow
from app.jobs.models import Job, JobEvent
from app.jobs.service import add_event
from app.registry.models import Model
from app.webhooks.service import record_job_event, record_job_transition


@dataclass
class Claim:
    job_id: str
    attempt: int
    resumed: bool


def claim(
    *, session: Session, job_id: str, worker: str, lease_seconds: int, max_attempts: int
) -> Claim | None:
    """Take the job if it is queued, or running on an expired lease; None if not ours to run."""
    begin_write(session)
    now = utcnow()
    job = session.execute(
        select(Job).where(Job.id == job_id).with_for_update()
    ).scalar_one_or_none()
    if job is None:
        return None
    expired = job.status == "running" and (
        job.lease_expires_at is None or job.lease_expires_at < now
    )
    if job.status != "queued" and not expired:
        session.rollback()
        return None
    if job.cancel_requested:
        job.status, job.finished_at = "cancelled", now
        add_event(session, job.id, "status", status="cancelled")
        record_job_transition(session, job.id, "cancelled")
        session.commit()
        return None
    # Every earlier run was either handed back at shutdown (a "released" event) or lost;
    # only lost workers count against max_attempts.
    released = session.scalar(
        select(func.count())
        .select_from(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.type == "released")
    )
    lost = job.attempts - (released or 0)
    if lost >= max_attempts:
        job.status, job.finished_at = "failed", now
        job.error = {
            "code": "too_many_attempts",
            "message": f"the job's worker was lost {lost} times; giving up",
        }
        job.lease_owner = job.lease_expires_at = None
        add_event(session, job.id, "status", status="failed", error=job.error)
        record_job_transition(session, job.id, "failed")
        session.commit()
        return None
    job.status = "running"
    job.attempts += 1
    job.lease_owner = worker
    job.lease_expires_at = now + timedelta(seconds=lease_seconds)
    job.started_at = job.started_at or now
    add_event(
        session,
        job.id,
        "status",
        status="running",
        attempt=job.attempts,
        worker=worker,
        resumed=expired,
    )
    session.commit()
    return Claim(job_id=job.id, attempt=job.attempts, resumed=expired)


def heartbeat(
    *, session: Session, job_id: str, worker: str, lease_seconds: int
) -> tuple[bool, bool]:
    """Renew our lease. Returns (still ours, cancel requested)."""
    begin_write(session)
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running", Job.lease_owner == worker)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
    )
    session.commit()
    if result.rowcount == 0:
        return False, False
    cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return True, bool(cancel)


def cancel_requested(*, session: Session, job_id: str) -> bool:
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def record_epoch(*, session: Session, job_id: str, worker: str, report: dict) -> bool:
    """Store one epoch's report as progress, history and metrics; False if we lost the job."""
    begin_write(session)
    job = session.scalar(
        select(Job).where(Job.id == job_id, Job.lease_owner == worker, Job.status == "running")
    )
    if job is None:
        session.rollback()
        return False
    epochs = int(report.get("epochs") or job.spec.get("epochs") or 1)
    epoch = int(report.get("epoch", 0))
    job.progress = {
        "epoch": epoch,
        "epochs": epochs,
        "fraction": round(min(epoch / epochs, 1), 4),
        "eta_seconds": report.get("eta_seconds"),
    }
    # A resumed attempt re-reports nothing before its checkpoint; replace same-epoch rows.
    history = [
        h for h in job.history if h.get("epoch") != epoch or h.get("phase") != report.get("phase")
    ]
    job.history = history + [report]
    job.metrics = {
        k: report[k] for k in ("train_loss", "val_loss", "val_accuracy", "val_score") if k in report
    }
    add_event(session, job_id, "epoch", **report)
    record_job_event(session, job_id, "job.epoch")
    session.commit()
    return True


def finish(
    *,
    session: Session,
    job_id: str,
    worker: str,
    status: str,
    error: dict | None = None,
    model: Model | None = None,
    metrics: dict | None = None,
    leaderboard: list | None = None,
) -> str | None:
    """Move our running job to its end state (with its model, in the same transaction).

    Returns the status recorded, or None if the job is not ours. A cancel accepted while
    the job was running wins over whatever outcome came after it: the job ends
    `cancelled`, with no model (the caller drops the artifact), so a 200 to a cancel is
    never followed by a model or a failure.
    """
    begin_write(session)
    job = session.execute(
        select(Job).where(Job.id == job_id).with_for_update()
    ).scalar_one_or_none()
    if job is None or job.status != "running" or job.lease_owner != worker:
        session.rollback()
        return None
    if job.cancel_requested and status != "cancelled":
        status, error, model, metrics, leaderboard = "cancelled", None, None, None, None
    now = utcnow()
    job.status, job.finished_at, job.error = status, now, error
    job.lease_owner = job.lease_expires_at = None
    if metrics is not None:
        job.metrics = {**job.metrics, **metrics}
    if leaderboard is not None:
        job.leaderboard = leaderboard
    if model is not None:
        session.add(model)
        job.model_id = model.id
        job.progress = {**job.progress, "fraction": 1.0, "eta_seconds": 0}
    add_event(
        session,
        job_id,
        "status",
        status=status,
        **({"error": error} if error else {}),
        **({"model_id": model.id} if model else {}),
    )
    record_job_transition(session, job_id, status)  # the webhook outbox, same transaction
    session.commit()
    return status


def release(*, session: Session, job_id: str, worker: str) -> None:
    """Give the job back (worker shutting down): another worker may take it at once, and
    the hand-back does not count as a lost worker."""
    begin_write(session)
    released = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == worker, Job.status == "running")
        .values(lease_expires_at=utcnow(), enqueued_at=None)
    ).rowcount
    if released:
        add_event(session, job_id, "released", worker=worker)
    session.commit()
