"""`finetune worker`: a Celery worker that consumes the job queue (app.jobs.queue)."""

import os
import socket

from celery.signals import worker_ready, worker_shutdown

from app.core.config import get_settings
from app.jobs.queue import QUEUE, make_celery
from app.ops.supervisor import Heartbeat, die_with_parent
from app.training.warm import warm_up_in_background


def run() -> None:
    die_with_parent()
    settings = get_settings()
    settings.ensure_dirs()
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    app = make_celery(settings)
    import worker.tasks  # registers the task on the app

    warm_up_in_background()  # the first job's torch._dynamo and ONNX Runtime imports

    # A heartbeat file while the worker consumes: /readyz's sign of a live worker.
    beat = Heartbeat(settings.workers_dir, worker.tasks.WORKER_ID, settings.heartbeat_seconds)
    worker_ready.connect(lambda **_: beat.start(), weak=False)
    worker_shutdown.connect(lambda **_: beat.stop(), weak=False)

    # Solo pool: one job at a time in this process (one job per GPU per worker process);
    # run N processes for N GPUs. Gossip/mingle/heartbeat are cluster chatter we don't use.
    argv = [
        "worker",
        "--pool=solo",
        "--concurrency=1",
        f"--loglevel={settings.log_level}",
        "-Q",
        QUEUE,
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-n",
        f"finetune-{os.getpid()}@{socket.gethostname()}",
    ]
    app.worker_main(argv)
