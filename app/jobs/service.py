"""Jobs: create (idempotent), read, cancel, events; the reconciler that re-queues."""

import hashlib
import json
import logging
import shutil
from datetime import timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth.models import Owner
from app.core.config import get_settings
from app.core.db import begin_write, new_id, utcnow
from app.core.errors import Conflict, Invalid, NotFound
from app.core.pagination import fetch_page
from app.datasets import service as datasets
from app.jobs.models import Job, JobEvent
from app.jobs.schemas import JobSpec
from app.registry import base_models
from app.registry.models import Model
from app.training import api as training
from app.training.tabular import HIDDEN
from app.training.tasks import get_task
from app.webhooks import service as webhooks

log = logging.getLogger(__name__)

TERMINAL = ("succeeded", "failed", "cancelled")


def _request_hash(spec: JobSpec) -> str:
    return hashlib.sha256(
        json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()
    ).hexdigest()


def add_event(session: Session, job_id: str, type_: str, **data) -> None:
    session.add(JobEvent(job_id=job_id, type=type_, data=data))


def _check_base_model(*, session: Session, owner: Owner, spec: JobSpec, task: str) -> dict:
    """Refuse a job whose base model is unknown, absent, or of another modality (422 /
    404). A model trained here on another kind of task of the same modality is a fine
    start: its backbone carries over, its head is replaced (training/api.py)."""
    base_task = get_task(task).base_task
    ref = base_models.parse_ref(spec.base_model)
    if ref.kind == "model":
        model_id = ref.id
        parent = session.get(Model, model_id)
        if parent is None or parent.owner_id != owner.id:
            raise NotFound(f"base_model: model {model_id!r} not found", field="base_model")
        if get_task(parent.task).modality != get_task(task).modality:
            raise Invalid(
                f"base_model: model {model_id!r} is a {parent.task} model; the dataset is {task}",
                code="task_mismatch",
                field="base_model",
            )
        return {"parent_model_id": parent.id, "architecture": parent.lineage.get("architecture")}
    if ref.kind == "upload":
        upload = base_models.get_upload(session=session, owner=owner, upload_id=ref.id)
        if upload.task != base_task:
            raise Invalid(
                f"base_model: {spec.base_model!r} is {upload.architecture} weights for "
                f"{upload.task}; the dataset is {task}",
                code="task_mismatch",
                field="base_model",
            )
        return {"upload_id": upload.id, "architecture": upload.architecture}
    info = base_models.check(name=spec.base_model, pretrained=spec.pretrained)
    if info["task"] != base_task:
        raise Invalid(
            f"base_model: {spec.base_model!r} is for {info['task']}; the dataset is {task}",
            code="task_mismatch",
            field="base_model",
        )
    return {"architecture": spec.base_model}


def mlp_params(width: int, classes: int) -> int:
    """Parameters of the tabular MLP for `width` encoded inputs and `classes` outputs."""
    sizes = [width, *HIDDEN, classes]
    return sum(a * b + b for a, b in zip(sizes, sizes[1:], strict=False))


def _check_model_size(*, dataset, base: dict) -> None:
    """A tabular MLP is as wide as its dataset's one-hot encoding: refuse one over the
    configured width or parameter limits before it takes a worker's memory (a model made
    here, `model:<id>`, keeps its parent's preprocessing and size)."""
    width = (dataset.meta or {}).get("encoded_width")
    if base.get("architecture") != "mlp" or "parent_model_id" in base or width is None:
        return
    settings = get_settings()
    if width > settings.max_tabular_width:
        raise Invalid(
            f"dataset {dataset.id!r} one-hot encodes to {width} columns, over the limit of "
            f"{settings.max_tabular_width} (FINETUNE_MAX_TABULAR_WIDTH)",
            code="too_wide",
        )
    params = mlp_params(width, len(dataset.classes))
    if params > settings.max_model_params:
        raise Invalid(
            f"the model would have {params} parameters, over the limit of "
            f"{settings.max_model_params} (FINETUNE_MAX_MODEL_PARAMS)",
            code="model_too_large",
        )


