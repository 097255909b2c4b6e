"""The jobs API's shapes. JobSpec, the job contract, is derived from the engine's
TrainConfig (app/training/config.py), so what the API accepts is what the engine runs."""

import dataclasses
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from app.core.schemas import NoNul
from app.training.config import TrainConfig

# Every TrainConfig field is a JobSpec field, derived from the engine's declaration
# (app/training/config.py: type, choices, bounds, default, description), but these:
# the engine options the API does not take (each with why; none today)...
ENGINE_ONLY: dict[str, str] = {}
# ...and the fields declared here instead, each with why.
EDGE_FIELDS = {
    "dataset_id": "the engine is given the dataset's directory, not its id",
    "base_model": "a reference (a built-in name, model:<id> or upload:<id>, "
    "app.registry.base_models.parse_ref) that the worker resolves to the engine's "
    "architecture (TrainConfig.base_model)",
}


class _JobSpecEdge(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: Annotated[str, NoNul] = Field(min_length=1, max_length=64)
    base_model: Annotated[str, NoNul] = Field(
        min_length=1,
        max_length=200,
        description="a name from GET /v1/base-models, model:<id> or upload:<id>",
    )

    @field_validator("base_model")
    @classmethod
    def _strip(cls, v: str) -> str:
        return v.strip()


def _engine_fields() -> dict[str, Any]:
    """TrainConfig's fields as pydantic ones: same type, default, bounds and meaning."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in ENGINE_ONLY or f.name in EDGE_FIELDS:
            continue
        doc = f.metadata["doc"] or None
        out[f.name] = (f.type, Field(f.default, description=doc, **f.metadata["bounds"]))
    return out


JobSpec = create_model(
    "JobSpec",
    __base__=_JobSpecEdge,
    __module__=__name__,
    __doc__="What to fine-tune and how. Unknown fields are refused so a typo is not ignored.",
    **_engine_fields(),
)


class Progress(BaseModel):
    epoch: int = 0
    epochs: int = 0
    fraction: float = 0.0
    eta_seconds: float | None = None


class JobError(BaseModel):
    code: str
    message: str
    field: str | None = None  # the job spec's field at fault, when there is one


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    spec: dict[str, Any]
    progress: Progress
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    leaderboard: list[dict[str, Any]] | None = None
    model_id: str | None
    error: JobError | None
    attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    type: str
    data: dict[str, Any]
    created_at: datetime
