"""The Celery producer: the app, the reliability settings each job relies on, sending a
job's message and reading the queue's length. The worker (worker/) consumes with the same
app; the API and the reconciler only send.

Embedded mode (no FINETUNE_BROKER_URL): kombu's filesystem transport under
FINETUNE_DATA_DIR/broker, so a laptop needs no broker server. Distributed mode: Redis
(or any Celery broker) through FINETUNE_BROKER_URL.

The database, not the broker, is the source of truth for a job: a task message only
says "look at job X". The worker claims the row with a guarded status transition and
holds a lease it renews by heartbeat, so a duplicate or redelivered message does no
harm, and the API's reconciler re-queues jobs whose message or worker was lost.
"""

from functools import lru_cache

from celery import Celery

from app.core.config import Settings, get_settings
from app.jobs import fsbroker  # noqa: F401  registers the embedded broker's transport

RUN_JOB = "finetune.run_job"
QUEUE = "finetune"

# A job may run for a long time on a slow machine. The order matters:
# soft limit (the task can stop cleanly) < hard limit (the child is killed)
# < visibility timeout (only then does Redis hand an unacked message to another worker;
# any sooner and a healthy long job would be delivered twice).
SOFT_TIME_LIMIT = 23 * 3600
HARD_TIME_LIMIT = SOFT_TIME_LIMIT + 1800
VISIBILITY_TIMEOUT = HARD_TIME_LIMIT + 1800


def broker_options(settings: Settings) -> dict:
    if settings.embedded_broker:
        queue = settings.broker_dir / "queue"
        control = settings.broker_dir / "control"
        for d in (queue, control):
            d.mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(queue),
            "data_folder_out": str(queue),
            "control_folder": str(control),
            "store_processed": False,
            "polling_interval": 0.05,  # a listdir: cheap, and it is queue latency
        }
    return {"visibility_timeout": VISIBILITY_TIMEOUT}


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("finetune", broker=settings.celery_broker_url)
    app.conf.update(
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        # Ack after the task returns, not when it starts: a worker that dies mid-job
        # leaves the message unacked, so the broker hands it out again.
        task_acks_late=True,
        # ...and when the child process is killed (OOM, SIGKILL), reject so it is requeued
        # rather than acked as failed.
        task_reject_on_worker_lost=True,
        # One message at a time per process: a job is long, prefetching would starve others.
        worker_prefetch_multiplier=1,
        # A broker blip must not kill a healthy job: training needs only the database, whose
        # lease says who runs it. (Celery 6 flips this default; pinned so it cannot.)
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_soft_time_limit=SOFT_TIME_LIMIT,
        task_time_limit=HARD_TIME_LIMIT,
        # Results live in the database; Celery's result backend is not used.
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_default_queue=QUEUE,
        # The filesystem transport has no broadcast; remote control is not needed.
        worker_enable_remote_control=not settings.embedded_broker,
    )
    return app


@lru_cache
def get_celery() -> Celery:
    """The process's Celery app for the current settings (the API sends with it)."""
    return make_celery()


def enqueue_job(job_id: str) -> None:
    """Send the message that asks a worker to run job `job_id` (ids only, never rows)."""
    get_celery().send_task(RUN_JOB, kwargs={"job_id": job_id})


def queued_messages() -> int:
    """Messages waiting in the job queue (not counting one a worker has taken)."""
    with get_celery().connection_for_read() as conn:
        channel = conn.default_channel
        try:
            return channel.queue_declare(queue=QUEUE, passive=True).message_count
        except conn.channel_errors:  # Redis keeps no empty list: no queue means no messages
            return 0
