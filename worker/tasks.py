"""Celery adapter around the engine: claim the row, train, record the outcome.

The message carries only a job id. Everything else is re-read from the database, so a
redelivered or duplicated message does no harm (see app.jobs.lifecycle.claim).
"""

import logging
import os
import shutil
import socket
import threading
import time
import uuid

from celery import shared_task
from celery.signals import worker_shutting_down

from app.core.config import get_settings
from app.core.db import get_sessionmaker, new_id
from app.core.errors import DISK_FULL_MESSAGE, is_disk_full
from app.jobs import lifecycle
from app.jobs.models import Job
from app.jobs.queue import RUN_JOB
from app.registry.models import Model
from app.storage.local import LocalStorage
from app.training.api import train
from app.training.errors import Cancelled, EngineError
from worker.spec import init_config_for, init_state_for, job_task, train_config

log = logging.getLogger("finetune.worker")

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

# Set when the worker is asked to stop (SIGTERM): the running job stops at its next step,
# keeps its last epoch checkpoint, and is handed back for another worker to resume.
SHUTTING_DOWN = threading.Event()


@worker_shutting_down.connect
def _on_shutdown(**_) -> None:
    SHUTTING_DOWN.set()


class _Lease:
    """Renews the job's lease in the background and watches for a cancel request."""

    def __init__(self, job_id: str, lease_seconds: int, heartbeat_seconds: int):
        self.job_id, self.lease_seconds, self.every = job_id, lease_seconds, heartbeat_seconds
        self.lost = threading.Event()
        self.cancel = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> "_Lease":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        last_renew = time.monotonic()
        # Poll the cancel flag often (cheap read) and renew the lease every `every` seconds.
        while not self._stop.wait(1.0):
            try:
                with get_sessionmaker()() as session:
                    if time.monotonic() - last_renew >= self.every:
                        ours, cancel = lifecycle.heartbeat(
                            session=session,
                            job_id=self.job_id,
                            worker=WORKER_ID,
                            lease_seconds=self.lease_seconds,
                        )
                        last_renew = time.monotonic()
                        if not ours:
                            self.lost.set()
                            return
                    else:
                        cancel = lifecycle.cancel_requested(session=session, job_id=self.job_id)
                if cancel:
                    self.cancel.set()
            except Exception:  # the database blinked; the lease has slack, try again
                log.warning("heartbeat for %s failed", self.job_id, exc_info=True)

    def should_stop(self) -> bool:
        return self.cancel.is_set() or self.lost.is_set() or SHUTTING_DOWN.is_set()


@shared_task(name=RUN_JOB, bind=True)
def run_job(self, *, job_id: str) -> str:
    return execute(job_id=job_id)