def _resolved(spec: JobSpec, base: dict) -> JobSpec:
    """The spec with the strategy and the learning rate the job will run (null: chosen
    from the base model); a strategy that keeps randomly initialised layers frozen is a
    422."""
    has_init = "parent_model_id" in base or "upload_id" in base
    architecture = base.get("architecture") or spec.base_model
    has_weights = training.has_pretrained_weights(
        architecture, pretrained=spec.pretrained, has_init=has_init
    )
    # resolve_strategy's refusal is an InvalidConfig naming `strategy`: a 422 by the one
    # error table (app/main.py), no translation here.
    strategy = training.resolve_strategy(
        spec.strategy, base_model=architecture, has_weights=has_weights
    )
    learning_rate = training.resolve_learning_rate(
        spec.learning_rate, base_model=architecture, strategy=strategy, has_weights=has_weights
    )
    # The engine's one check of the config against the model, before the job is queued
    # (an InvalidConfig naming trainable_blocks: a 422).
    training.check_trainable_blocks(spec.trainable_blocks, base_model=architecture)
    return spec.model_copy(update={"strategy": strategy, "learning_rate": learning_rate})


def create(
    *, session: Session, owner: Owner, spec: JobSpec, idempotency_key: str | None
) -> tuple[Job, bool]:
    """Record a queued job; returns (job, created). The caller enqueues after commit."""
    begin_write(session)
    request_hash = _request_hash(spec)
    if idempotency_key:
        existing = _by_idempotency_key(session, owner, idempotency_key)
        if existing is not None:
            return _replay(existing, request_hash, idempotency_key), False
    # Row-locked until commit: a delete of the dataset waits, then sees this job.
    dataset = datasets.get(session=session, owner=owner, dataset_id=spec.dataset_id, lock="share")
    base = _check_base_model(session=session, owner=owner, spec=spec, task=dataset.task)
    _check_model_size(dataset=dataset, base=base)
    spec = _resolved(spec, base)
    job = Job(
        id=new_id("job"),
        owner_id=owner.id,
        dataset_id=dataset.id,
        status="queued",
        spec=spec.model_dump(mode="json"),
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        progress={"epoch": 0, "epochs": spec.epochs or 0, "fraction": 0.0, "eta_seconds": None},
    )
    session.add(job)
    add_event(session, job.id, "status", status="queued")
    try:
        session.commit()
    except IntegrityError:
        # Two requests with one Idempotency-Key raced; the other one won.
        session.rollback()
        existing = _by_idempotency_key(session, owner, idempotency_key or "")
        if existing is None:
            raise
        return _replay(existing, request_hash, idempotency_key or ""), False
    return job, True


def _by_idempotency_key(session: Session, owner: Owner, key: str) -> Job | None:
    return session.scalars(
        select(Job).where(Job.owner_id == owner.id, Job.idempotency_key == key)
    ).first()


def _replay(job: Job, request_hash: str, key: str) -> Job:
    if job.request_hash != request_hash:
        raise Conflict(
            f"Idempotency-Key {key!r} was already used with a different job spec",
            code="idempotency_conflict",
        )
    return job


def mark_enqueued(*, session: Session, job_id: str) -> None:
    begin_write(session)
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))
    session.commit()


def get(*, session: Session, owner: Owner, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.owner_id != owner.id:
        raise NotFound(f"job {job_id!r} not found")
    return job


def dataset_in_use(session: Session, dataset_id: str) -> int:
    """How many queued or running jobs still need the dataset (it is not deleted under them)."""
    return session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.dataset_id == dataset_id, Job.status.in_(("queued", "running")))
    )


