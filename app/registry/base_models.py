"""The base models jobs can start from, as the API sees them (the engine owns the list),
and the pretrained weights owners upload (`upload:<id>`, visible to their owner only)."""

import shutil
from typing import BinaryIO, Literal, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth.models import Owner
from app.core.db import begin_write, new_id
from app.core.errors import Invalid, NotFound, in_field
from app.registry.models import UploadedBaseModel
from app.storage.local import LocalStorage, copy_bounded
from app.training import build
from app.training.uploads import inspect_upload

UPLOAD_PREFIX = "upload:"
MODEL_PREFIX = "model:"
WEIGHTS_NAME = "model.safetensors"


class BaseRef(NamedTuple):
    """What a job's `base_model` names: a built-in base model ("builtin", its name),
    uploaded weights ("upload", the upload's id) or a model made here ("model", its id)."""

    kind: Literal["builtin", "upload", "model"]
    id: str


def parse_ref(base_model: str) -> BaseRef:
    """The one reading of the `model:` and `upload:` prefixes (the API and the worker)."""
    for kind, prefix in (("model", MODEL_PREFIX), ("upload", UPLOAD_PREFIX)):
        if base_model.startswith(prefix):
            return BaseRef(kind, base_model.removeprefix(prefix))
    return BaseRef("builtin", base_model)


def list_all(*, session: Session | None = None, owner: Owner | None = None) -> list[dict]:
    """Built-in base models (but the test-only ones), then the owner's uploads (newest first)."""
    # The engine's test-only models (build.BaseModel.test_only): a job may name one, but
    # the list leaves them out (a user has no use for them).
    out = [m for m in build.list_base_models() if not build.get_base_model(m["name"]).test_only]
    if session is not None and owner is not None:
        rows = session.scalars(
            select(UploadedBaseModel)
            .where(UploadedBaseModel.owner_id == owner.id)
            .order_by(UploadedBaseModel.created_at.desc(), UploadedBaseModel.id)
        )
        out.extend(upload_out(r) for r in rows)
    return out


def check(*, name: str, pretrained: bool) -> dict:
    """The base model's description, or a 422 saying why a job can't start from it."""
    with in_field("base_model"):
        build.check_available(name, pretrained)
    return next(m for m in build.list_base_models() if m["name"] == name)


def upload_out(row: UploadedBaseModel) -> dict:
    return {
        "name": f"{UPLOAD_PREFIX}{row.id}",
        "task": row.task,
        "params": row.params,
        "weights_present": True,
        "description": f"uploaded {row.architecture} weights: {row.name}",
        "extra": {
            "upload_id": row.id,
            "architecture": row.architecture,
            "upload_name": row.name,
            "size_bytes": row.size_bytes,
            "created_at": row.created_at.isoformat(),
        },
    }


def get_upload(*, session: Session, owner: Owner, upload_id: str) -> UploadedBaseModel:
    """The owner's upload, or 404 (another owner's ids look the same as unknown ones)."""
    row = session.get(UploadedBaseModel, upload_id)
    if row is None or row.owner_id != owner.id:
        raise NotFound(f"base model {UPLOAD_PREFIX}{upload_id} not found")
    return row


def create_upload(
    *,
    session: Session,
    owner: Owner,
    storage: LocalStorage,
    upload: BinaryIO,
    architecture: str,
    name: str,
) -> UploadedBaseModel:
    """Validate uploaded safetensors against `architecture` (never unpickling anything)
    and record them; nothing is left behind on error."""
    with in_field("architecture"):
        build.get_base_model(architecture)
    upload_id = new_id("bm")
    scratch = storage.scratch_path(".safetensors")
    final = storage.base_model_dir(upload_id)
    try:
        size = copy_bounded(upload, scratch, storage.settings.max_upload_bytes)
        if size == 0:
            raise Invalid("file: the uploaded file is empty", code="empty_upload", field="file")
        with in_field("file"):
            info = inspect_upload(scratch, architecture)
        final.mkdir(parents=True)
        shutil.move(str(scratch), final / WEIGHTS_NAME)
    finally:
        storage.remove(scratch)
    row = UploadedBaseModel(
        id=upload_id,
        owner_id=owner.id,
        name=name[:200],
        architecture=architecture,
        task=info["task"],
        params=info["params"],
        size_bytes=size,
    )
    begin_write(session)
    session.add(row)
    try:
        session.commit()
    except Exception:
        shutil.rmtree(final, ignore_errors=True)
        raise
    return row
