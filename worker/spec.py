"""Turns a stored job spec into the engine's plain keyword arguments."""

import dataclasses

from sqlalchemy.orm import Session

from app.datasets.models import Dataset
from app.registry.base_models import WEIGHTS_NAME, parse_ref
from app.registry.models import Model, UploadedBaseModel
from app.storage.local import LocalStorage
from app.training.api import TrainConfig
from app.training.artifact import load_artifact, read_config
from app.training.errors import EngineError
from app.training.uploads import load_upload

_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def train_config(spec: dict, *, architecture: str) -> TrainConfig:
    values = {k: v for k, v in spec.items() if k in _FIELDS}
    values["base_model"] = architecture
    return TrainConfig(**values)


def job_task(*, session: Session, dataset_id: str) -> str:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise EngineError(f"dataset {dataset_id!r} was deleted", code="dataset_gone")
    return dataset.task


def init_state_for(
    *, session: Session, storage: LocalStorage, owner_id: str, spec: dict
) -> tuple[dict | None, dict]:
    """Weights to start from and the lineage to record: a base model, uploaded weights
    (`upload:<id>`, read with safetensors only), or a model made here (`model:<id>`)."""
    base = spec["base_model"]
    ref = parse_ref(base)
    if ref.kind == "upload":
        upload = session.get(UploadedBaseModel, ref.id)
        if upload is None or upload.owner_id != owner_id:
            raise EngineError(f"base model {base!r} no longer exists", code="base_model_gone")
        path = storage.base_model_dir(upload.id) / WEIGHTS_NAME
        return load_upload(path, upload.architecture), {
            "architecture": upload.architecture,
            "base_model": base,
            "upload_id": upload.id,
            "pretrained": True,
        }
    if ref.kind == "builtin":
        return None, {
            "architecture": base,
            "base_model": base,
            "pretrained": spec.get("pretrained", True),
        }
    parent_id = ref.id
    parent = session.get(Model, parent_id)
    if parent is None or parent.owner_id != owner_id:
        raise EngineError(f"model {parent_id!r} no longer exists", code="base_model_gone")
    config, state = load_artifact(storage.model_dir(parent_id))
    return state, {
        "architecture": config["architecture"],
        "base_model": base,
        "parent_model_id": parent_id,
        "parents": [parent_id, *parent.lineage.get("parents", [])],
        "pretrained": True,
    }


def init_config_for(*, storage: LocalStorage, lineage: dict) -> dict | None:
    """The config.json of the model a job continues from (a tabular model's
    preprocessing is reused with its weights), or None."""
    parent_id = lineage.get("parent_model_id")
    if parent_id is None:
        return None
    return read_config(storage.model_dir(parent_id))
