"""Turns a stored job spec into the engine's plain keyword arguments."""

import dataclasses
import json

from safetensors.torch import load_file
from sqlalchemy.orm import Session

from app.datasets.models import Dataset
from app.registry.models import Model
from app.storage.local import LocalStorage
from app.training.api import TrainConfig
from app.training.errors import EngineError

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
    """Weights to start from and the lineage to record: a base model, or a model made here."""
    base = spec["base_model"]
    if not base.startswith("model:"):
        return None, {
            "architecture": base,
            "base_model": base,
            "pretrained": spec.get("pretrained", True),
        }
    parent_id = base.removeprefix("model:")
    parent = session.get(Model, parent_id)
    if parent is None or parent.owner_id != owner_id:
        raise EngineError(f"model {parent_id!r} no longer exists", code="base_model_gone")
    parent_dir = storage.model_dir(parent_id)
    config = json.loads((parent_dir / "config.json").read_text())
    state = load_file(str(parent_dir / "model.safetensors"))
    return state, {
        "architecture": config["architecture"],
        "base_model": base,
        "parent_model_id": parent_id,
        "parents": [parent_id, *parent.lineage.get("parents", [])],
        "pretrained": True,
    }