def execute(*, job_id: str) -> str:
    """Run one job to its end state if this worker can claim it; returns what happened."""
    settings = get_settings()
    storage = LocalStorage(settings)
    Session = get_sessionmaker()
    with Session() as session:
        claim = lifecycle.claim(
            session=session,
            job_id=job_id,
            worker=WORKER_ID,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
        )
    if claim is None:
        log.info("job %s: not claimable here (already running, finished or cancelled)", job_id)
        return "skipped"
    log.info("job %s: attempt %d%s", job_id, claim.attempt, " (resuming)" if claim.resumed else "")

    def on_epoch(report: dict) -> None:
        with Session() as session:
            if not lifecycle.record_epoch(
                session=session, job_id=job_id, worker=WORKER_ID, report=report
            ):
                lease.lost.set()

    work_dir = storage.job_dir(job_id)
    with _Lease(job_id, settings.lease_seconds, settings.heartbeat_seconds) as lease:
        try:
            # Everything that can refuse the job (its dataset or base model is gone) is
            # inside the try: an engine error before training fails the job at once.
            with Session() as session:
                job = session.get(Job, job_id)
                spec, owner_id, dataset_id = dict(job.spec), job.owner_id, job.dataset_id
                task = job_task(session=session, dataset_id=dataset_id)
                init_state, lineage = init_state_for(
                    session=session, storage=storage, owner_id=owner_id, spec=spec
                )
            config = train_config(spec, architecture=lineage["architecture"])
            work_dir.mkdir(parents=True, exist_ok=True)
            result = train(
                config=config,
                dataset_dir=storage.dataset_dir(dataset_id),
                work_dir=work_dir,
                cache_dir=storage.cache_dir(),
                feature_dir=storage.features_dir(dataset_id),
                init_state=init_state,
                init_config=init_config_for(storage=storage, lineage=lineage),
                on_epoch=on_epoch,
                should_stop=lease.should_stop,
            )
        except Cancelled:
            if lease.lost.is_set():
                log.warning("job %s: lease lost; another worker owns it now", job_id)
                return "lease_lost"
            if SHUTTING_DOWN.is_set() and not lease.cancel.is_set():
                with Session() as session:
                    lifecycle.release(session=session, job_id=job_id, worker=WORKER_ID)
                log.info("job %s: handed back at shutdown; it resumes from its checkpoint", job_id)
                return "released"
            _record_end(job_id, work_dir, status="cancelled")
            return "cancelled"
        except EngineError as exc:
            error = {"code": exc.code, "message": exc.message[:1000]}
            if exc.field:
                error["field"] = exc.field
            _record_end(job_id, work_dir, status="failed", error=error)
            return "failed"
        except Exception as exc:
            if is_disk_full(exc):
                log.error("job %s: the disk is full: %s", job_id, exc)
                # Its checkpoints are what is most likely to free room to record the failure.
                shutil.rmtree(work_dir, ignore_errors=True)
                error = {"code": "disk_full", "message": f"{DISK_FULL_MESSAGE} ({exc})"[:1000]}
            else:
                log.exception("job %s failed", job_id)
                error = {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"[:1000]}
            _record_end(job_id, work_dir, status="failed", error=error)
            return "failed"

    model_id = new_id("mdl")
    model_dir = storage.model_dir(model_id)
    # Same filesystem (both under FINETUNE_DATA_DIR): a rename, not a copy.
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(result.artifact_dir, model_dir)
    model = Model(
        id=model_id,
        owner_id=owner_id,
        job_id=job_id,
        dataset_id=dataset_id,
        base_model=spec["base_model"],
        task=task,
        classes=result.classes,
        metrics=result.metrics,
        lineage={
            **lineage,
            "job_id": job_id,
            "dataset_id": dataset_id,
            "strategy": result.strategy,
            "best_epoch": result.best_epoch,
        },
    )
    done = _record_end(
        job_id,
        work_dir,
        status="succeeded",
        model=model,
        metrics=_summary(result),
        leaderboard=result.leaderboard,
    )
    if done != "succeeded":
        # Another worker took the job over while we ran (its result is the one that
        # counts), or a cancel that came in first won: no model either way.
        shutil.rmtree(model_dir, ignore_errors=True)
        return done or "lease_lost"
    return "succeeded"


def _record_end(job_id: str, work_dir, **outcome) -> str | None:
    """lifecycle.finish, retried while the disk is full (SQLite lives on it too): the end
    is recorded once there is room to say so. Then the job's scratch goes (checkpoints,
    a half-written .tmp), unless a retention keeps it a while for the sweep. Returns the
    status recorded, or None if the job was no longer ours."""
    delay = 1.0
    while True:
        try:
            with get_sessionmaker()() as session:
                done = lifecycle.finish(session=session, job_id=job_id, worker=WORKER_ID, **outcome)
            break
        except Exception as exc:
            if not is_disk_full(exc) or SHUTTING_DOWN.is_set():
                raise
            log.warning(
                "job %s: cannot record its end, the disk is full; retrying in %.0fs", job_id, delay
            )
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
    if done and get_settings().job_scratch_retention_seconds <= 0:
        shutil.rmtree(work_dir, ignore_errors=True)
    return done


def _summary(result) -> dict:
    """The job's headline metrics: the best epoch on validation, then the held-out test."""
    summary = {
        f"best_val_{k}": v for k, v in result.val_metrics.items() if isinstance(v, int | float)
    }
    summary.update(
        best_epoch=result.best_epoch,
        test_accuracy=result.metrics.get("accuracy"),
        test_macro_f1=result.metrics.get("macro_f1"),
    )
    # The task's own headline numbers (multi-label, regression) beside them.
    summary.update({f"test_{k}": v for k, v in result.metrics.items() if k in TASK_HEADLINES})
    return summary


TASK_HEADLINES = ("micro_f1", "map", "rmse", "mae", "r2")
