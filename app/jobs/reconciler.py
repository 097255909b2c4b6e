"""Re-sends jobs whose message was lost or whose worker died (see service.stale_jobs)."""

import logging
import threading

from app.core.config import Settings
from app.core.db import get_sessionmaker
from app.jobs import service
from app.jobs.queue import enqueue_job, queued_messages

log = logging.getLogger("finetune.reconciler")


def reconcile_once(*, grace_seconds: float = 5.0) -> list[str]:
    """Send a message for every stale job; returns their ids."""
    try:
        queue_empty = queued_messages() == 0
    except Exception:  # broker away: sends below fail too, and are retried next round
        log.warning("could not read the broker's queue length", exc_info=True)
        queue_empty = False
    with get_sessionmaker()() as session:
        stale = service.stale_jobs(
            session=session, grace_seconds=grace_seconds, queue_empty=queue_empty
        )
        for job_id in stale:
            enqueue_job(job_id)
            service.mark_enqueued(session=session, job_id=job_id)
            log.info("re-queued job %s", job_id)
    return stale


def sweep_scratch(settings: Settings) -> list[str]:
    """Job scratch dirs past their retention, or whose job is gone (service.sweep_job_scratch)."""
    with get_sessionmaker()() as session:
        swept = service.sweep_job_scratch(
            session=session,
            jobs_dir=settings.jobs_dir,
            retention_seconds=settings.job_scratch_retention_seconds,
        )
    for job_id in swept:
        log.info("removed the scratch dir of ended job %s", job_id)
    return swept


class Reconciler:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.every = settings.reconcile_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        self._sweep()  # at start: what a crash left
        while not self._stop.wait(self.every):
            try:
                reconcile_once()
            except Exception:  # database or broker away: try again next round
                log.warning("reconcile failed", exc_info=True)
            self._sweep()

    def _sweep(self) -> None:
        try:
            sweep_scratch(self.settings)
        except Exception:
            log.warning("sweeping job scratch failed", exc_info=True)
