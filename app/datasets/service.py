"""Datasets: an upload is streamed to disk, validated and ingested, then recorded."""

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth.models import Owner
from app.core.db import begin_write, new_id
from app.core.errors import Conflict, Invalid, NotFound
from app.core.pagination import fetch_page
from app.datasets.ingest import Limits, ingest_dataset
from app.datasets.models import Dataset
from app.datasets.targets import DEFAULT_SEPARATOR
from app.storage.local import LocalStorage, copy_bounded


def create(
    *,
    session: Session,
    owner: Owner,
    storage: LocalStorage,
    upload: BinaryIO,
    filename: str | None,
    name: str | None,
    task: str | None,
    label_column: str,
    text_column: str,
    limits: Limits | None = None,
    idempotency_key: str | None = None,
    label_separator: str = DEFAULT_SEPARATOR,
) -> tuple[Dataset, bool]:
    """Ingest an uploaded archive or CSV into a new dataset; nothing is left behind on error.

    Returns (dataset, created). With an `idempotency_key` already used by this owner for
    the same bytes and form fields, that dataset is returned (created False); with other
    bytes, a 409.
    """
    digest = hashlib.sha256(
        json.dumps([name, task, label_column, text_column, label_separator]).encode()
    )
    if idempotency_key:
        existing = _by_idempotency_key(session, owner, idempotency_key)
        if existing is not None:
            while chunk := upload.read(1024 * 1024):
                digest.update(chunk)
            return _replay(existing, digest.hexdigest(), idempotency_key), False
    dataset_id = new_id("ds")
    scratch = storage.scratch_path()
    final = storage.dataset_dir(dataset_id)
    partial = final.with_name(final.name + ".partial")
    limits = limits or Limits(max_encoded_width=storage.settings.max_tabular_width)
    try:
        size = copy_bounded(upload, scratch, storage.settings.max_upload_bytes, digest=digest)
        if size == 0:
            raise Invalid("the uploaded file is empty", code="empty_upload")
        manifest = ingest_dataset(
            path=scratch,
            dest_dir=partial,
            task=task,
            label_column=label_column,
            text_column=text_column,
            label_separator=label_separator,
            limits=limits,
        )
        partial.rename(final)
    finally:  # an IngestError goes on to the error handler (app.main.ERRORS)
        storage.remove(scratch)
        storage.remove(partial)

    meta = {
        k: manifest[k]
        for k in (
            "columns",
            "feature_types",
            "label_column",
            "text_column",
            "encoded_width",
            "targets",
        )
        if k in manifest
    }
    dataset = Dataset(
        id=dataset_id,
        owner_id=owner.id,
        task=manifest["task"],
        name=(name or Path(filename or dataset_id).name)[:200],
        num_samples=manifest["num_samples"],
        classes=manifest["classes"],
        class_counts=manifest["class_counts"],
        splits=manifest["splits"],
        meta=meta,
        idempotency_key=idempotency_key,
        request_hash=digest.hexdigest(),
    )
    begin_write(session)
    session.add(dataset)
    try:
        session.commit()
    except Exception as exc:
        shutil.rmtree(final, ignore_errors=True)
        session.rollback()
        if isinstance(exc, IntegrityError) and idempotency_key:
            # Two uploads with one Idempotency-Key raced; the other one won.
            existing = _by_idempotency_key(session, owner, idempotency_key)
            if existing is not None:
                return _replay(existing, digest.hexdigest(), idempotency_key), False
        raise
    return dataset, True


def _by_idempotency_key(session: Session, owner: Owner, key: str) -> Dataset | None:
    return session.scalars(
        select(Dataset).where(Dataset.owner_id == owner.id, Dataset.idempotency_key == key)
    ).first()


def _replay(dataset: Dataset, request_hash: str, key: str) -> Dataset:
    if dataset.request_hash != request_hash:
        raise Conflict(
            f"Idempotency-Key {key!r} was already used for a different upload",
            code="idempotency_conflict",
        )
    return dataset


def get(*, session: Session, owner: Owner, dataset_id: str, lock: str | None = None) -> Dataset:
    """The owner's dataset, or 404 (another owner's ids look the same as unknown ones).

    `lock="share"` (a job is being created on it) or `lock="update"` (it is being deleted)
    takes its row lock on PostgreSQL until the transaction ends, so a job creation and a
    delete serialize: one of the two loses (404, or 409 dataset_in_use). SQLite's write
    transactions are serialized already.
    """
    if lock is None:
        dataset = session.get(Dataset, dataset_id)
    else:
        dataset = session.scalars(
            select(Dataset)
            .where(Dataset.id == dataset_id)
            .with_for_update(read=lock == "share")
            .execution_options(populate_existing=True)
        ).first()
    if dataset is None or dataset.owner_id != owner.id:
        raise NotFound(f"dataset {dataset_id!r} not found")
    return dataset


def list_(*, session: Session, owner: Owner, limit: int, offset: int) -> tuple[list[Dataset], int]:
    query = select(Dataset).where(Dataset.owner_id == owner.id)
    return fetch_page(session=session, query=query, entity=Dataset, limit=limit, offset=offset)


def delete(
    *,
    session: Session,
    owner: Owner,
    storage: LocalStorage,
    dataset_id: str,
    in_use: Callable[[Session, str], int],
) -> None:
    """Delete a dataset that no queued or running job still needs. `in_use` counts those
    jobs (jobs.service.dataset_in_use: jobs know datasets, not the other way round); it
    runs under the dataset's row lock, which job creation shares."""
    begin_write(session)
    dataset = get(session=session, owner=owner, dataset_id=dataset_id, lock="update")
    busy = in_use(session, dataset_id)
    if busy:
        raise Conflict(
            f"dataset {dataset_id!r} is used by {busy} queued or running job(s)",
            code="dataset_in_use",
        )
    session.delete(dataset)
    session.commit()
    storage.remove(storage.dataset_dir(dataset_id))
    storage.remove(storage.features_dir(dataset_id))  # its jobs' frozen features