def list_(
    *, session: Session, owner: Owner, status: str | None, limit: int, offset: int
) -> tuple[list[Job], int]:
    query = select(Job).where(Job.owner_id == owner.id)
    if status:
        query = query.where(Job.status == status)
    return fetch_page(session=session, query=query, entity=Job, limit=limit, offset=offset)


def cancel(*, session: Session, owner: Owner, job_id: str) -> Job:
    """A queued job is cancelled now; a running one is asked to stop at its next step."""
    begin_write(session)
    job = get(session=session, owner=owner, job_id=job_id)
    now = utcnow()
    # Guarded updates: the worker may be moving the same row at this moment.
    done = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=now)
    ).rowcount
    if done:
        add_event(session, job_id, "status", status="cancelled")
        webhooks.record_job_transition(session, job_id, "cancelled")
    else:
        done = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running")
            .values(cancel_requested=True)
        ).rowcount
        if done:
            add_event(session, job_id, "cancel_requested")
    session.commit()
    session.refresh(job)
    if not done and job.status in TERMINAL and job.status != "cancelled":
        raise Conflict(
            f"job {job_id!r} already {job.status}; nothing to cancel", code="job_finished"
        )
    return job


def events(
    *, session: Session, owner: Owner, job_id: str, after: int, limit: int
) -> list[JobEvent]:
    get(session=session, owner=owner, job_id=job_id)
    return list(
        session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > after)
            .order_by(JobEvent.id)
            .limit(limit)
        )
    )


def stale_jobs(
    *,
    session: Session,
    grace_seconds: float,
    resend_after_seconds: float = 1800,
    queue_empty: bool = False,
) -> list[str]:
    """Jobs that need a (new) message.

    - queued, never sent (the API died between commit and send, or the broker was down);
    - queued, sent a while ago, and the broker's queue is empty: the message is gone (a
      broker that keeps nothing on disk was restarted, a worker died as it took it);
    - queued, sent long ago (the same, where the queue holds other messages);
    - running on an expired lease that has not been re-sent since it expired (its worker
      died), or was re-sent but that message is gone too (the same two rules as queued).
    A duplicate message is harmless: the claim is a guarded transition.
    """
    now = utcnow()
    if queue_empty:
        resend_after_seconds = grace_seconds
    sent_before = now - timedelta(seconds=resend_after_seconds)
    rows = session.scalars(
        select(Job.id)
        .where(
            or_(
                (Job.status == "queued")
                & (Job.enqueued_at.is_(None))
                & (Job.created_at < now - timedelta(seconds=grace_seconds)),
                (Job.status == "queued") & (Job.enqueued_at < sent_before),
                (Job.status == "running")
                & (Job.lease_expires_at < now)
                & or_(
                    Job.enqueued_at.is_(None),
                    Job.enqueued_at < Job.lease_expires_at,
                    Job.enqueued_at < sent_before,
                ),
            )
        )
        .limit(100)
    )
    return list(rows)


def sweep_job_scratch(*, session: Session, jobs_dir, retention_seconds: float) -> list[str]:
    """Remove the scratch dirs (checkpoints) of jobs that ended over `retention_seconds`
    ago, and of jobs that no longer exist: what a crashed worker or a retention left.
    Returns the job ids swept."""
    try:
        names = [p.name for p in jobs_dir.iterdir() if p.is_dir()]
    except FileNotFoundError:
        return []
    if not names:
        return []
    cutoff = utcnow() - timedelta(seconds=retention_seconds)
    rows = {}
    for i in range(0, len(names), 500):
        query = select(Job.id, Job.status, Job.finished_at).where(Job.id.in_(names[i : i + 500]))
        rows.update((r.id, r) for r in session.execute(query))
    session.rollback()  # end the read transaction; nothing below needs the database
    swept = []
    for name in names:
        row = rows.get(name)
        if row is None or (
            row.status in TERMINAL and (row.finished_at is None or row.finished_at <= cutoff)
        ):
            shutil.rmtree(jobs_dir / name, ignore_errors=True)
            swept.append(name)
    return swept
